"""The fine-tuned Keras head: both training paths, its predictor, the head comparison, the
fine-tuned backbone's lineage into a new bundle, and the CLI's head choice.

Every test trains on its own copy of the shared tiny bundle (30 images, 3 breeds: 24 train,
6 test; the validation slice takes 1 train image per breed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from classify.finetune import (
    PATH_EMBEDDINGS,
    PATH_IMAGES,
    FinetuneParams,
    augmentation_value_range,
    load_finetune_head,
)
from classify.heads import load_predictor
from embed.backbones import file_sha256
from embed.bundle import Bundle
from embed.errors import BundleError, SourceError
from tests.conftest import TINY, unboxed
from ui.cli import app
from ui.workflows import BuildConfig, build_bundle, train_head

FAST = {"epochs": 3, "fine_tune_epochs": 2, "batch_size": 8}


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy: the session bundle stays read-only."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def test_head_only_trains_on_stored_embeddings(bundle_copy: Path) -> None:
    result = train_head(bundle_copy, "finetune", params=FinetuneParams(**FAST))
    bundle = Bundle(bundle_copy, writable=True)
    record = bundle.manifest.model_dump()["heads"]["finetune"]
    assert {k: record[k] for k in result["record"]} == result["record"]
    assert record["training_path"] == {"head": PATH_EMBEDDINGS, "fine_tune": None}
    assert record["input"] == "vectors" and record["unfrozen_layers"] == 0
    assert (record["train_images"], record["validation_images"], record["breeds"]) == (21, 3, 3)
    assert record["file"] == "heads/finetune.keras"
    assert record["sha256"] == file_sha256(bundle.head_path("finetune"))
    assert set(record["metrics"]) == {"test_images", "top1", "top5", "top1_ci95", "top5_ci95"}
    # scored on its validation slice, which chooses the serving head
    assert record["validation"]["images"] == 3 and 0 <= record["validation"]["top1"] <= 1
    assert record["metrics"]["test_images"] == 6
    for key in ("kind", "params", "train_seconds", "classes", "report", "history"):
        assert key in record
    for path in record["report"].values():
        assert (bundle_copy / path).is_file()
    loss = record["history"]["head"]["loss"]
    assert len(loss) == 3 and loss[-1] < loss[0]
    assert not list((bundle_copy / "heads").glob(".*"))  # no temporary file left behind


def test_vector_predictions_match_the_whole_model_on_images(bundle_copy: Path) -> None:
    """UnitNormalization makes stored vectors and images through the backbone the same input."""
    from embed.pipeline import ReaderConfig, iter_image_batches
    from embed.sources import ImageItem

    train_head(bundle_copy, "finetune", params=FinetuneParams(**FAST))
    bundle = Bundle(bundle_copy, writable=True)
    predictor = load_predictor(bundle, "finetune")
    x_test, _ = bundle.split_arrays()["test"]
    table = bundle.metadata()
    test = table[table["split"] == "test"]
    items = [ImageItem(int(r), p, None, "test") for r, p in zip(test["row_id"], test["path"],
                                                                 strict=True)]
    config = ReaderConfig(32, "tf", 8)
    inputs = np.concatenate([b.inputs for b in iter_image_batches(items, config)])
    np.testing.assert_allclose(
        predictor.predict_proba(x_test), predictor.predict_proba_images(inputs), atol=1e-4
    )
    ranked = predictor.predict_top_k(x_test, 2)
    assert len(ranked) == 6 and all(len(r) == 2 for r in ranked)


def test_comparison_report_and_manifest(bundle_copy: Path) -> None:
    train_head(bundle_copy, "finetune", params=FinetuneParams(**FAST))
    comparison = train_head(bundle_copy, "logreg", c=0.5)["comparison"]
    bundle = Bundle(bundle_copy, writable=True)
    assert bundle.manifest.model_dump()["heads"]["logreg"]["params"]["C"] == 0.5
    assert bundle.manifest.model_dump()["comparison"] == comparison
    assert set(comparison["heads"]) == {"logreg", "finetune"}
    assert comparison["best"] in ("logreg", "finetune")
    summary = pd.read_csv(bundle_copy / comparison["files"]["csv"])
    assert list(summary["head"]) == ["logreg", "finetune"]
    assert {"top1", "top5", "train_seconds"} <= set(summary.columns)
    per_breed = pd.read_csv(bundle_copy / comparison["files"]["per_breed"])
    assert len(per_breed) == 3
    assert {"logreg_recall", "finetune_recall", "finetune_f1"} <= set(per_breed.columns)
    data = json.loads((bundle_copy / comparison["files"]["json"]).read_text())
    assert data["best"] == comparison["best"]


def test_unfrozen_backbone_trains_through_images_and_lends_its_backbone(
    bundle_copy: Path, dataset: Path, tmp_path: Path
) -> None:
    from embed.embedder import embedder_for_bundle

    params = FinetuneParams(**FAST, unfreeze=1, augment=True)
    record = train_head(bundle_copy, "finetune", params=params)["record"]
    assert record["training_path"] == {"head": PATH_IMAGES, "fine_tune": PATH_IMAGES}
    assert record["input"] == "images" and record["unfrozen_layers"] == 1
    assert record["history"]["fine_tune"]["loss"]

    bundle = Bundle(bundle_copy, writable=True)
    predictor = load_predictor(bundle, "finetune")
    with pytest.raises(BundleError, match="unfrozen backbone"):
        predictor.predict_top_k(np.ones((1, 16), np.float32))
    # callers that only have stored vectors never get it by default
    assert load_predictor(bundle).name == "logreg"

    out = tmp_path / "refit"
    built = build_bundle(BuildConfig(source=str(dataset), out=out, backbone_from=bundle_copy,
                                     batch_size=8, runtime="keras"))
    lineage = built.manifest.model_dump()["backbone"]["lineage"]
    assert lineage["bundle"] == str(bundle_copy.resolve())
    assert lineage["head_file"] == str(bundle.head_path("finetune").resolve())
    assert lineage["head_sha256"] == record["sha256"]
    assert lineage["base_backbone"]["name"] == TINY
    assert built.manifest.model_dump()["backbone"]["name"] == TINY
    assert built.manifest.model_dump()["backbone"]["weights_sha256"] != (
        bundle.manifest.model_dump()["backbone"]["weights_sha256"])

    # query-time embedding rebuilds the fine-tuned backbone and reproduces the stored vectors
    new = Bundle(out, writable=True)
    embedder = embedder_for_bundle(new, "keras")
    first = new.metadata().iloc[0]
    vector = embedder.embed_image_bytes(Path(first["path"]).read_bytes())
    assert float(vector @ new.embeddings()[0]) == pytest.approx(1.0, abs=1e-4)

    # a changed head file is refused rather than silently embedding with other weights...
    with open(bundle.head_path("finetune"), "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="sha256 differs"):
        load_finetune_head(bundle, record)
    with pytest.raises(BundleError, match="is damaged: heads/finetune.keras has"):
        build_bundle(BuildConfig(source=str(dataset), out=tmp_path / "again",
                                 backbone_from=bundle_copy, runtime="keras"))
    # ...while the new bundle carries its own copy of the fine-tuned weights
    again = embedder_for_bundle(Bundle.open(out), "keras")
    assert float(again.embed_image_bytes(Path(first["path"]).read_bytes()) @ vector) == (
        pytest.approx(1.0, abs=1e-5))


def test_images_path_needs_a_folder_source(bundle_copy: Path) -> None:
    bundle = Bundle(bundle_copy, writable=True)
    manifest = bundle.manifest.model_dump()
    manifest["source"] = {**manifest["source"], "kind": "tfds", "location": "tfds:dogs"}
    bundle.write_manifest(manifest)
    with pytest.raises(SourceError, match="folder source"):
        train_head(bundle_copy, "finetune", params=FinetuneParams(**FAST, augment=True))
    # the stored-embeddings path does not need the images
    record = train_head(bundle_copy, "finetune", params=FinetuneParams(**FAST))["record"]
    assert record["training_path"]["head"] == PATH_EMBEDDINGS


def test_backbone_from_a_bundle_without_finetune_head(tiny_bundle: Path, dataset: Path,
                                                      tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no fine-tuned head"):
        build_bundle(BuildConfig(source=str(dataset), out=tmp_path / "x",
                                 backbone_from=tiny_bundle))


def test_augmentation_range_follows_preprocessing() -> None:
    assert augmentation_value_range("tf") == (-1.0, 1.0)
    assert augmentation_value_range("none") == (0.0, 255.0)


def test_cli_train_then_classify_with_either_head(
    bundle_copy: Path, dataset: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--bundle", str(bundle_copy), "--head", "finetune",
                                 "--epochs", "2", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    # one progress bar per phase (the Keras callback drives it), not a line per epoch
    assert "stored embeddings" in result.output and "2/2 epochs" in result.output
    assert "epoch 1/2" not in result.output
    assert (bundle_copy / "report" / "comparison.csv").is_file()

    for head in ("finetune", "logreg"):
        out = tmp_path / f"{head}.csv"
        result = runner.invoke(app, ["classify", str(dataset / "Beagle"), "--bundle",
                                     str(bundle_copy), "--head", head, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"head: {head}" in result.output
        table = pd.read_csv(out)
        assert len(table) == 10 and table["breed_1"].notna().all()

    # no --head: the better one on the validation slice of train (not on test)
    bundle = Bundle(bundle_copy, writable=True)
    manifest = bundle.manifest.model_dump()
    manifest["heads"]["finetune"]["validation"]["top1"] = 1.0
    manifest["heads"]["logreg"]["validation"]["top1"] = 0.5
    manifest["heads"]["finetune"]["metrics"]["top1"] = 0.5
    manifest["heads"]["logreg"]["metrics"]["top1"] = 1.0
    bundle.write_manifest(manifest)
    result = runner.invoke(app, ["classify", str(dataset / "Beagle"), "--bundle",
                                 str(bundle_copy), "--out", str(tmp_path / "best.csv")])
    assert result.exit_code == 0, result.output
    assert "head: finetune" in result.output

    result = runner.invoke(app, ["train", "--bundle", str(bundle_copy), "--head", "nope"])
    assert result.exit_code == 2 and "'nope' is not one of 'logreg', 'finetune'" in unboxed(
        result.output)
