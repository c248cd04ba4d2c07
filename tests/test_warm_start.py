"""A build whose model, parity verdict and weights facts are cached never imports TensorFlow
(nor does an `add` to its bundle), and `auto` says in one line, in the manifest, why a small
folder stays float32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, write_dataset

WARM_BUILD = """
import json, sys
from tests import conftest  # registers the tiny backbone (its builder imports Keras only
# when called), under the module name the test registered it with
from ui.workflows import BuildConfig, build_bundle, add_to_bundle
build_bundle(BuildConfig(source={source!r}, out={out!r}, backbone=conftest.TINY,
                         weights="none", batch_size=8, runtime="auto"))
after_build = "tensorflow" in sys.modules or "keras" in sys.modules
add_to_bundle({out!r}, {extra!r})
print(json.dumps([after_build, "tensorflow" in sys.modules or "keras" in sys.modules]))
"""


@pytest.mark.slow
def test_a_warm_cache_build_and_add_import_no_tensorflow(dataset: Path, tmp_path: Path) -> None:
    from ui.workflows import BuildConfig, build_bundle

    cache = tmp_path / "cache"
    os.environ["EMBED_DOGS_CACHE"] = str(cache)  # the autouse fixture restores it
    cold = build_bundle(BuildConfig(source=str(dataset), out=tmp_path / "cold", backbone=TINY,
                                    weights="none", batch_size=8, runtime="auto"))
    cold_manifest = json.loads((cold.bundle / "manifest.json").read_text())
    runtime = cold_manifest["backbone"]["runtime"]
    # 30 photos cannot repay int8's conversion and check: float32, and the line says why
    assert runtime["name"] == "litert" and runtime["requested"] == "auto"
    assert runtime["decision"].startswith("float32: int8's conversion and check not cached,"
                                          " and 30 photos do not repay")
    assert not list((cache / "litert").glob("*int8*"))
    extra = write_dataset(tmp_path / "extra", per_class=2, seed=9)
    code = WARM_BUILD.format(source=str(dataset),
                             out=str(tmp_path / "warm"), extra=str(extra))
    env = {**os.environ, "EMBED_DOGS_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False]
    warm = json.loads((tmp_path / "warm" / "manifest.json").read_text())
    assert warm["backbone"]["weights_sha256"] == cold_manifest["backbone"]["weights_sha256"]
    assert warm["backbone"]["runtime"]["parity"]["cached"] is True
    assert warm["backbone"]["runtime"]["decision"] == runtime["decision"]
    assert warm["counts"]["embedded"] == 30 + 6


def test_fewer_collections_restores_the_thresholds() -> None:
    import gc

    from embed.environment import BUILD_GC_THRESHOLDS, fewer_collections

    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_collections():
        assert gc.get_threshold() == BUILD_GC_THRESHOLDS
        raise RuntimeError
    assert gc.get_threshold() == before


def test_small_fits_run_on_one_blas_thread() -> None:
    from threadpoolctl import threadpool_info

    from embed.environment import SMALL_FIT_ROWS, blas_threads_for

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    with blas_threads_for(40):
        assert blas_threads() == {1}
    assert blas_threads() == before
    with blas_threads_for(SMALL_FIT_ROWS):
        assert blas_threads() == before


def test_an_unwritable_cache_folder_falls_back_to_a_private_temporary_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A container's read-only home must not stop a build: caches only save time."""
    import tempfile

    from embed import environment

    (tmp_path / "a-file").write_text("not a folder")  # nothing can be made under it, even as root
    monkeypatch.setenv(environment.CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    environment._writable_cache.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            folder = environment.cache_dir("litert")
        assert folder.parent == tmp_path / "tmp" / f"embed-dogs-cache-{os.getuid()}"
        assert oct(folder.parent.stat().st_mode & 0o777) == oct(0o700)
        assert "cannot be written" in caplog.text and environment.CACHE_ENV in caplog.text
        monkeypatch.setenv(environment.CACHE_ENV, str(tmp_path / "ok"))
        assert environment.cache_dir("litert") == tmp_path / "ok" / "litert"
        assert (tmp_path / "ok").is_dir()
    finally:
        environment._writable_cache.cache_clear()
