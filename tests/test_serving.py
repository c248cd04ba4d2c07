"""Serving: queries on a LiteRT-built bundle run its own `.tflite` without TensorFlow, and the
shared query context gives every thread the answers a serial run gives."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from embed.bundle import Bundle
from tests.conftest import REPO, TINY

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
    manifest = Bundle.open(litert_bundle).manifest.model_dump()
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


def _build_int8(root: Path, dataset: Path, **bounds: float) -> Path:
    """The tiny bundle built with `--runtime litert-int8` under the given task bounds."""
    from ui.workflows import BuildConfig, build_bundle

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBED_DOGS_CACHE", str(root / "cache"))
        for name, value in bounds.items():
            mp.setattr(f"embed.quantise.{name}", value)
        build_bundle(BuildConfig(source=str(dataset), out=root / "bundle", backbone=TINY,
                                 weights="none", batch_size=8, runtime="litert-int8"))
    return root / "bundle"


@pytest.fixture(scope="module")
def int8_bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built with int8 under loose bounds (the tiny random backbone is no dog expert)."""
    return _build_int8(tmp_path_factory.mktemp("int8"), dataset, MAX_TOP1_DROP=1.0,
                       MIN_OVERLAP=0.0)


def test_int8_bundle_serves_its_int8_model_and_records_the_check(int8_bundle: Path) -> None:
    from embed.atomic import file_sha256

    manifest = Bundle.open(int8_bundle).manifest.model_dump()
    runtime = manifest["backbone"]["runtime"]
    assert runtime["name"] == "litert-int8" and runtime["precision"] == "int8"
    check = runtime["int8"]
    assert check["passed"] is True and check["rows"] == 30 and check["labelled_rows"] == 30
    assert {"top1_float32", "top1_int8", "top1_drop_points", "overlap_at_10",
            "calibration", "bounds"} <= set(check)
    assert check["calibration"]["rows"] == 30  # a small source calibrates on its check sample
    served = int8_bundle / manifest["backbone"]["serving_model"]
    assert file_sha256(served) == file_sha256(runtime["cache_file"])  # the int8 file
    assert "int8" in Path(runtime["cache_file"]).name
    fixed = manifest["embeddings"]["fixed_seconds"]
    assert {"start-up", "parity", "int8 check"} <= set(fixed)


def test_int8_queries_run_without_tensorflow(int8_bundle: Path, dataset: Path) -> None:
    image = next((dataset / "Beagle").glob("*.jpg"))
    run, loaded = _run_cli("search", image, "--bundle", int8_bundle, "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    assert loaded == []
    run, loaded = _run_cli("info", "--bundle", int8_bundle)
    assert run.returncode == 0 and loaded == []
    assert "int8 task check passed" in run.stdout


def test_int8_serving_vectors_are_the_stored_ones(int8_bundle: Path) -> None:
    from ui.workflows import open_for_queries

    ctx = open_for_queries(int8_bundle)
    assert ctx.embedder.model is None and ctx.embedder.runtime.name == "litert-int8"
    first = ctx.index.metadata.iloc[0]
    vector = ctx.embedder.embed_image_bytes(Path(first["path"]).read_bytes())
    assert float(vector @ ctx.bundle.embeddings()[0]) > 0.99999


def test_int8_failing_its_check_builds_with_float32(dataset: Path, tmp_path: Path) -> None:
    from embed.atomic import file_sha256

    with pytest.warns(RuntimeWarning, match="int8 model not used"):
        bundle = _build_int8(tmp_path, dataset, MIN_OVERLAP=1.01)
    manifest = Bundle.open(bundle).manifest.model_dump()
    runtime = manifest["backbone"]["runtime"]
    assert runtime["name"] == "litert" and runtime["precision"] == "float32"
    assert runtime["int8"]["passed"] is False and "overlap@10" in runtime["int8"]["reason"]
    served = bundle / manifest["backbone"]["serving_model"]
    assert file_sha256(served) == file_sha256(runtime["cache_file"])
    assert "int8" not in Path(runtime["cache_file"]).name


def test_the_map_loads_umap_without_tensorflow() -> None:
    """umap-learn's package imports TensorFlow for its optional ParametricUMAP; the app's map
    must not pay that (5 s, hundreds of MB) in a process that serves through LiteRT."""
    probe = ("import sys; from ui.browse import import_umap, projection_methods;"
             " assert projection_methods()[0] == 'UMAP'; umap = import_umap();"
             " assert hasattr(umap, 'UMAP'); print('tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "False"
