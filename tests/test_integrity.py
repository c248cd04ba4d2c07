"""Damaged bundles end in one clear line and exit code 2, never a traceback or a wrong answer;
`verify` names what is wrong; a bundle copied elsewhere without its original weights works."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from embed.bundle import Bundle
from tests.conftest import TINY, write_dataset
from ui.cli import app

runner = CliRunner()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scramble_same_size(path: Path) -> None:
    path.write_bytes(bytes(reversed(path.read_bytes())))


def _edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        manifest = json.loads((root / "manifest.json").read_text())
        new = change(manifest)
        (root / "manifest.json").write_text(json.dumps(manifest if new is None else new))
    return edit


def _swap_rows(root: Path) -> None:
    table = pd.read_parquet(root / "metadata.parquet")
    order = [1, 0, *range(2, len(table))]
    table.iloc[order].to_parquet(root / "metadata.parquet", index=False)


def _drop_rows(root: Path) -> None:
    table = pd.read_parquet(root / "metadata.parquet")
    table.iloc[:-3].to_parquet(root / "metadata.parquet", index=False)


def _pickled_head(root: Path) -> None:
    """A pickle where the fine-tuned head should be, its checksum duly recorded: Keras' safe
    mode must refuse it, and the refusal must be a clear line."""
    path = root / "heads" / "finetune.keras"
    path.write_bytes(pickle.dumps({"not": "a keras file"}))
    bundle = Bundle(root, writable=True)
    heads = dict(bundle.manifest.model_dump()["heads"])
    heads["finetune"] = {"kind": "finetune", "file": "heads/finetune.keras", "input": "vectors",
                         "classes": ["beagle", "chihuahua", "samoyed"], "metrics": {}}
    bundle.update_manifest(heads=heads)
    bundle.record_files(path)


def _head_outside(root: Path) -> None:
    bundle = Bundle(root, writable=True)
    heads = dict(bundle.manifest.model_dump()["heads"])
    heads["finetune"] = {"kind": "finetune", "file": "../elsewhere/x.keras", "input": "vectors",
                         "classes": ["beagle"], "metrics": {}}
    bundle.update_manifest(heads=heads)


CASES = {
    "truncated index": (lambda r: _truncate(r / "index.faiss"), "index.faiss has"),
    "head with random bytes": (
        lambda r: _scramble_same_size(r / "heads" / "logreg_serving.npz"),
        "logreg_serving.npz is missing or not the file that was written"),
    "manifest is a list": (_edit_manifest(lambda m: [m]), "it is a JSON list"),
    "manifest without backbone": (_edit_manifest(lambda m: m.pop("backbone") and None),
                                  "backbone is missing"),
    "dim is text": (_edit_manifest(lambda m: m["backbone"].update(dim="abc")),
                    "backbone.dim is 'abc'"),
    "truncated shard": (lambda r: _truncate(r / "embeddings" / "part-00001.npy"),
                        "embeddings/part-00001.npy has"),
    "swapped metadata rows": (_swap_rows, "metadata.parquet is not the file that was written"),
    "short metadata": (_drop_rows, "metadata.parquet"),
    "pickled keras head": (_pickled_head, "cannot load the fine-tuned head"),
    "head outside the bundle": (_head_outside, "lies outside the bundle"),
    "manifest not JSON": (lambda r: (r / "manifest.json").write_text("{oops"), "cannot read"),
}


HEAD_CASES = {"head with random bytes": "logreg", "pickled keras head": "finetune",
              "head outside the bundle": "finetune"}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_bundle_is_one_clear_line(case: str, tiny_bundle: Path, dataset: Path,
                                          tmp_path: Path) -> None:
    damage, words = CASES[case]
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    damage(copy)
    image = next(dataset.rglob("*.jpg"))
    head = HEAD_CASES.get(case, "logreg")
    commands = [["search", str(image), "--bundle", str(copy), "--head", head],
                ["classify", str(image.parent), "--bundle", str(copy), "--head", head,
                 "--out", str(tmp_path / "p.csv")]]
    if case not in HEAD_CASES:  # refitting a damaged head simply replaces it
        commands.append(["train", "--bundle", str(copy), "--head", "logreg"])
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command[0], result.output)
        assert "error:" in result.output and "Traceback" not in result.output
        assert words in " ".join(result.output.split()), (command[0], result.output)
    assert not (tmp_path / "p.csv").exists()


def test_verify_checks_every_byte(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    ok = runner.invoke(app, ["verify", "--bundle", str(copy)])
    assert ok.exit_code == 0 and "is whole" in " ".join(ok.output.split())
    weights = copy / "backbone" / "weights.weights.h5"
    _scramble_same_size(weights)  # same size: only a full checksum notices
    assert runner.invoke(app, ["info", "--bundle", str(copy)]).exit_code == 0
    bad = runner.invoke(app, ["verify", "--bundle", str(copy)])
    assert bad.exit_code == 2
    assert "backbone/weights.weights.h5 is not the file that was written" in bad.output


def test_moved_bundle_works_without_its_weights_file(tmp_path: Path, dataset: Path) -> None:
    """Built from a weights file that is then deleted, copied to another folder: queries
    still work, from the weights the bundle carries."""
    import keras

    from tests.conftest import TINY_SIZE, build_tiny_backbone

    keras.utils.set_random_seed(3)
    weights = tmp_path / "w" / "tiny.weights.h5"
    weights.parent.mkdir()
    build_tiny_backbone((TINY_SIZE, TINY_SIZE, 3)).save_weights(weights)
    out = tmp_path / "here" / "bundle"
    built = runner.invoke(app, ["build-index", "--source", str(dataset), "--out", str(out),
                                "--backbone", TINY, "--weights", str(weights),
                                "--runtime", "keras"])
    assert built.exit_code == 0, built.output
    shutil.rmtree(weights.parent)
    moved = Path(shutil.move(str(out), tmp_path / "there"))
    image = next((dataset / "samoyed").glob("*.jpg"))
    result = runner.invoke(app, ["search", str(image), "--bundle", str(moved), "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["lookalikes"]
    assert hits[0]["path"] == str(image.resolve()) and hits[0]["score"] == pytest.approx(1.0,
                                                                                          abs=1e-4)


def test_rejected_entries_and_symlink_loops_are_rows(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "photos", per_class=4)
    (root / "Beagle" / "loop.jpg").symlink_to(root / "Beagle" / "loop.jpg")
    (root / "Beagle" / "scan.tiff").write_bytes(b"II*\0")
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["build-index", "--source", str(root), "--out", str(out),
                                 "--backbone", TINY, "--weights", "none", "--runtime", "keras"])
    assert result.exit_code == 0, result.output
    skipped = pd.read_csv(out / "skipped.csv")
    reasons = dict(zip(skipped["path"].map(lambda p: Path(p).name), skipped["reason"],
                       strict=True))
    assert reasons["loop.jpg"] == "symlink loop"
    assert reasons["scan.tiff"].startswith("unsupported format .tiff")
    csv = tmp_path / "p.csv"
    classified = runner.invoke(app, ["classify", str(root), "--bundle", str(out), "--out",
                                     str(csv)])
    assert classified.exit_code == 0, classified.output
    table = pd.read_csv(csv, keep_default_na=False)
    errors = dict(zip(table["path"].map(lambda p: Path(p).name), table["error"], strict=True))
    assert errors["loop.jpg"] == "symlink loop" and len(table) == 14


def _rechecksum(root: Path, relative: str) -> None:
    """As a careless tool would: the file replaced and its new sha256 written into the
    manifest, so every byte check passes."""
    from embed.atomic import file_sha256

    data = json.loads((root / "manifest.json").read_text())
    data["files"][relative] = {"bytes": (root / relative).stat().st_size,
                               "sha256": file_sha256(root / relative)}
    (root / "manifest.json").write_text(json.dumps(data))


def test_verify_loads_what_checksums_cannot_judge(litert_bundle: Path, dataset: Path,
                                                   tmp_path: Path) -> None:
    """A garbage `.tflite` and a skops head holding another type, both re-checksummed: byte
    checks pass, so only loading them finds them. `verify` names each in one line, and a
    query on the bundle is one line, never a traceback."""
    import skops.io as sio

    copy = Path(shutil.copytree(litert_bundle, tmp_path / "bundle"))
    (copy / "backbone" / "model.tflite").write_bytes(b"not a flatbuffer at all" * 100)
    _rechecksum(copy, "backbone/model.tflite")
    sio.dump({"a": 1}, copy / "heads" / "logreg.skops")  # a dict: not the head's pipeline
    _rechecksum(copy, "heads/logreg.skops")
    (copy / "heads" / "logreg_serving.npz").unlink()
    data = json.loads((copy / "manifest.json").read_text())
    data["heads"]["logreg"]["serving_file"] = None
    data["files"].pop("heads/logreg_serving.npz")
    (copy / "manifest.json").write_text(json.dumps(data))

    result = runner.invoke(app, ["verify", "--bundle", str(copy)])
    out = " ".join(result.output.split())
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "serving model backbone/model.tflite does not load" in out
    assert "head logreg does not load" in out
    image = next(dataset.rglob("*.jpg"))
    query = runner.invoke(app, ["search", str(image), "--bundle", str(copy)])
    assert query.exit_code == 2 and "Traceback" not in query.output
    assert len(query.output.strip().splitlines()) == 1 and query.output.startswith("error:")
    # with the head repaired, the garbage model alone is still one line
    shutil.copy(litert_bundle / "heads" / "logreg.skops", copy / "heads" / "logreg.skops")
    _rechecksum(copy, "heads/logreg.skops")
    query = runner.invoke(app, ["search", str(image), "--bundle", str(copy)])
    assert query.exit_code == 2 and "serving model" in query.output
    assert "cannot be loaded" in query.output and "Traceback" not in query.output


@pytest.mark.parametrize("damage", ["truncated shard", "pickled shard", "garbage parquet"])
def test_verify_reads_every_shard_and_table_without_crashing(damage: str, tiny_bundle: Path,
                                                             tmp_path: Path) -> None:
    """Damage re-checksummed into the manifest, so only reading the files finds it."""
    import numpy as np

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    shard = "embeddings/part-00001.npy"
    if damage == "truncated shard":
        data = (copy / shard).read_bytes()
        (copy / shard).write_bytes(data[: len(data) // 2])
    elif damage == "pickled shard":
        np.save(copy / shard, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        shard = "embeddings/part-00001.rows.parquet"
        (copy / shard).write_bytes(b"PAR1 this is no parquet PAR1")
    _rechecksum(copy, shard)
    result = runner.invoke(app, ["verify", "--bundle", str(copy)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "part-00001" in " ".join(result.output.split())
