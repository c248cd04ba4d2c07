"""The Ray engine (`--engine ray`): a real local Ray cluster on 2 CPUs, no mocked Ray.

The slow tests compare a Ray build with the local build of the same photos (bad files
included): the same rows, vectors with cosine >= 0.9999 row by row, the same index kind and
head metrics. Workers import the test backbones' module themselves (the engine imports the
module that registered a custom backbone in each actor), so nothing here leaks into the
product code.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embed.backbones import BackboneSpec, register_backbone
from embed.bundle import Bundle
from embed.environment import cpu_cores
from embed.errors import EngineError
from embed.sources import ImageItem
from tests.conftest import (
    TINY,
    TINY_DIM,
    TINY_SIZE,
    build_tiny_backbone,
    unboxed,
    write_dataset,
)

PID_DIR_ENV = "EMBED_DOGS_TEST_RAY_PIDS"
PIDS_BACKBONE = "tiny_test_pids"


def record_actor_pid() -> None:
    """Inside a Ray actor, leave its pid in $PID_DIR_ENV, so the test can kill a worker from
    outside. Actors import this module (it registers their backbone) whether they run the
    shipped `.tflite` or build the Keras backbone."""
    folder = os.environ.get(PID_DIR_ENV)
    if folder and "ray" in sys.modules:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
            Path(folder, str(os.getpid())).write_text(str(time.time()))


def build_pid_recording_backbone(input_shape, weights=None):
    """The tiny backbone under another name (its module records actor pids)."""
    record_actor_pid()
    return build_tiny_backbone(input_shape, weights)


register_backbone(BackboneSpec(PIDS_BACKBONE, "", TINY_SIZE, "tf", TINY_DIM,
                               custom_builder=build_pid_recording_backbone), replace=True)
record_actor_pid()


# ---- fast: no cluster ------------------------------------------------------------------
def test_without_ray_the_engine_says_how_to_install_it(monkeypatch, tmp_path) -> None:
    from ui.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    from embed.engines import make_engine

    with pytest.raises(EngineError, match=r'pip install "embed-dogs\[ray\]"'):
        make_engine("ray")
    result = CliRunner().invoke(app, ["build-index", "--source", str(tmp_path), "--out",
                                      str(tmp_path / "b"), "--engine", "ray"])
    assert result.exit_code == 2
    assert "--engine ray needs Ray" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_ray_options_need_the_ray_engine() -> None:
    from embed.engines import make_engine

    with pytest.raises(EngineError, match="--engine ray only"):
        make_engine("local", workers=2)


def test_the_plan_fixes_shards_by_item_range() -> None:
    from embed.ray_engine import items_per_shard, plan_shards

    assert items_per_shard(600, 2, 4096) == 150  # two shards per worker
    assert items_per_shard(600, 1, 4096) == 300
    assert items_per_shard(100, 2, 4096) == 64  # never tiny shards ...
    assert items_per_shard(100, 2, 8) == 8  # ... nor over the bundle's rows per shard
    assert items_per_shard(10**6, 16, 4096) == 4096
    items = [ImageItem(i, f"/x/{i}.jpg", None, "none") for i in range(10)]
    plan = plan_shards(items, 4, first=3)
    assert [(n, [i.row_id for i in part]) for n, part in plan] == [
        (3, [0, 1, 2, 3]), (4, [4, 5, 6, 7]), (5, [8, 9])]


def test_an_address_where_nothing_answers_fails_within_seconds(tmp_path: Path,
                                                               dataset: Path) -> None:
    """`--ray-address 127.0.0.1:1` (nothing listens there) is one line and exit 2 within
    seconds, before any model loads, and leaves the bundle's lock free (Ray itself retried
    for about ten minutes)."""
    import ray

    from embed.engines import make_engine
    from ui.cli import app

    started = time.perf_counter()
    with pytest.raises(EngineError, match=r"could not join a Ray cluster at 127\.0\.0\.1:1:"
                       r" nothing answers there"), make_engine("ray", "127.0.0.1:1"):
        pass
    out = tmp_path / "bundle"
    result = CliRunner().invoke(app, [
        "build-index", "--source", str(dataset), "--out", str(out), "--backbone", TINY,
        "--weights", "none", "--engine", "ray", "--ray-address", "127.0.0.1:1"])
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert "could not join a Ray cluster at 127.0.0.1:1: nothing answers there" in unboxed(
        result.output)
    assert "Traceback" not in result.output and seconds < 20, seconds
    assert not ray.is_initialized() and not out.exists()
    for lock in tmp_path.glob(".bundle*.lock"):  # whatever the lock file, nobody holds it
        import fcntl

        with lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_an_address_where_no_ray_cluster_answers_fails_within_seconds() -> None:
    """Something that accepts connections but is no Ray cluster is refused after the
    timeout, not after Ray's minutes of retries; the address forms parse as Ray reads them."""
    import socket as sockets

    from embed.ray_cluster import check_answers, cluster_endpoint

    assert cluster_endpoint("ray://head.example:10001") == ("head.example", 10001)
    assert cluster_endpoint("head.example:6379") == ("head.example", 6379)
    assert cluster_endpoint("not-an-address") is None
    with sockets.socket() as server:
        server.bind(("", 0))  # every interface: Ray reads 127.0.0.1 as this node's address
        server.listen()
        started = time.perf_counter()
        with pytest.raises(EngineError, match="no Ray cluster answers within 2 s"):
            check_answers(f"127.0.0.1:{server.getsockname()[1]}", timeout=2)
        assert time.perf_counter() - started < 6


def test_actors_get_a_runtime_env_only_where_their_workers_lack_it(monkeypatch) -> None:
    """A local cluster started with the actors' environment needs no per-actor runtime_env
    (which would keep Ray from reusing its prestarted workers, issue 21); a joined one, or a
    different environment, still gets it. The driver's own environment is left as it was."""
    from embed.ray_cluster import Cluster, environment
    from embed.ray_engine import actor_env

    env = {"EMBED_DOGS_LITERT_THREADS": "2", "PYTHONPATH": "/code"}
    started = Cluster("local", None, 1, 2, 1, 2, 2, tuple(sorted(env.items())))
    joined = Cluster("auto", None, 1, 2, 1, 2, 2)
    assert actor_env(started, env) == {}
    assert actor_env(joined, env) == {"runtime_env": {"env_vars": env}}
    other = {**env, "EMBED_DOGS_LITERT_THREADS": "1"}
    assert actor_env(started, other) == {"runtime_env": {"env_vars": other}}
    monkeypatch.setenv("PYTHONPATH", "/mine")
    monkeypatch.delenv("EMBED_DOGS_LITERT_THREADS", raising=False)
    with environment(env):
        assert os.environ["PYTHONPATH"] == "/code"
    assert os.environ["PYTHONPATH"] == "/mine" and "EMBED_DOGS_LITERT_THREADS" not in os.environ


# ---- slow: a real local Ray cluster ----------------------------------------------------
def with_bad_files(root: Path) -> Path:
    """60 photos in 3 breeds, a truncated and an empty JPEG (62 items), and a text file."""
    write_dataset(root, per_class=20)
    good = (root / "Beagle" / "000.jpg").read_bytes()
    (root / "Beagle" / "010_truncated.jpg").write_bytes(good[:150])
    (root / "samoyed" / "005_empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not a photo")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_bad_files(tmp_path_factory.mktemp("ray-photos") / "dogs")


def build(source: str, out: Path, engine: str = "local", backbone: str = TINY,
          on_source=None, **kwargs):
    from ui.workflows import BuildConfig, build_bundle

    settings = {"batch_size": 4, "runtime": "litert", "rows_per_shard": 8, **kwargs}
    return build_bundle(BuildConfig(
        source=source, out=out, backbone=backbone, weights="none", engine=engine,
        workers=2 if engine == "ray" else None, **settings), on_source=on_source)


@pytest.fixture(scope="module")
def local_bundle(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return Bundle.open(build(str(photos), tmp_path_factory.mktemp("ray-ref") / "local").bundle)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray cluster with 2 CPUs for the module's builds (the engine uses a session
    that is already up and leaves it running); workers inherit the pid folder's variable."""
    import ray

    pids = tmp_path_factory.mktemp("ray-pids")
    os.environ[PID_DIR_ENV] = str(pids)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield pids
    finally:
        ray.shutdown()
        os.environ.pop(PID_DIR_ENV, None)


def compare(local: Bundle, other: Bundle) -> dict:
    """The acceptance check: the same rows, row-by-row cosine, index kind and head metrics."""
    columns = ["row_id", "path", "label", "split", "sha256", "width", "height"]
    a, b = local.metadata()[columns], other.metadata()[columns]
    skipped_a = local.metadata_path.with_name("skipped.csv").read_text()
    skipped_b = other.metadata_path.with_name("skipped.csv").read_text()
    cosines = np.einsum("ij,ij->i", local.embeddings(), other.embeddings())
    heads = [{k: bundle.manifest.heads["logreg"].metrics.get(k)
              for k in ("top1", "top5", "test_images")} for bundle in (local, other)]
    return {
        "rows": len(a), "rows_equal": a.equals(b), "skipped_equal": skipped_a == skipped_b,
        "min_cosine": float(cosines.min()) if len(cosines) else 1.0,
        "index": (local.manifest.index.kind, other.manifest.index.kind),
        "heads": heads, "whole": other.check(full=True) == [],
    }


def assert_same(report: dict) -> None:
    assert report["rows_equal"] and report["skipped_equal"] and report["whole"], report
    assert report["min_cosine"] >= 0.9999, report
    assert report["index"][0] == report["index"][1], report
    assert report["heads"][0] == report["heads"][1], report


@pytest.mark.slow
def test_cli_build_and_add_on_a_cluster_it_starts(tmp_path: Path, photos: Path,
                                                  local_bundle: Bundle, monkeypatch) -> None:
    """`build-index --engine ray` starts (and stops) its own local cluster; `add --engine ray`
    appends the photos the bundle lacks, as the local `add` does."""
    import ray

    import embed.ray_engine as ray_engine
    from ui.cli import app

    asked: list[dict] = []  # the actors' runtime_env: none, their workers inherit it
    real = ray_engine.actor_env
    monkeypatch.setattr(ray_engine, "actor_env",
                        lambda *a: asked.append(real(*a)) or asked[-1])
    part = tmp_path / "part"
    shutil.copytree(photos, part)
    shutil.rmtree(part / "samoyed")
    out = tmp_path / "bundle"
    runner = CliRunner()
    result = runner.invoke(app, ["build-index", "--source", str(part), "--out", str(out),
                                 "--backbone", TINY, "--weights", "none", "--runtime", "litert",
                                 "--batch-size", "4", "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    # 41 items make one shard (a shard's start-up is not worth fewer than 64), so 1 worker
    cores = cpu_cores()  # the engine's own local cluster gets every usable core
    assert f"ray at local: 1 worker on 1 node(s), {cores} CPUs" in unboxed(result.output)
    assert not ray.is_initialized()  # the engine stopped the cluster it started
    result = runner.invoke(app, ["add", "--bundle", str(out), "--source", str(photos),
                                 "--engine", "ray", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert "added 20 images" in result.output
    bundle = Bundle.open(out)
    assert bundle.check(full=True) == []
    engine = bundle.manifest.model_dump()["embeddings"]["engine"]
    assert engine["name"] == "ray" and engine["workers"] == 1
    assert engine["cluster_cpus"] == cores
    # every photo's vector equals the local build's vector of the same photo
    mine, ref = bundle.metadata(), local_bundle.metadata()
    assert len(mine) == len(ref) == 60
    position = {sha: i for i, sha in enumerate(ref["sha256"])}
    order = [position[sha] for sha in mine["sha256"]]
    cosines = np.einsum("ij,ij->i", bundle.embeddings(), local_bundle.embeddings()[order])
    assert cosines.min() >= 0.9999 and len(set(mine["row_id"])) == 60
    assert asked == [{}, {}]  # build and add: the prestarted workers could serve the actors


@pytest.mark.slow
def test_an_interrupted_ray_build_resumes_from_its_complete_shards(
        photos: Path, local_bundle: Bundle, tmp_path: Path) -> None:
    """Ctrl-C after the first shard came back: the engine stops the cluster it started, the
    staging bundle keeps the complete shards, and the same command reuses them."""
    out = tmp_path / "resumed"
    reported: list[int] = []

    def interrupt_after_one_shard(source):
        def advance(n: int) -> None:
            reported.append(n)
            raise KeyboardInterrupt

        return advance

    with pytest.raises(KeyboardInterrupt):
        build(str(photos), out, engine="ray", on_source=interrupt_after_one_shard)
    staging = out.with_name(f".{out.name}.partial")
    kept = list((staging / "embeddings").glob("part-*.rows.parquet"))
    assert kept and not out.exists()
    result = build(str(photos), out, engine="ray")
    assert result.stats.reused >= reported[0] and result.stats.reused % 8 in (0, 62 % 8)
    assert result.stats.reused + result.stats.processed == 62
    assert_same(compare(local_bundle, Bundle.open(out)))


@pytest.mark.slow
def test_a_running_cluster_passes_the_join_check(ray_cluster) -> None:
    import ray

    from embed.ray_cluster import check_answers

    started = time.perf_counter()
    check_answers(ray.get_runtime_context().gcs_address, timeout=5)
    assert time.perf_counter() - started < 5


@pytest.mark.slow
def test_ray_build_equals_the_local_build(ray_cluster, photos: Path, local_bundle: Bundle,
                                          tmp_path: Path) -> None:
    result = build(str(photos), tmp_path / "ray", engine="ray")
    bundle = Bundle.open(result.bundle)
    report = compare(local_bundle, bundle)
    print("\nequality, local vs ray:", report)
    assert_same(report)
    assert result.stats.embedded == 60 and result.stats.skipped == 3
    manifest = bundle.manifest.model_dump()
    engine = manifest["embeddings"]["engine"]
    assert engine["name"] == "ray" and engine["workers"] == 2 and engine["nodes"] == 1
    # Ray's actor pool decides which actor takes which shard: under load one actor may take
    # them all, so the test asserts what is certain: every item was embedded by some worker
    assert 1 <= len(engine["per_worker"]) <= 2
    assert all(w["images_per_second"] > 0 and w["runtime"] == "litert"
               for w in engine["per_worker"])
    assert sum(w["items"] for w in engine["per_worker"]) == 62  # notes.txt is no item
    runtime = manifest["backbone"]["runtime"]
    # checked once, on the driver, before the workers started; they ran the checked file
    assert runtime["name"] == "litert" and runtime["parity"]["passed"]
    # (or its verdict was cached beside the model by the local build of the same backbone)
    fixed = set(manifest["embeddings"]["fixed_seconds"])
    assert "start-up" in fixed and ("parity" in fixed or runtime["parity"].get("cached"))
    assert manifest["backbone"]["serving_model"] == "backbone/model.tflite"
    shards = manifest["embeddings"]["shards"]
    assert [s["first_row_id"] for s in shards] == list(range(0, 62, 8))  # fixed item ranges
    assert not (bundle.root / ".ray-inputs").exists()


@pytest.mark.slow
def test_a_worker_killed_mid_run_is_retried(ray_cluster, photos: Path, local_bundle: Bundle,
                                            tmp_path: Path) -> None:
    pids = ray_cluster
    out = tmp_path / "killed"
    embeddings = out.with_name(f".{out.name}.partial") / "embeddings"
    outcome: dict = {}

    def run() -> None:
        try:
            # many small shards, so plenty of work is left when the first one is done and a
            # killed actor is always replaced before the job ends
            outcome["result"] = build(str(photos), out, engine="ray", backbone=PIDS_BACKBONE,
                                      batch_size=1, rows_per_shard=2)
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 600
    while time.time() < deadline and thread.is_alive():
        done = list(embeddings.glob("part-*.rows.parquet")) if embeddings.is_dir() else []
        if done and list(pids.iterdir()):
            break
        time.sleep(0.02)
    victim = min(pids.iterdir(), key=lambda p: p.stat().st_mtime)
    shards_at_kill = len(list(embeddings.glob("part-*.rows.parquet")))
    os.kill(int(victim.name), signal.SIGKILL)
    thread.join(600)
    assert "error" not in outcome, outcome.get("error")
    bundle = Bundle.open(outcome["result"].bundle)
    engine = bundle.manifest.model_dump()["embeddings"]["engine"]
    workers = [w["worker"] for w in engine["per_worker"]]
    report = {**compare(local_bundle, bundle), "killed_pid": int(victim.name),
              "shards_done_at_kill": shards_at_kill, "shards": 31,
              "actors_started": len(list(pids.iterdir())), "workers_seen": workers}
    print("\nworker kill:", report)
    assert shards_at_kill < 31  # it died mid-run
    # Ray restarts the dead actor and retries its shard, on the new actor or another one of
    # the pool, whichever is free first: either way every shard is there, exactly once
    shards = bundle.manifest.embeddings.shards
    assert sorted(s.first_row_id for s in shards) == list(range(0, 62, 2))
    assert_same(report)  # the same seeded weights under another name: the same vectors


@pytest.mark.slow
def test_tfds_source_on_ray_equals_local(ray_cluster, tmp_path: Path) -> None:
    """tfds examples exist only on the driver: their bytes reach the workers in the per-shard
    input files."""
    from tests.test_sources import _mock_stanford_dogs

    with _mock_stanford_dogs(per_split=6):
        local = build("tfds:stanford_dogs", tmp_path / "local", rows_per_shard=4)
        remote = build("tfds:stanford_dogs", tmp_path / "ray", engine="ray", rows_per_shard=4)
    report = compare(Bundle.open(local.bundle), Bundle.open(remote.bundle))
    print("\ntfds, local vs ray:", report)
    assert_same(report)
    assert report["rows"] == 12 and remote.manifest.model_dump()["source"]["kind"] == "tfds"
    assert len(remote.manifest.model_dump()["embeddings"]["shards"]) == 3


def int8_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loose int8 task bounds: the tiny random backbone is no dog expert (the driver, this
    process, is the only place int8 is judged)."""
    monkeypatch.setattr("embed.quantise.MAX_TOP1_DROP", 1.0)
    monkeypatch.setattr("embed.quantise.MIN_OVERLAP", 0.0)


@pytest.mark.slow
def test_ray_int8_build_quantises_like_the_local_build(
        ray_cluster, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--engine ray --runtime litert-int8`: the driver calibrates and judges int8 once, and
    the workers run the calibrated int8 `.tflite`, so the bundle equals a local int8 build."""
    from embed.atomic import file_sha256

    int8_bounds(monkeypatch)
    local = Bundle.open(build(str(photos), tmp_path / "local", runtime="litert-int8").bundle)
    remote = Bundle.open(build(str(photos), tmp_path / "ray", engine="ray",
                               runtime="litert-int8").bundle)
    report = compare(local, remote)
    print("\nint8, local vs ray:", report)
    assert_same(report)
    assert report["min_cosine"] >= 0.99999, report  # the same int8 file ran
    backbone = remote.manifest.model_dump()["backbone"]
    runtime = backbone["runtime"]
    print("ray + int8 backbone:", json.dumps(backbone, indent=1))
    assert runtime["name"] == "litert-int8" and runtime["precision"] == "int8"
    assert runtime["int8"]["passed"] is True and runtime["int8"]["calibration"]["rows"]
    def verdict(figures: dict) -> dict:  # the second build reuses the cached model and verdict
        return {k: v for k, v in figures.items() if k not in ("converted", "check_cached")}

    assert verdict(runtime["int8"]) == verdict(local.manifest.backbone.runtime.get("int8"))
    served = remote.inside(backbone["serving_model"])
    assert file_sha256(served) == file_sha256(runtime["cache_file"])
    assert "-int8-" in Path(runtime["cache_file"]).name
    workers = remote.manifest.model_dump()["embeddings"]["engine"]["per_worker"]
    assert workers and {w["runtime"] for w in workers} == {"litert-int8"}
    fixed = set(remote.manifest.embeddings.get("fixed_seconds"))
    assert "int8 check" in fixed and ("parity" in fixed or runtime["parity"].get("cached"))
    # float32 vectors differ from int8 ones by more than that (min cosine about 0.99992), so
    # the equality above says the workers ran the int8 model
    float_bundle = Bundle.open(build(str(photos), tmp_path / "float").bundle)
    assert compare(float_bundle, remote)["min_cosine"] < 0.99999


@pytest.mark.slow
def test_ray_add_to_an_int8_bundle_runs_its_own_tflite(
        ray_cluster, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`add --engine ray` on an int8 bundle: the workers run the bundle's int8 `.tflite`, so
    the added rows equal those of a local `add` (one bundle, one model)."""
    from embed.engines import make_engine
    from ui.workflows import add_to_bundle

    int8_bounds(monkeypatch)
    part = tmp_path / "part"
    shutil.copytree(photos, part)
    shutil.rmtree(part / "samoyed")
    base = build(str(part), tmp_path / "base", runtime="litert-int8").bundle
    assert Bundle.open(base).manifest.model_dump()["backbone"]["runtime"]["name"] == "litert-int8"
    shutil.copytree(base, tmp_path / "local")
    shutil.copytree(base, tmp_path / "ray")
    add_to_bundle(tmp_path / "local", str(photos), batch_size=4)
    stats = add_to_bundle(tmp_path / "ray", str(photos), batch_size=4,
                          engine=make_engine("ray", workers=2))
    assert stats.embedded == 20
    local, remote = Bundle.open(tmp_path / "local"), Bundle.open(tmp_path / "ray")
    report = compare(local, remote)
    print("\nint8 add, local vs ray:", report)
    assert report["rows"] == 60 and report["rows_equal"] and report["whole"], report
    assert report["min_cosine"] >= 0.99999, report
    workers = remote.manifest.model_dump()["embeddings"]["engine"]["per_worker"]
    assert workers and {w["runtime"] for w in workers} == {"litert-int8"}
    assert remote.manifest.model_dump()["backbone"]["runtime"]["name"] == "litert-int8"
