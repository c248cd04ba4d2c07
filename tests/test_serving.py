"""Serving: queries on a LiteRT-built bundle run its own `.tflite` without TensorFlow, and the
shared query context gives every thread the answers a serial run gives."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from embed.bundle import Bundle
from tests.conftest import REPO

HEAVY = ("tensorflow", "keras", "tf_keras")

PROBE = """
import json, sys
import tests.conftest  # registers the tiny test backbone
from ui.cli import app
code = 1
try:
    code = app(sys.argv[1:], standalone_mode=False) or 0
finally:
    loaded = sorted({m.split('.')[0] for m in sys.modules} & set(json.loads('%s')))
    print("LOADED", json.dumps(loaded), file=sys.stderr)
sys.exit(code)
"""


def _run_cli(*args: str | Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    run = subprocess.run([sys.executable, "-c", PROBE % json.dumps(HEAVY), *map(str, args)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    line = next(x for x in run.stderr.splitlines() if x.startswith("LOADED"))
    return run, json.loads(line.split(" ", 1)[1])


def test_bundle_carries_its_serving_model(litert_bundle: Path) -> None:
    manifest = Bundle.open(litert_bundle).manifest
    assert manifest["backbone"]["runtime"]["name"] == "litert"
    assert manifest["backbone"]["serving_model"] == "backbone/model.tflite"
    assert "backbone/model.tflite" in manifest["files"]


def test_search_and_classify_import_no_tensorflow(litert_bundle: Path, dataset: Path,
                                                   tmp_path: Path) -> None:
    image = next((dataset / "samoyed").glob("*.jpg"))
    run, loaded = _run_cli("search", image, "--bundle", litert_bundle, "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert loaded == []
    out = tmp_path / "p.csv"
    run, loaded = _run_cli("classify", dataset / "Beagle", "--bundle", litert_bundle,
                           "--out", out)
    assert run.returncode == 0, run.stderr[-3000:]
    assert loaded == [] and out.is_file()
    for command in (["info", "--bundle", litert_bundle], ["evaluate", "--bundle", litert_bundle]):
        run, loaded = _run_cli(*command)
        assert run.returncode == 0 and loaded == [], run.stderr[-2000:]


def test_serving_vectors_are_the_stored_ones(litert_bundle: Path) -> None:
    from ui.workflows import open_for_queries

    ctx = open_for_queries(litert_bundle)
    assert ctx.embedder.model is None  # no Keras model behind it
    first = ctx.index.metadata.iloc[0]
    vector = ctx.embedder.embed_image_bytes(Path(first["path"]).read_bytes())
    assert float(vector @ ctx.bundle.embeddings()[0]) > 0.99999


def test_concurrent_queries_answer_like_a_serial_run(litert_bundle: Path, dataset: Path) -> None:
    """8 threads x 25 queries through one cached context: exactly the serial answers."""
    from ui.workflows import look_up_image, open_for_queries

    ctx = open_for_queries(litert_bundle)
    photos = sorted(dataset.rglob("*.jpg"))[:25]

    def answers() -> list[tuple]:
        return [tuple((h["row_id"], round(h["score"], 6)) for h in
                      look_up_image(ctx, p, k=5, top_breeds=0).lookalikes) for p in photos]

    serial = answers()
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(lambda _: answers(), range(8)))
    assert all(run == serial for run in parallel)
    print(f"8 threads x {len(photos)} queries: {sum(len(r) for r in parallel)} answers,"
          " all equal to the serial run")
    assert np.isfinite([s for run in serial for _, s in run]).all()
