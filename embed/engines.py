"""Embedding engines: where the embedding stage of a build or an `add` runs.

Both run the same reader -> mapper -> writer over the same items and write the same
self-describing shards (`embed.shards`); the driver merges them and the rest of the build
(index, heads) does not know which engine ran.

- `local`: this process, with every usable core (`embed.build`).
- `ray`: a Ray Data actor pool on a local or remote Ray cluster (`embed.ray_engine`; Ray is
  an optional extra and is imported only there, only when asked for).

An engine is a context manager (the Ray engine starts or joins its cluster lazily and leaves
it on exit) with three calls the build steps use: `resume_key`, `embed_source_into`,
`append_source`.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Protocol

from embed.build import (
    EmbedStats,
    ProgressCallback,
    append_source,
    embed_source_into,
    resume_key,
)
from embed.bundle import Bundle
from embed.embedder import Embedder, save_serving_model
from embed.environment import cpu_cores
from embed.errors import EngineError
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.sources import Source

ENGINE_CHOICES = ("local", "ray")
DEFAULT_ENGINE = "local"


class Engine(Protocol):
    name: str

    def __enter__(self) -> Engine: ...

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...

    def resume_key(self, source: Source, embedder: Embedder, runtime: str,
                   rows_per_shard: int) -> dict[str, Any]:
        """What must match for an interrupted build's shards to be reused."""
        ...

    def embed_source_into(self, bundle: Bundle, source: Source, embedder: Embedder,
                          batch_size: int, rows_per_shard: int,
                          on_progress: ProgressCallback | None = None) -> EmbedStats:
        """Embed every item into shards, write metadata and skipped rows, record the
        manifest's counts and embeddings, and leave the serving model in the bundle."""
        ...

    def append_source(self, bundle: Bundle, source: Source, embedder: Embedder,
                      batch_size: int = DEFAULT_BATCH_SIZE,
                      on_progress: ProgressCallback | None = None) -> EmbedStats:
        """Embed the items the bundle does not hold yet as new shards after the old ones."""
        ...


class LocalEngine:
    """The embedding stage in this process (`embed.build`)."""

    name = "local"

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def resume_key(self, source: Source, embedder: Embedder, runtime: str,
                   rows_per_shard: int) -> dict[str, Any]:
        return resume_key(source, embedder, runtime, rows_per_shard)

    def embed_source_into(self, bundle: Bundle, source: Source, embedder: Embedder,
                          batch_size: int, rows_per_shard: int,
                          on_progress: ProgressCallback | None = None) -> EmbedStats:
        cpu = time.process_time()
        stats = embed_source_into(bundle, source, embedder, batch_size, rows_per_shard,
                                  on_progress)
        cpu = time.process_time() - cpu  # every thread: decoding, LiteRT, the writer
        save_serving_model(embedder, bundle)  # after the parity check passed on batch one
        embeddings = bundle.manifest.embeddings.model_dump()
        embeddings["engine"] = {"name": self.name, "workers": 1, "cluster_cpus": cpu_cores(),
                                "images_per_second": round(stats.images_per_second, 2),
                                "cpu_seconds": round(cpu, 3)}
        bundle.update_manifest(embeddings=embeddings)
        return stats

    def append_source(self, bundle: Bundle, source: Source, embedder: Embedder,
                      batch_size: int = DEFAULT_BATCH_SIZE,
                      on_progress: ProgressCallback | None = None) -> EmbedStats:
        return append_source(bundle, source, embedder, batch_size, on_progress)


def make_engine(name: str = DEFAULT_ENGINE, address: str | None = None,
                workers: int | None = None) -> Engine:
    """The named engine; `ray` checks at once that Ray is installed (before any model loads)."""
    if name == "local":
        if address is not None or workers is not None:
            raise EngineError("--ray-address and --workers apply to --engine ray only")
        return LocalEngine()
    if name == "ray":
        from embed.ray_engine import RayEngine, RayOptions

        return RayEngine(RayOptions(address, workers))
    raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINE_CHOICES)}")
