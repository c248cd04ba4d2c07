"""The Ray Data engine: the local reader -> mapper -> writer, run by an actor pool on a cluster.

How a build runs (`RayEngine.embed_source_into`):

1. The plan is fixed before anything runs. Row ids are the source's; shard k covers the
   items [k*U, (k+1)*U) (U = `items_per_shard`), so it holds up to U embedded rows, and the
   items that cannot be used travel in its rows file with their reason, as locally. Which
   worker embeds which shard, and when, changes nothing in the result.
2. The driver writes each planned shard's items to `.ray-inputs/part-NNNNN.parquet` inside
   the staging bundle: row id, reference, label, split and, for a tfds source, the encoded
   image bytes (tfds examples are read on the driver only; the workers read folder photos
   themselves, by path).
3. A Ray Data pipeline over the shard list: `map_batches(ShardEmbedder, batch_size=1)` on an
   actor pool of `--workers` actors. Each actor builds its embedder once, from the bundle's
   own weights file and, with LiteRT, the bundle's own `.tflite` (checked against Keras on the
   actor's first batch). Per shard it runs the local reader and mapper (decode, resize,
   preprocess, embed: the very code of the local engine) and writes the shard's two files
   straight into the bundle (a path every node sees: a shared filesystem), then returns the
   shard's manifest entry with its timings.
4. The driver sorts the entries by shard number, writes metadata.parquet and skipped.csv from
   the shards' rows files (row-id order = index order), and records the engine, the cluster,
   and per-worker parity and throughput in the manifest. Index and heads follow as locally.

Failures: Ray Data's actor pools restart a dead actor and retry its task (their defaults:
`max_restarts=-1`, `max_task_retries=-1`), and shard files are written atomically (the rows
file last), so a worker killed mid-shard leaves nothing that counts. A build that dies is
resumed by running it again: complete planned shards are kept (same items, same --workers).

Ray is imported only inside this module's functions: the core install and `--help` never
need it.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from embed.atomic import atomic_path, atomic_save_npy
from embed.build import (
    EmbedStats,
    ProgressCallback,
    batch_rows,
    new_items,
    record_append,
    record_build,
    resume_key,
)
from embed.bundle import SERVING_MODEL, Bundle
from embed.embedder import Embedder, load_embedder, save_serving_model
from embed.environment import VERBOSE_ENV, cpu_cores
from embed.errors import BundleError, EngineError
from embed.litert_runtime import LiteRTRuntime
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.shards import clear_leftovers, shard_entry, whole_shard, write_rows
from embed.sources import ImageItem, Source, encoded_images

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "embed-dogs[ray]" (or pip install "ray[data]>=2.40")'
INPUTS_DIR = ".ray-inputs"  # per-shard item lists inside the staging bundle, removed after
# Default actor size. Measured on 2 cores (benchmarks/ray_scaling.py, 1800 photos): two
# 1-core actors embed faster than one 2-core actor (and than the local engine), at the cost of
# a model per core in memory (peak RSS per worker is in the manifest).
CORES_PER_WORKER = 1
SHARDS_PER_WORKER = 2  # planned shards per worker: balance against each shard's start-up
MIN_SHARD_ITEMS = 64  # each shard starts a reader (a few tenths of a second): not too small


def import_ray() -> Any:
    """The `ray` module with Ray Data, or an EngineError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}"
                          ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where to run: `address` None starts a local cluster on this machine's usable cores;
    "auto" or "HOST:PORT" joins a running one. `workers` actors (None: one per
    CORES_PER_WORKER cores of the cluster)."""

    address: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class Cluster:
    address: str  # as asked: "local", "auto" or HOST:PORT
    gcs_address: str | None  # the cluster's own address, as Ray reports it
    nodes: int
    cpus: int
    workers: int
    cpus_per_worker: float
    threads: int  # LiteRT and decode threads per actor


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to build its embedder and write shards: small and picklable (the
    embedder itself is not). Everything comes from the bundle, so every node embeds with the
    very weights and `.tflite` the bundle serves with."""

    bundle: str  # the (staging) bundle's absolute path, on a filesystem every node sees
    backbone: str
    image_size: int
    weights_file: str  # the bundle's own copy of the backbone weights
    weights_sha256: str
    serving_model: str | None  # the bundle's LiteRT model (checked against Keras), or Keras
    requested_runtime: str
    batch_size: int
    source_root: str | None  # folder sources: paths are stored relative to it
    modules: tuple[str, ...] = ()  # modules that register a custom backbone, imported first
    threads: int = 1

    def build(self) -> Embedder:
        for name in self.modules:
            importlib.import_module(name)
        embedder = load_embedder(self.backbone, self.weights_file, self.image_size, "keras")
        if embedder.weights_hash != self.weights_sha256:
            raise BundleError(f"the backbone weights in {self.weights_file} are not the ones"
                              " the build started with")
        if self.serving_model:
            embedder.runtime = LiteRTRuntime(embedder.model, tflite_path=self.serving_model,
                                             num_threads=self.threads,
                                             requested=self.requested_runtime)
        return embedder


def worker_spec(bundle: Bundle, embedder: Embedder, batch_size: int, threads: int) -> WorkerSpec:
    """The spec of an embedder whose weights (and LiteRT model, when it runs one) are saved in
    `bundle` (`save_serving_weights`, `save_serving_model`, or an existing bundle's own)."""
    if not embedder.weights_file:
        raise BundleError(f"bundle {bundle.root} carries no backbone weights for the workers")
    litert = embedder.runtime.name == "litert" and embedder.serving_model
    described = embedder.runtime.describe()
    builder = embedder.spec.custom_builder
    module = getattr(builder, "__module__", "") if builder is not None else ""
    root = bundle.source_root
    return WorkerSpec(
        bundle=str(bundle.root.resolve()),
        backbone=embedder.spec.name,
        image_size=embedder.image_size,
        weights_file=str(bundle.inside(embedder.weights_file)),
        weights_sha256=embedder.weights_hash,
        serving_model=str(bundle.inside(embedder.serving_model)) if litert else None,
        requested_runtime=str(described.get("requested", embedder.runtime.name)),
        batch_size=batch_size,
        source_root=str(root) if root is not None else None,
        modules=(module,) if module and not module.startswith("embed.") else (),
        threads=threads,
    )


def code_paths(modules: tuple[str, ...]) -> list[str]:
    """The folders this driver imports `embed` (and the backbone's modules) from, so workers
    on this machine import the same code (a checkout, not only an installed copy)."""
    paths: list[str] = []
    for name in ("embed", *modules):
        module = sys.modules.get(name) or importlib.import_module(name)
        file = Path(str(module.__file__)).resolve()
        root = file.parent
        for _ in range(name.count(".") + (file.name == "__init__.py")):
            root = root.parent
        if str(root) not in paths:
            paths.append(str(root))
    return paths


def worker_env(spec: WorkerSpec) -> dict[str, str]:
    """Environment of the actors: the driver's code first on the path, and thread counts that
    fit the actor's share of the cores (LiteRT, decoding, TensorFlow)."""
    threads = str(spec.threads)
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(code_paths(spec.modules) + inherited)),
        "EMBED_DOGS_LITERT_THREADS": threads,
        "EMBED_DOGS_DECODE_THREADS": threads,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


# ---- the plan: fixed before the pipeline runs --------------------------------------------
def items_per_shard(items: int, workers: int, rows_per_shard: int) -> int:
    """Items per planned shard: about SHARDS_PER_WORKER shards per worker, at least
    MIN_SHARD_ITEMS, at most the bundle's rows per shard."""
    wanted = math.ceil(items / max(1, workers * SHARDS_PER_WORKER))
    return max(1, min(rows_per_shard, max(MIN_SHARD_ITEMS, wanted)))


def plan_shards(items: list[ImageItem], unit: int, first: int = 0
                ) -> list[tuple[int, list[ImageItem]]]:
    """(shard number, items) for consecutive slices of `unit` items, numbered from `first`."""
    return [(first + k, items[start:start + unit])
            for k, start in enumerate(range(0, len(items), unit))]


def finished_shards(bundle: Bundle, plan: list[tuple[int, list[ImageItem]]], dim: int
                    ) -> dict[int, dict[str, Any]]:
    """The planned shards an interrupted run completed (in any order): both files there, the
    rows file listing exactly the planned items, one vector per usable row."""
    done: dict[int, dict[str, Any]] = {}
    for number, items in plan:
        entry = whole_shard(bundle, number, dim, [item.row_id for item in items])
        if entry is not None:
            done[number] = entry
    return done


def inputs_path(bundle: Bundle, number: int) -> Path:
    return bundle.root / INPUTS_DIR / f"part-{number:05d}.parquet"


def write_inputs(bundle: Bundle, todo: list[tuple[int, list[ImageItem]]],
                 encoded: Any = None, skip: set[int] | None = None) -> None:
    """Each shard's items as a parquet file the workers read. `encoded`: a tfds source's
    tf.data dataset of encoded images in item order, over every planned shard including the
    `skip`ped (finished) ones; their bytes travel in the files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = encoded.as_numpy_iterator() if encoded is not None else None
    for number, items in todo:
        columns: dict[str, Any] = {
            "row_id": pa.array([item.row_id for item in items], pa.int64()),
            "ref": [item.ref for item in items],
            "label": pa.array([item.label for item in items], pa.string()),
            "split": [item.split for item in items],
        }
        if images is not None:
            columns["image"] = pa.array([next(images) for _ in items], pa.binary())
        if skip and number in skip:
            continue
        with atomic_path(inputs_path(bundle, number)) as tmp:
            pq.write_table(pa.table(columns), tmp)


def read_inputs(path: str) -> tuple[list[ImageItem], list[bytes] | None]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).to_pydict()
    items = [ImageItem(int(row_id), ref, label, split) for row_id, ref, label, split in zip(
        table["row_id"], table["ref"], table["label"], table["split"], strict=True)]
    return items, table.get("image")


def embed_shard(bundle: Bundle, number: int, path: str, embedder: Embedder, batch_size: int,
                source_root: str | None) -> tuple[dict[str, Any], float, int]:
    """One planned shard through the local reader and mapper into its two files (rows last);
    returns its manifest entry, and the seconds and items of its first batch."""
    items, images = read_inputs(path)
    encoded = None
    if images is not None:
        import tensorflow as tf

        encoded = tf.data.Dataset.from_tensor_slices(tf.constant(images, tf.string))
    root = Path(source_root) if source_root else None
    by_id = {item.row_id: item for item in items}
    rows: list[dict[str, Any]] = []
    vectors: list[np.ndarray] = []
    started, first = time.perf_counter(), (0.0, 0)
    for step in embedder.embedded_batches(items, batch_size, encoded):
        if not rows:
            first = (time.perf_counter() - started, len(step.batch.row_ids))
        rows += batch_rows(root, by_id, step.batch)
        if len(step.vectors):
            vectors.append(step.vectors)
    block = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), np.float32)
    atomic_save_npy(bundle.shard_path(number), np.ascontiguousarray(block, np.float32))
    write_rows(bundle.shard_rows_path(number), rows)  # last: the shard is complete
    return shard_entry(bundle, number, rows, len(block)), *first


class ShardEmbedder:
    """The actor: builds its embedder once, then embeds and writes one shard per call."""

    def __init__(self, spec: WorkerSpec) -> None:
        started = time.perf_counter()
        self.spec = spec
        self.bundle = Bundle(spec.bundle)
        self.embedder = spec.build()
        self.node = socket.gethostname()
        self.worker = f"{self.node}:{os.getpid()}"
        self.init_seconds = time.perf_counter() - started
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for number, path in zip(batch["shard"], batch["inputs"], strict=True):
            started, wall, cpu = time.perf_counter(), time.time(), time.process_time()
            entry, first_seconds, first_items = embed_shard(
                self.bundle, int(number), str(path), self.embedder, self.spec.batch_size,
                self.spec.source_root)
            runtime = self.embedder.runtime
            self.calls += 1
            cold = {"cold_seconds": first_seconds, "cold_items": first_items} if (
                self.calls == 1) else {}  # this process's first batch: TensorFlow warms up
            results.append(json.dumps({
                "shard": int(number), "entry": entry, "worker": self.worker, "node": self.node,
                "seconds": time.perf_counter() - started, "started": wall,
                "cpu_seconds": time.process_time() - cpu,  # every thread of the actor
                "init_seconds": self.init_seconds, "runtime": runtime.name,
                "parity": getattr(runtime, "parity_", None),
                "fallback_reason": getattr(runtime, "error_", None), **cold,
                "peak_rss_mb": peak_rss_mb(),
            }))
        return {"result": np.array(results, dtype=object)}


def peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB, macOS bytes)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)


def per_worker(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each actor did: shards, items, busy seconds, images/s (and once warm: without the
    first batch of its life, which pays TensorFlow's cold start and the parity check),
    runtime and parity."""
    workers: dict[str, dict[str, Any]] = {}
    cold: dict[str, tuple[float, int]] = {}
    for r in sorted(results, key=lambda r: r["started"]):
        if "cold_seconds" in r:
            cold[r["worker"]] = (float(r["cold_seconds"]), int(r["cold_items"]))
        w = workers.setdefault(r["worker"], {
            "worker": r["worker"], "node": r["node"], "shards": 0, "items": 0,
            "busy_seconds": 0.0, "cpu_seconds": 0.0,
            "init_seconds": round(r["init_seconds"], 2),
            "runtime": r["runtime"], "parity": r["parity"],
            "fallback_reason": r.get("fallback_reason")})
        w["shards"] += 1
        w["peak_rss_mb"] = max(w.get("peak_rss_mb", 0.0), float(r.get("peak_rss_mb", 0.0)))
        w["items"] += int(r["entry"]["items"])
        w["busy_seconds"] += float(r["seconds"])
        w["cpu_seconds"] += float(r.get("cpu_seconds", 0.0))
        if r["parity"] is not None:
            w["parity"] = r["parity"]
    for w in workers.values():
        w["busy_seconds"] = round(w["busy_seconds"], 3)
        w["cpu_seconds"] = round(w["cpu_seconds"], 3)
        w["images_per_second"] = round(w["items"] / w["busy_seconds"], 2) if (
            w["busy_seconds"] > 0) else 0.0
        seconds, items = cold.get(w["worker"], (0.0, 0))
        w["cold_start_seconds"] = round(seconds, 3)
        busy = w["busy_seconds"] - seconds
        w["warm_images_per_second"] = round((w["items"] - items) / busy, 2) if (
            busy > 0 and w["items"] > items) else None
    return list(workers.values())


def merged_parity(workers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Every worker's first-batch parity with Keras in one record (the weakest figures)."""
    checks = [w["parity"] for w in workers if w.get("parity")]
    if not checks:
        return None
    return {"mean_cosine": min(p["mean_cosine"] for p in checks),
            "min_cosine": min(p["min_cosine"] for p in checks),
            "passed": all(p["passed"] for p in checks),
            "rows": sum(int(p["rows"]) for p in checks), "workers": len(checks)}


class RayEngine:
    """The embedding stage as a Ray Data pipeline (see the module docstring).

    A context manager: the cluster is started (or joined) on first use and, when this engine
    started it, shut down on exit. A Ray session that is already initialised in this process
    is used as it is and left running.
    """

    name = "ray"

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()
        if self.options.workers is not None and self.options.workers < 1:
            raise EngineError("--workers must be at least 1")
        import_ray()  # refuse at once, before any model loads
        self._cluster: Cluster | None = None
        self._started = False
        self._driver_cpu = 0.0

    # ---- the cluster ----------------------------------------------------------------------
    def __enter__(self) -> RayEngine:
        if self.options.address is not None:
            self.cluster()  # joining fails fast, before any model loads
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False
            self._cluster = None

    def cluster(self) -> Cluster:
        """Start or join the cluster (once) and size the actor pool."""
        if self._cluster is not None:
            return self._cluster
        ray = import_ray()
        address = self.options.address
        verbose = bool(os.environ.get(VERBOSE_ENV))
        if not verbose:  # Ray Data's INFO lines and notices; errors still show
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        if not ray.is_initialized():
            log.info("starting a local Ray cluster" if address is None
                     else f"joining the Ray cluster at {address}")
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": logging.INFO if verbose else logging.ERROR,
                "log_to_driver": verbose,
            }
            try:
                if address is None:  # "local": a new cluster, even where `ray start` runs one
                    ray.init(address="local", num_cpus=cpu_cores(), **kwargs)
                else:
                    ray.init(address=address, **kwargs)
            except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError
                where = "start a local Ray cluster" if address is None else (
                    f"join a Ray cluster at {address}")
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                raise EngineError(f"could not {where} ({first}); start one with `ray start"
                                  " --head`, or leave out --ray-address for a local one"
                                  ) from None
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        workers = self.options.workers or max(1, cpus // CORES_PER_WORKER)
        share = cpus // workers if workers <= cpus else cpus / workers
        gcs = getattr(ray.get_runtime_context(), "gcs_address", None)
        self._cluster = Cluster(address or "local", gcs, nodes, cpus, workers, share,
                                max(1, int(share)))
        return self._cluster

    def items_per_shard(self, items: int, rows_per_shard: int) -> int:
        return items_per_shard(items, self.cluster().workers, rows_per_shard)

    # ---- the engine's calls ---------------------------------------------------------------
    def resume_key(self, source: Source, embedder: Embedder, runtime: str,
                   rows_per_shard: int) -> dict[str, Any]:
        """The local key plus the plan: a rerun reuses shards only of the same plan."""
        return {**resume_key(source, embedder, runtime, rows_per_shard), "engine": self.name,
                "items_per_shard": self.items_per_shard(len(source.items), rows_per_shard)}

    def embed_source_into(self, bundle: Bundle, source: Source, embedder: Embedder,
                          batch_size: int, rows_per_shard: int,
                          on_progress: ProgressCallback | None = None) -> EmbedStats:
        cluster = self.cluster()
        save_serving_model(embedder, bundle)  # the workers run this very file
        unit = self.items_per_shard(len(source.items), rows_per_shard)
        plan = plan_shards(source.items, unit)
        done = finished_shards(bundle, plan, embedder.dim)
        clear_leftovers(bundle, set(done))
        reused = sum(int(entry["items"]) for entry in done.values())
        if on_progress and reused:
            on_progress(reused)
        todo = [(number, items) for number, items in plan if number not in done]
        encoded = encoded_images(source) if source.kind == "tfds" and todo else None
        write_inputs(bundle, plan if encoded is not None else todo, encoded, set(done))
        spec = worker_spec(bundle, embedder, batch_size, cluster.threads)
        results, seconds = self._run(spec, bundle, [n for n, _ in todo], on_progress)
        entries = {**done, **{n: r["entry"] for n, r in results.items()}}
        shards = [entries[number] for number, _ in plan]
        clear_leftovers(bundle, set(entries))
        shutil.rmtree(bundle.root / INPUTS_DIR, ignore_errors=True)
        engine = self.describe(list(results.values()), seconds)
        stats = record_build(bundle, source, embedder, shards, seconds, reused,
                             len(source.items) - reused, rows_per_shard, items_per_shard=unit,
                             engine=engine)
        self._record_runtime(bundle, embedder, engine["per_worker"])
        return stats

    def append_source(self, bundle: Bundle, source: Source, embedder: Embedder,
                      batch_size: int = DEFAULT_BATCH_SIZE,
                      on_progress: ProgressCallback | None = None) -> EmbedStats:
        cluster = self.cluster()
        items = new_items(bundle, source)
        embeddings = bundle.manifest.embeddings.model_dump()
        old = list(embeddings["shards"])
        unit = self.items_per_shard(len(items), int(embeddings["rows_per_shard"]))
        plan = plan_shards(items, unit, first=len(old))
        if on_progress and len(source.items) > len(items):
            on_progress(len(source.items) - len(items))
        write_inputs(bundle, plan)
        spec = worker_spec(bundle, embedder, batch_size, cluster.threads)
        results, seconds = self._run(spec, bundle, [n for n, _ in plan], on_progress)
        shards = old + [results[number]["entry"] for number, _ in plan]
        clear_leftovers(bundle, set(range(len(shards))))
        shutil.rmtree(bundle.root / INPUTS_DIR, ignore_errors=True)
        return record_append(bundle, source, items, shards, seconds,
                             engine=self.describe(list(results.values()), seconds))

    # ---- the pipeline ---------------------------------------------------------------------
    def _run(self, spec: WorkerSpec, bundle: Bundle, numbers: list[int],
             on_progress: ProgressCallback | None) -> tuple[dict[int, dict[str, Any]], float]:
        """The shards `numbers` through the actor pool; their results by shard number, and
        the pipeline's wall time (actor start-up included)."""
        if not numbers:
            return {}, 0.0
        ray = import_ray()
        cluster = self.cluster()
        shards = [{"shard": n, "inputs": str(inputs_path(bundle, n))} for n in numbers]
        size = min(cluster.workers, len(shards))
        log.info("embedding %d shards on %d Ray workers (%s)", len(shards), size,
                 cluster.address)
        pipeline = ray.data.from_items(shards, override_num_blocks=len(shards)).map_batches(
            ShardEmbedder,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1),
            num_cpus=cluster.cpus_per_worker,
            runtime_env={"env_vars": worker_env(spec)},
        )
        results: dict[int, dict[str, Any]] = {}
        started, cpu = time.perf_counter(), time.process_time()
        try:
            for row in pipeline.iter_rows():
                result = json.loads(row["result"])
                results[int(result["shard"])] = result
                if on_progress:
                    on_progress(int(result["entry"]["items"]))
        except Exception as exc:
            if isinstance(exc, EngineError | BundleError):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
            raise EngineError(f"the Ray pipeline failed ({first}); rerun the same command to"
                              " continue from the shards already written") from exc
        missing = sorted(set(numbers) - set(results))
        if missing:
            raise EngineError(f"the Ray pipeline returned no result for shards {missing};"
                              " rerun the same command to continue")
        self._driver_cpu = time.process_time() - cpu
        return results, time.perf_counter() - started

    def describe(self, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
        """The manifest's record of the engine: the cluster's size, the pipeline's wall time
        (actor start-up included) and busy span (first shard started to last one written),
        and each worker's shards, images/s and parity."""
        cluster = self.cluster()
        items = sum(int(r["entry"]["items"]) for r in results)
        span = (max(r["started"] + r["seconds"] for r in results)
                - min(r["started"] for r in results)) if results else 0.0
        return {
            "name": self.name, "address": cluster.address,
            "cluster_address": cluster.gcs_address, "nodes": cluster.nodes,
            "cluster_cpus": cluster.cpus,
            "workers": min(cluster.workers, len(results)),  # never more actors than shards
            "cpus_per_worker": cluster.cpus_per_worker, "threads_per_worker": cluster.threads,
            "shards_run": len(results), "pipeline_seconds": round(seconds, 3),
            "images_per_second": round(items / seconds, 2) if seconds > 0 else 0.0,
            "busy_span_seconds": round(span, 3),
            "steady_images_per_second": round(items / span, 2) if span > 0 else 0.0,
            # CPU time of the workers' shards (all their threads) and of this driver meanwhile
            "cpu_seconds": round(sum(float(r.get("cpu_seconds", 0.0)) for r in results), 3),
            "driver_cpu_seconds": round(self._driver_cpu, 3),
            "per_worker": per_worker(results),
        }

    def _record_runtime(self, bundle: Bundle, embedder: Embedder,
                        workers: list[dict[str, Any]]) -> None:
        """The backbone's runtime record from the workers: LiteRT with every worker's parity,
        or Keras when every worker fell back (then the bundle serves with Keras too)."""
        identity = embedder.identity()
        runtime = dict(identity["runtime"])
        names = {w["runtime"] for w in workers}
        if len(names) > 1:
            raise EngineError(
                "some Ray workers embedded with LiteRT and some fell back to Keras (the LiteRT"
                " export disagrees with Keras on some images); rerun with --runtime keras")
        if names == {"keras"} and runtime.get("name") == "litert":
            reasons = {r for w in workers if (r := w.get("fallback_reason"))}
            runtime.update(name="keras", fallback_reason="; ".join(sorted(reasons)) or None)
            embedder.serving_model = None
            bundle.forget_files(SERVING_MODEL)
            (bundle.root / SERVING_MODEL).unlink(missing_ok=True)
            identity = embedder.identity()
        if names == {"litert"}:
            runtime["parity"] = merged_parity(workers)
        bundle.update_manifest(backbone={**identity, "runtime": runtime})
