"""End to end on the team's real data: 600 dog photos, the dog-tuned backbone and the real
ImageNet loading path through Keras' cache. Skipped where ../shared/data is absent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import REPO, private_keras_home, shared_path

pytestmark = [pytest.mark.slow, pytest.mark.shared]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ui", *map(str, args)], cwd=REPO, capture_output=True,
        text=True, timeout=900, env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def woof() -> Path:
    return shared_path("woof-sample")


def test_dog_tuned_backbone_on_woof_sample(woof: Path, woof_bundle: Path,
                                           tmp_path: Path) -> None:
    """The session's woof bundle (tests/conftest.py: `build-index` of woof-sample with the
    dog-tuned mobilenet_v2 at 160 px), then search and classify on it."""
    weights = shared_path("weights", "mobilenet_v2_160_dogs_no_top.weights.h5")
    out = woof_bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"images": 600, "embedded": 600, "skipped": 0}
    # 20 % of 60 photos per breed held out (120), then near-copy groups moved whole to one
    # side: at most the moved photos change the split's sizes
    splits, moved = manifest["source"]["splits"], manifest["source"]["near_duplicate_rows_moved"]
    assert splits["train"] + splits["test"] == 600 and abs(splits["test"] - 120) <= moved
    assert manifest["index"]["recall@10"] == 1.0
    metrics = manifest["heads"]["logreg"]["metrics"]
    assert metrics["top1"] >= 0.85 and metrics["top5"] >= 0.97  # measured 0.942 / 1.0
    assert manifest["backbone"]["weights"] == str(weights.resolve())

    photos = sorted((woof / "samoyed").glob("*.jpg"))[:3]
    search = _cli("search", photos[0], "--bundle", out, "-k", "5", "--json")
    assert search.returncode == 0, search.stderr[-3000:]
    hits = json.loads(search.stdout)["lookalikes"]
    assert hits[0]["path"] == str(photos[0].resolve())
    assert sum(h["label"] == "samoyed" for h in hits) >= 4

    csv = tmp_path / "preds.csv"
    classify = _cli("classify", woof / "samoyed", "--bundle", out, "--out", csv)
    assert classify.returncode == 0, classify.stderr[-3000:]
    table = pd.read_csv(csv)
    assert len(table) == 60 and (table["breed_1"] == "samoyed").mean() >= 0.9


def test_imagenet_mobilenet_025_offline_through_keras_home(woof: Path, tmp_path: Path) -> None:
    home = private_keras_home(tmp_path)
    out = tmp_path / "bundle"
    run = _cli("build-index", "--source", woof, "--out", out, "--backbone", "mobilenet_025",
               "--weights", "imagenet", env={"KERAS_HOME": str(home)})
    assert run.returncode == 0, run.stderr[-3000:]
    assert (home / "keras.json").is_file()  # Keras wrote its config into the copy
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backbone"]["weights"] == "imagenet" and manifest["backbone"]["dim"] == 256
    assert manifest["heads"]["logreg"]["metrics"]["top1"] >= 0.6  # measured 0.725
