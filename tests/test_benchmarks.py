"""Every script in benchmarks/ runs to its end on tiny data (its own process, tiny options),
so a refactoring that breaks one is caught by the suite, not by the next person measuring."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# script -> (its tiny options, given the photo folder, a scratch folder and a LiteRT cache
# shared by the scripts in LITERT_SHARED; a line it prints at its end). Photos: the suite's 30
# labelled 48x40 JPEGs; backbones at 32 px, random weights. finetune_compare and ray_scaling
# embed with the Keras runtime: LiteRT conversion (twice in each) is tested in test_runtimes,
# and skipping it here took about 30 % off both runs. build_memory and query_latency convert
# the same model: they run one after the other in one worker and share its conversion (one
# cold build, ~14 s of CPU, instead of two). ui_render's 40 rows are under the Map's UMAP
# minimum: PCA, not UMAP's ~10 s numba compile (the Map's UMAP is tested in test_ui_app).
Args = Callable[[Path, Path, Path], list[str]]
SCRIPTS: dict[str, tuple[Args, str]] = {
    "decode_compare": (lambda photos, tmp, cache: ["--folder", str(photos), "--sizes", "32",
                                            "--repeats", "1", "--limit", "5"],
                       "load average at the end"),
    "index_scale": (lambda photos, tmp, cache: ["--rows", "500", "--dim", "64", "--budgets", "1M",
                                         "--workdir", str(tmp / "work")],
                    "target: peak RSS"),
    "embed_throughput": (lambda photos, tmp, cache: ["--folder", str(photos), "--image-size", "32",
                                              "--repeats", "3", "--limit", "16",
                                              "--batch-size", "8", "--modes", "r",
                                              "--cache-dir", str(tmp / "cache")],
                         "reader only"),
    "build_memory": (lambda photos, tmp, cache: ["--sizes", "8", "16", "--image-size", "32",
                                                 "--workdir", str(tmp / "work"),
                                                 "--cache", str(cache)],
                     "peak 16/8"),
    "ui_render": (lambda photos, tmp, cache: ["--rows", "40", "--breeds", "3", "--out",
                                       str(tmp / "bundle"), "--rebuild"],
                  "slowest render after loading"),
    "finetune_compare": (lambda photos, tmp, cache: ["--source", str(photos), "--out",
                                              str(tmp / "out"), "--configs",
                                              "random_mobilenet_v2_32", "--unfreeze", "1",
                                              "--head-epochs", "3",
                                              "--fine-tune-epochs", "1", "--no-augment",
                                              "--runtime", "keras"],
                         "| random_mobilenet_v2_32 | logreg on re-embedded bundle |"),
    "query_latency": (lambda photos, tmp, cache: ["--photos", str(photos), "--weights",
                                                  "none", "--image-size", "32", "--large",
                                                  "100", "--cache", str(cache)],
                      "import tensorflow"),
    "ray_scaling": (lambda photos, tmp, cache: ["--folder", str(photos), "--image-size", "32",
                                         "--weights", "none", "--workers", "1",
                                         "--repeats", "1", "--batch-size", "8",
                                         "--runtime", "keras"],
                    "equality, local vs ray 1 worker(s)"),
}
QUICK = {"decode_compare", "index_scale"}  # seconds; the others load TensorFlow or build
LITERT_SHARED = ("build_memory", "query_latency")


# smoke-run elsewhere, or measurements over ../shared's real photos only (run by hand; their
# figures are in their docstrings): audit_scale has tests/test_audit_benchmarks.py; int8_samples
# judges the int8 check on real weights and photos (docs/notes/speed.md has its table);
# startup times warm builds of woof-sample photos with the dog-tuned weights (docs/notes/speed2.md);
# reader_stages breaks the pipeline's CPU per image down by stage on them (docs/notes/speed3.md)
ELSEWHERE = {"audit_scale", "audit_planted", "gate_compare", "int8_samples", "reader_stages",
             "space_compare", "space_data", "startup"}


def test_every_benchmark_is_smoke_run() -> None:
    assert set(SCRIPTS) | ELSEWHERE == {p.stem for p in BENCHMARKS.glob("*.py")}


@pytest.fixture(scope="module")
def litert_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One LiteRT cache for the scripts of LITERT_SHARED (one xdist group: one worker)."""
    return tmp_path_factory.mktemp("litert-cache")


def _run(name: str, dataset: Path, tmp_path: Path, cache: Path | None = None) -> None:
    args, last_words = SCRIPTS[name]
    env = {**os.environ, "PYTHONPATH": str(REPO), "EMBED_DOGS_CACHE": str(tmp_path / "cache"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"),
                          *args(dataset, tmp_path, cache or tmp_path / "cache")],
                         cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    output = run.stdout + run.stderr
    # ui_render exits 1 when a render is over its budget: a measurement, not a breakage
    assert run.returncode in ((0, 1) if name == "ui_render" else (0,)), output[-3000:]
    assert last_words in output, output[-3000:]


@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick_benchmark_runs(name: str, dataset: Path, tmp_path: Path) -> None:
    _run(name, dataset, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xdist_group("litert-benchmarks"))
    if name in LITERT_SHARED else name for name in sorted(set(SCRIPTS) - QUICK)])
def test_benchmark_runs(name: str, dataset: Path, tmp_path: Path, litert_cache: Path) -> None:
    if name == "ray_scaling":
        pytest.importorskip("ray")
    _run(name, dataset, tmp_path, litert_cache if name in LITERT_SHARED else None)
