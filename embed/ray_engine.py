"""The Ray Data engine: the local reader -> mapper -> writer, run by an actor pool on a cluster.

How a build runs (`RayEngine.embed_source_into`):

1. On the driver, the one preparation every engine shares (`embed.build.prepare_runtime`):
   the parity check against Keras and, for int8, the calibration and the task check. The
   model that comes out of it (float32 or int8 `.tflite`, or Keras) is saved into the
   bundle as its serving model.
2. The plan is fixed before anything runs (`embed.ray_plan`): shard k covers the items
   [k*U, (k+1)*U), and each shard's items (with a tfds source's encoded images) are written
   to `.ray-inputs/part-NNNNN.parquet` inside the staging bundle.
3. A Ray Data pipeline over the shard list: `map_batches(ShardEmbedder, batch_size=1)` on an
   actor pool of `--workers` actors (`embed.ray_worker`). Each actor builds its embedder
   once from what the driver shipped: the bundle's own `.tflite`, run as it is without
   TensorFlow, or the bundle's own weights when Keras produces the vectors. Per shard it
   runs the local reader and mapper and writes the shard's two files straight into the
   bundle (a path every node sees: a shared filesystem), then returns the shard's manifest
   entry with its timings.
4. The driver sorts the entries by shard number, writes metadata.parquet and skipped.csv from
   the shards' rows files (row-id order = index order), and records the engine, the cluster
   and per-worker throughput in the manifest. Index and heads follow as locally.

`add` runs steps 2-4 with the bundle's own serving model: the rows it adds come from the
model its other rows came from.

Failures: Ray Data's actor pools restart a dead actor and retry its task (their defaults:
`max_restarts=-1`, `max_task_retries=-1`), and shard files are written atomically (the rows
file last), so a worker killed mid-shard leaves nothing that counts. A build that dies is
resumed by running it again: complete planned shards are kept (same items, same --workers).
Joining a cluster (`embed.ray_cluster`) refuses an address where nothing answers within
seconds, before Ray would retry for minutes.

Ray is imported only inside this module's functions: the core install and `--help` never
need it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from types import TracebackType
from typing import Any

from embed.build import (
    EmbedStats,
    ProgressCallback,
    new_items,
    prepare_runtime,
    record_append,
    record_build,
    resume_key,
)
from embed.bundle import Bundle
from embed.embedder import Embedder, save_serving_model
from embed.errors import BundleError, EngineError
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.ray_cluster import (
    Cluster,
    RayOptions,
    import_ray,
    local_threads,
    start_or_join,
)
from embed.ray_plan import (
    INPUTS_DIR,
    finished_shards,
    inputs_path,
    items_per_shard,
    plan_shards,
    write_inputs,
)
from embed.ray_worker import (
    ShardEmbedder,
    WorkerSpec,
    backbone_modules,
    env_for,
    per_worker,
    worker_env,
    worker_spec,
)
from embed.shards import clear_leftovers
from embed.sources import Source, encoded_images

log = logging.getLogger(__name__)


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

    def cluster(self, embedder: Embedder | None = None) -> Cluster:
        """Start or join the cluster (once) and size the actor pool. A local cluster is
        started with the actors' environment (`embedder`'s code paths), so that they need no
        runtime_env of their own and Ray hands them its prestarted workers."""
        if self._cluster is None:
            env = None
            if self.options.address is None:
                modules = backbone_modules(embedder) if embedder is not None else ()
                env = env_for(local_threads(self.options), modules)
            self._cluster, self._started = start_or_join(self.options, env)
        return self._cluster

    def items_per_shard(self, items: int, rows_per_shard: int,
                        embedder: Embedder | None = None) -> int:
        return items_per_shard(items, self.cluster(embedder).workers, rows_per_shard)

    # ---- the engine's calls ---------------------------------------------------------------
    def resume_key(self, source: Source, embedder: Embedder, runtime: str,
                   rows_per_shard: int) -> dict[str, Any]:
        """The local key plus the plan: a rerun reuses shards only of the same plan."""
        return {**resume_key(source, embedder, runtime, rows_per_shard), "engine": self.name,
                "items_per_shard": self.items_per_shard(len(source.items), rows_per_shard,
                                                         embedder)}

    def embed_source_into(self, bundle: Bundle, source: Source, embedder: Embedder,
                          batch_size: int, rows_per_shard: int,
                          on_progress: ProgressCallback | None = None) -> EmbedStats:
        cluster = self.cluster(embedder)
        fixed = prepare_runtime(source, embedder, batch_size)  # once, here on the driver
        save_serving_model(embedder, bundle)  # the model it decided on: the workers run it
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
        check_workers(spec, engine["per_worker"])
        stats = record_build(bundle, source, embedder, shards, seconds, reused,
                             len(source.items) - reused, rows_per_shard, fixed,
                             items_per_shard=unit, engine=engine)
        if embedder.runtime.parity_pending:  # no readable first batch: the workers ran Keras
            record_keras(bundle, embedder)
        return stats

    def append_source(self, bundle: Bundle, source: Source, embedder: Embedder,
                      batch_size: int = DEFAULT_BATCH_SIZE,
                      on_progress: ProgressCallback | None = None) -> EmbedStats:
        cluster = self.cluster(embedder)
        items = new_items(bundle, source)
        prepare_runtime(source, embedder, batch_size, calibrate=False)  # as `add` locally
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
        engine = self.describe(list(results.values()), seconds)
        check_workers(spec, engine["per_worker"])
        return record_append(bundle, source, items, shards, seconds, engine=engine)

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
            **actor_env(cluster, worker_env(spec)),
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


def check_workers(spec: WorkerSpec, workers: list[dict[str, Any]]) -> None:
    """Every worker embedded with the runtime the driver shipped (they run its file as it
    is, so anything else is a broken deployment, not a choice)."""
    names = {w["runtime"] for w in workers}
    if names - {spec.runtime}:
        raise EngineError(f"Ray workers embedded with {', '.join(sorted(names))}, not with"
                          f" {spec.runtime} as the driver prepared; check that every node runs"
                          " this version of embed-dogs")


def record_keras(bundle: Bundle, embedder: Embedder) -> None:
    """The runtime record when the workers ran Keras because LiteRT was never checked (no
    readable image among the first ones the preparation looked at)."""
    identity = embedder.identity()
    runtime = {**identity["runtime"], "name": "keras", "fallback_reason":
               "LiteRT was not checked against Keras before the workers started (no readable"
               " image among the first ones), so the workers ran Keras"}
    bundle.update_manifest(backbone={**identity, "runtime": runtime})


def actor_env(cluster: Cluster, env: dict[str, str]) -> dict[str, Any]:
    """The actors' `runtime_env`, only where their workers do not already have `env`: a
    runtime_env of their own keeps Ray from handing them its prestarted idle workers."""
    if dict(cluster.inherited_env) == env:
        return {}
    return {"runtime_env": {"env_vars": env}}
