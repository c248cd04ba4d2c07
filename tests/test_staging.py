"""Writing bundles safely: refusals before any work, one writer at a time, the final rename,
and a build killed at any moment that resumes to the same bundle a clean run makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from embed.bundle import Bundle
from embed.errors import BundleError
from embed.staging import BundleWriter, check_target
from tests.conftest import REPO, TINY, write_dataset
from ui.cli import app
from ui.workflows import BuildConfig, build_bundle

runner = CliRunner()


def build(*args: str | Path):
    return runner.invoke(app, ["build-index", "--backbone", TINY, "--weights", "none",
                               "--runtime", "keras", *map(str, args)])


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = write_dataset(tmp_path / "photos", per_class=4)
    (root / "my notes.txt").write_text("a user's file")
    return root


def test_out_is_the_source_or_inside_or_around_it(photos: Path, tmp_path: Path) -> None:
    for out, words in ((photos, "is or contains the source folder"),
                       (photos.parent, "is or contains the source folder"),
                       (photos / "beagle_bundle", "lies inside the source folder")):
        result = build("--source", photos, "--out", out, "--overwrite")
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output
    assert (photos / "my notes.txt").read_text() == "a user's file"
    assert len(list(photos.rglob("*.jpg"))) == 12


def test_overwrite_replaces_only_a_bundle(photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    result = build("--source", photos, "--out", folder, "--overwrite")
    assert result.exit_code == 2
    assert "is not an embed-dogs bundle" in result.output
    assert (folder / "thesis.txt").read_text() == "years of work"

    out = tmp_path / "bundle"
    assert build("--source", photos, "--out", out).exit_code == 0
    again = build("--source", photos, "--out", out)
    assert again.exit_code == 2 and "already exists; pass --overwrite" in again.output
    replaced = build("--source", photos, "--out", out, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    # the lock file stays beside the bundle: deleting it while held let two writers in
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.lock", "bundle", "documents",
                                                          "photos"]


def test_refusal_comes_before_any_model_is_loaded(photos: Path, tmp_path: Path) -> None:
    """An unknown backbone would fail while loading: the --out check answers first."""
    (tmp_path / "taken").mkdir()
    result = runner.invoke(app, ["build-index", "--source", str(photos), "--out",
                                 str(tmp_path / "taken"), "--backbone", "no_such_net"])
    assert result.exit_code == 2 and "already exists" in result.output


def test_a_second_writer_fails_at_once_naming_the_holder(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with BundleWriter(out):
        started = time.perf_counter()
        result = build("--source", photos, "--out", out)
        assert time.perf_counter() - started < 5
    assert result.exit_code == 2
    assert f"another embed-dogs command is changing {out}" in " ".join(result.output.split())
    assert f"pid {os.getpid()}" in result.output
    assert not out.exists()
    assert build("--source", photos, "--out", out).exit_code == 0  # the lock was released


def test_final_rename_refuses_a_folder_that_appeared_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    with pytest.raises(BundleError, match="appeared while this build ran"), \
            BundleWriter(out) as writer:
        bundle, _ = writer.stage({"key": 1})
        (bundle.root / "manifest.json").write_text("{}")
        out.mkdir()
        (out / "someone else's.txt").write_text("keep me")
        writer.commit()
    assert (out / "someone else's.txt").read_text() == "keep me"
    assert (tmp_path / ".bundle.partial" / "manifest.json").is_file()  # the build is kept


def test_check_target_resolves_and_allows_a_new_folder(tmp_path: Path) -> None:
    assert check_target(tmp_path / "new", False, tmp_path / "src") == (tmp_path / "new")


def test_files_follow_the_umask(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    old = os.umask(0o022)
    try:
        assert build("--source", photos, "--out", out).exit_code == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    for path in out.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path


# ---- kill -9 and resume ------------------------------------------------------------------------
BUILD_SCRIPT = """
import sys
from pathlib import Path
import tests.conftest  # registers the tiny backbone
from ui.workflows import BuildConfig, build_bundle
result = build_bundle(BuildConfig(source=sys.argv[1], out=Path(sys.argv[2]),
                                  backbone="tiny_test", weights="none", runtime="litert",
                                  batch_size=4, rows_per_shard=16))
print("reused", result.stats.reused, "processed", result.stats.processed)
"""


def _start(source: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "EMBED_DOGS_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(source), str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the build ended before the kill point: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the kill point never came"
        time.sleep(0.005)
    assert proc.poll() is None, "the build ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_kill_9_at_three_moments_then_resume_equals_a_clean_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_dataset(tmp_path / "photos", per_class=60, seed=5)  # 180 images
    cache = tmp_path / "cache"
    clean = tmp_path / "clean"
    # the reference: the same build, uninterrupted, in this process, where TensorFlow is
    # loaded already; its LiteRT conversion lands in the cache the killed builds then share,
    # so they start without TensorFlow
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(cache))
    build_bundle(BuildConfig(source=str(source), out=clean, backbone="tiny_test",
                             weights="none", runtime="litert", batch_size=4, rows_per_shard=16))
    reference = Bundle.open(clean)

    out = tmp_path / "resumed"
    staging = tmp_path / ".resumed.partial"
    shards = staging / "embeddings"
    moments = {
        "staging made, nothing embedded": lambda: (staging / "build-state.json").exists(),
        "three shards written": lambda: (shards / "part-00002.rows.parquet").exists(),
        "embedding done, index being built": lambda: (staging / "metadata.parquet").exists(),
    }
    for _moment, ready in moments.items():
        _kill_when(_start(source, out, cache), ready)
        assert not out.exists() and staging.is_dir()
    # every kill left a staging folder the next run continued; the last one resumes again
    final = _start(source, out, cache)
    stdout, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    print(f"after three kills the rerun printed: {stdout.strip()}")
    reused = int(stdout.split()[1])
    assert reused >= 48  # at least the three shards of 16 rows
    assert not staging.exists()  # the lock file stays: deleting it let two writers in

    resumed = Bundle.open(out)
    pd.testing.assert_frame_equal(resumed.metadata().drop(columns="path"),
                                  reference.metadata().drop(columns="path"))
    assert [Path(p).name for p in resumed.metadata()["path"]] == [
        Path(p).name for p in reference.metadata()["path"]]
    np.testing.assert_allclose(resumed.embeddings(), reference.embeddings(), atol=1e-6)
    for key in ("counts", "index"):
        assert resumed.manifest.model_dump()[key] == reference.manifest.model_dump()[key], key
    assert resumed.manifest.model_dump()["heads"]["logreg"]["metrics"] == (
        reference.manifest.model_dump()["heads"]["logreg"]["metrics"])
    assert json.loads((out / "manifest.json").read_text())["embeddings"]["reused_items"] == reused
    shutil.rmtree(tmp_path / "photos")
