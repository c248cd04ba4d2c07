"""The Ray engine's worker side: what an actor needs (`WorkerSpec`), the actor itself
(`ShardEmbedder`), and one shard's work through the local reader, mapper and writer.

The driver prepares the runtime once (`embed.build.prepare_runtime`: parity, int8
calibration and task check) and ships the model that came out of it: the bundle's own
`.tflite` (float32 or int8, as decided), run as it is by `BundledLiteRTRuntime` without
TensorFlow, or, when Keras produces the vectors, the bundle's own weights. Every worker
therefore embeds with the very model the bundle serves. Ray itself is not imported here.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path, atomic_save_npy, file_sha256
from embed.backbones import get_backbone
from embed.build import batch_rows
from embed.bundle import Bundle
from embed.embedder import Embedder, load_embedder
from embed.errors import BundleError
from embed.litert_model import BundledLiteRTRuntime
from embed.ray_plan import INPUTS_DIR, read_inputs
from embed.shards import shard_entry, write_rows


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to build its embedder and write shards: small and picklable (the
    embedder itself is not). Everything comes from the bundle, so every node embeds with the
    very model the driver prepared and the bundle serves."""

    bundle: str  # the (staging) bundle's absolute path, on a filesystem every node sees
    backbone: str
    image_size: int
    dim: int
    weights_file: str  # the bundle's own copy of the backbone weights
    weights_sha256: str
    model_file: str | None  # the `.tflite` to run as it is; None: Keras from weights_file
    model_sha256: str | None
    runtime: str  # the runtime that produces the vectors ("keras", "litert", "litert-int8")
    parity: dict[str, Any] | None  # the driver's check of model_file against Keras
    batch_size: int
    source_root: str | None  # folder sources: paths are stored relative to it
    modules: tuple[str, ...] = ()  # modules that register a custom backbone, imported first
    threads: int = 1

    def build(self) -> Embedder:
        """The actor's embedder: the shipped `.tflite` (no TensorFlow), else Keras."""
        for name in self.modules:
            importlib.import_module(name)
        if self.model_file is None:
            embedder = load_embedder(self.backbone, self.weights_file, self.image_size, "keras")
            if embedder.weights_hash != self.weights_sha256:
                raise BundleError(f"the backbone weights in {self.weights_file} are not the"
                                  " ones the build started with")
            return embedder
        if file_sha256(self.model_file) != self.model_sha256:
            raise BundleError(f"the model {self.model_file} is not the one the driver"
                              " prepared")
        runtime = BundledLiteRTRuntime(self.model_file, parity=self.parity,
                                       num_threads=self.threads, name=self.runtime)
        return Embedder(get_backbone(self.backbone), self.image_size, self.weights_file, None,
                        runtime, self.weights_sha256, dim=self.dim)


def shipped_model(bundle: Bundle, embedder: Embedder) -> Path | None:
    """The `.tflite` the workers run: the bundle's own serving model (a build saves it once
    the runtime is prepared; `add` embeds with it), else the driver's checked model
    (`Runtime.model_file`) copied into the bundle's inputs folder; None when Keras produces
    the vectors."""
    if embedder.serving_model:
        return bundle.inside(embedder.serving_model)
    source = embedder.runtime.model_file
    if source is None:
        return None
    path = bundle.root / INPUTS_DIR / "model.tflite"
    with atomic_path(path, suffix=".tflite") as tmp:
        shutil.copyfile(source, tmp)
    return path


def worker_spec(bundle: Bundle, embedder: Embedder, batch_size: int, threads: int) -> WorkerSpec:
    """The spec of a prepared embedder whose weights (and model file, when LiteRT produces
    the vectors) are in `bundle` (`save_serving_weights`, `save_serving_model`, or an
    existing bundle's own)."""
    if not embedder.weights_file:
        raise BundleError(f"bundle {bundle.root} carries no backbone weights for the workers")
    model = shipped_model(bundle, embedder)
    runtime = embedder.runtime
    root = bundle.source_root
    return WorkerSpec(
        bundle=str(bundle.root.resolve()),
        backbone=embedder.spec.name,
        image_size=embedder.image_size,
        dim=embedder.dim,
        weights_file=str(bundle.inside(embedder.weights_file)),
        weights_sha256=embedder.weights_hash,
        model_file=str(model) if model is not None else None,
        model_sha256=file_sha256(model) if model is not None else None,
        runtime=runtime.name if model is not None else "keras",
        parity=runtime.parity if model is not None else None,
        batch_size=batch_size,
        source_root=str(root) if root is not None else None,
        modules=backbone_modules(embedder),
        threads=threads,
    )


def backbone_modules(embedder: Embedder) -> tuple[str, ...]:
    """The module that registers a custom backbone (the workers import it first), if any."""
    builder = embedder.spec.custom_builder
    module = getattr(builder, "__module__", "") if builder is not None else ""
    return (module,) if module and not module.startswith("embed.") else ()


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
    return env_for(spec.threads, spec.modules)


def env_for(threads: int, modules: tuple[str, ...] = ()) -> dict[str, str]:
    """`worker_env` from its two inputs: a local cluster is started with it before any spec
    exists (embed.ray_cluster.start_or_join)."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(code_paths(modules) + inherited)),
        "EMBED_DOGS_LITERT_THREADS": str(threads),
        "EMBED_DOGS_DECODE_THREADS": str(threads),
        "TF_NUM_INTRAOP_THREADS": str(threads),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
    }


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
                self.calls == 1) else {}  # this process's first batch: the model warms up
            results.append(json.dumps({
                "shard": int(number), "entry": entry, "worker": self.worker, "node": self.node,
                "seconds": time.perf_counter() - started, "started": wall,
                "cpu_seconds": time.process_time() - cpu,  # every thread of the actor
                "init_seconds": self.init_seconds, "runtime": runtime.name,
                "fallback_reason": runtime.fallback_reason, **cold,
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
    first batch of its life, which pays its cold start) and runtime."""
    workers: dict[str, dict[str, Any]] = {}
    cold: dict[str, tuple[float, int]] = {}
    for r in sorted(results, key=lambda r: r["started"]):
        if "cold_seconds" in r:
            cold[r["worker"]] = (float(r["cold_seconds"]), int(r["cold_items"]))
        w = workers.setdefault(r["worker"], {
            "worker": r["worker"], "node": r["node"], "shards": 0, "items": 0,
            "busy_seconds": 0.0, "cpu_seconds": 0.0,
            "init_seconds": round(r["init_seconds"], 2),
            "runtime": r["runtime"], "fallback_reason": r.get("fallback_reason")})
        w["shards"] += 1
        w["peak_rss_mb"] = max(w.get("peak_rss_mb", 0.0), float(r.get("peak_rss_mb", 0.0)))
        w["items"] += int(r["entry"]["items"])
        w["busy_seconds"] += float(r["seconds"])
        w["cpu_seconds"] += float(r.get("cpu_seconds", 0.0))
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
