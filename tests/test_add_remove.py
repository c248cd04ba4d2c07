"""`add` and `remove` change a real small bundle in place: only new content is embedded, the
index, head and report follow, queries see the change, the history records it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from embed.bundle import Bundle
from tests.conftest import TINY, unboxed, write_dataset
from ui.cli import app

runner = CliRunner()


def search(bundle: Path, image: Path, k: int = 3) -> list[dict]:
    result = runner.invoke(app, ["search", str(image), "--bundle", str(bundle), "-k", str(k),
                                 "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["lookalikes"]


def test_add_then_remove_round_trip(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "first", per_class=6, seed=1)
    out = tmp_path / "bundle"
    built = runner.invoke(app, ["build-index", "--source", str(first), "--out", str(out),
                                "--backbone", TINY, "--weights", "none", "--runtime", "keras"])
    assert built.exit_code == 0, built.output
    before = Bundle.open(out)
    assert before.manifest.model_dump()["counts"]["embedded"] == 18

    more = write_dataset(tmp_path / "more", per_class=4, seed=9, name="new_{i}",
                         classes={"beagle": (200, 120, 60), "samoyed": (235, 235, 230)})
    shutil.copy(first / "Beagle" / "000.jpg", more / "beagle" / "copy_of_000.jpg")  # known
    (more / "beagle" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    added = runner.invoke(app, ["add", "--bundle", str(out), "--source", str(more),
                                "--runtime", "keras"])
    assert added.exit_code == 0, added.output
    said = " ".join(added.output.split())
    assert "added 8 images" in said and "1 was already there" in said
    assert "1 could not be used" in said

    bundle = Bundle.open(out)
    m = bundle.manifest.model_dump()
    assert m["counts"]["embedded"] == 26 and m["index"]["rows"] == 26
    assert m["index"]["rebuilt"] is False  # the new rows were added to the index in place
    assert [h["op"] for h in m["history"]] == ["build", "add"]
    table = bundle.metadata()
    assert table["row_id"].is_unique and table["row_id"].max() >= 18
    assert table["path"].str.contains("/more/").sum() == 8
    assert m["heads"]["logreg"]["train_images"] + m["heads"]["logreg"]["metrics"][
        "test_images"] == 26
    new_photo = more / "samoyed" / "new_2.jpg"
    assert search(out, new_photo)[0]["path"] == str(new_photo.resolve())
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["path"].str.endswith("broken.jpg").sum() == 1
    assert runner.invoke(app, ["verify", "--bundle", str(out)]).exit_code == 0
    # the first image's vector is unchanged by the append
    np.testing.assert_array_equal(bundle.embeddings()[:18], before.embeddings())

    (more / "beagle" / "broken.jpg").unlink()  # the same photos again: nothing to do
    commit = bundle.manifest.commit
    again = runner.invoke(app, ["add", "--bundle", str(out), "--source", str(more),
                                "--runtime", "keras"])
    assert again.exit_code == 0, again.output
    said = " ".join(again.output.split())
    assert "added 0 images" in said and "the bundle is unchanged" in said
    assert "refitted" not in said
    assert Bundle.open(out).manifest.commit == commit  # no new commit, no refit

    removed = runner.invoke(app, ["remove", "--bundle", str(out), "samoyed/new_*.jpg",
                                  str(first / "Beagle" / "001.jpg")])
    assert removed.exit_code == 0, removed.output
    assert "removed 5 images" in " ".join(removed.output.split())
    bundle = Bundle.open(out)
    assert bundle.manifest.model_dump()["counts"]["embedded"] == 21
    assert bundle.manifest.model_dump()["index"]["rows"] == 21 and len(bundle.embeddings()) == 21
    assert [h["op"] for h in bundle.manifest.model_dump()["history"]] == ["build", "add", "remove"]
    assert all(h["path"] != str(new_photo.resolve()) for h in search(out, new_photo, k=21))
    assert runner.invoke(app, ["verify", "--bundle", str(out)]).exit_code == 0
    nothing = runner.invoke(app, ["remove", "--bundle", str(out), "no/such/*.jpg"])
    assert nothing.exit_code == 2 and "no image" in nothing.output


def test_a_new_breed_makes_the_finetuned_head_stale_and_one_breed_means_no_head(
        tiny_bundle: Path, tmp_path: Path) -> None:
    """After `add` of a breed the fine-tuned head never saw, that head is not served (it would
    name one of the old breeds) and `info` says so with the command that refreshes it; the
    cheap logistic regression is refitted and knows the new breed. Removing all but one breed
    leaves no head and no gate, said plainly."""
    from classify.finetune import FinetuneParams
    from ui.workflows import train_head

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    train_head(bundle, "finetune", params=FinetuneParams(epochs=1, batch_size=8))
    husky = write_dataset(tmp_path / "new", per_class=6, seed=5,
                          classes={"husky": (120, 120, 140)})
    added = runner.invoke(app, ["add", "--bundle", str(bundle), "--source", str(husky)])
    assert added.exit_code == 0, added.output
    assert "new breed: husky" in " ".join(added.output.split())

    info = unboxed(runner.invoke(app, ["info", "--bundle", str(bundle)]).output)
    assert "head finetune STALE, not served: fitted on 30 rows, the bundle now has 36" in info
    assert "embed-dogs train --head finetune" in info
    photo = next((husky / "husky").glob("*.jpg"))
    refused = runner.invoke(app, ["search", str(photo), "--bundle", str(bundle), "--head",
                                  "finetune"])
    assert refused.exit_code == 2 and "is stale" in refused.output
    served = json.loads(runner.invoke(app, ["search", str(photo), "--bundle", str(bundle),
                                            "--json"]).output)
    # the fine-tuned head knows only the 3 old breeds: a husky answer is the refitted logreg
    assert "husky" in [b["breed"] for b in served["breeds"]]

    removed = runner.invoke(app, ["remove", "--bundle", str(bundle), "Beagle/*",
                                  "n02085620-Chihuahua/*", "samoyed/*"])
    assert removed.exit_code == 0, removed.output
    after = Bundle.open(bundle).manifest
    assert after.heads == {} and after.gate is None and after.comparison is None
    info = unboxed(runner.invoke(app, ["info", "--bundle", str(bundle)]).output)
    assert "breed head none (needs labelled photos of at least 2 breeds)" in info
    assert not (bundle / "heads" / "finetune.keras").exists()
    assert runner.invoke(app, ["verify", "--bundle", str(bundle)]).exit_code == 0


def test_add_refuses_the_bundle_itself_as_source(tiny_bundle: Path, tmp_path: Path) -> None:
    """`add --source B --bundle B` once embedded the report's confusion plot as a breed
    called "report"."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    before = (bundle / "manifest.json").read_text()
    for source in (bundle, bundle / "report"):
        result = runner.invoke(app, ["add", "--bundle", str(bundle), "--source", str(source)])
        assert result.exit_code == 2 and "is or contains the bundle" in " ".join(
            result.output.split())
    assert (bundle / "manifest.json").read_text() == before
