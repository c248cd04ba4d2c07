"""Embedding a whole source into a bundle: shards, metadata.parquet and skipped.csv.

The writer side of reader -> mapper -> writer. It continues an interrupted build from its
last complete shard (see `embed.shards`), and records what it wrote in the manifest.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed.bundle import BACKBONE_IDENTITY, SCHEMA_VERSION, Bundle
from embed.embedder import Embedder
from embed.pipeline import DEFAULT_BATCH_SIZE, ImageBatch
from embed.shards import ShardWriter, complete_shards, merged_tables
from embed.sources import ImageItem, Source, encoded_images

ProgressCallback = Callable[[int], None]  # called with the number of items just processed
DEFAULT_ROWS_PER_SHARD = 4096


@dataclass
class EmbedStats:
    embedded: int
    skipped: int
    seconds: float
    shards: int
    reused: int = 0  # items an interrupted build had already done
    processed: int = 0  # items read in this run

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def stored_ref(source: Source, item: ImageItem) -> str:
    """How the bundle records an item: relative to the source root for folders, so a bundle
    and its photos can move together; tfds references as they are."""
    if source.kind != "folder":
        return item.ref
    return Path(item.ref).relative_to(source.location).as_posix()


def batch_rows(source: Source, items: dict[int, ImageItem], batch: ImageBatch
               ) -> list[dict[str, Any]]:
    """One row dict per item of a reader batch, in order (reason "" when embedded)."""
    rows = []
    for i, row_id in enumerate(batch.row_ids.tolist()):
        item = items[row_id]
        ok = bool(batch.ok[i])
        rows.append({
            "row_id": row_id, "path": stored_ref(source, item), "label": item.label,
            "split": item.split, "sha256": batch.sha256[i],
            "width": int(batch.widths[i]) if ok else 0,
            "height": int(batch.heights[i]) if ok else 0,
            "reason": "" if ok else batch.reasons[i],
        })
    return rows


def resume_key(source: Source, embedder: Embedder, runtime: str,
               rows_per_shard: int) -> dict[str, Any]:
    """What must match for an interrupted build's shards to be reused: the same items in the
    same order, the same backbone and weights, runtime and shard size."""
    items = hashlib.sha256()
    for item in source.items:
        items.update(f"{item.row_id}\t{item.ref}\t{item.label}\t{item.split}\n".encode())
    identity = embedder.identity()
    return {
        "schema_version": SCHEMA_VERSION, "source": source.location,
        "items_sha256": items.hexdigest(), "runtime": runtime,
        "backbone": {k: identity.get(k) for k in BACKBONE_IDENTITY},
        "rows_per_shard": rows_per_shard,
    }


def embed_source_into(
    bundle: Bundle,
    source: Source,
    embedder: Embedder,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    on_progress: ProgressCallback | None = None,
) -> EmbedStats:
    """Run reader -> mapper -> writer over every item not yet in a complete shard; bad files
    go to skipped.csv. Records counts, shards, files and the runtime's parity figures."""
    import pandas as pd

    done = complete_shards(bundle, embedder.dim)
    watermark = max((s["last_row_id"] for s in done if s["last_row_id"] is not None),
                    default=-1)
    todo = [item for item in source.items if item.row_id > watermark]
    reused = len(source.items) - len(todo)
    if on_progress and reused:
        on_progress(reused)
    items_by_id = {item.row_id: item for item in todo}
    writer = ShardWriter(bundle, embedder.dim, rows_per_shard, shards=done)
    encoded = encoded_images(source).skip(reused) if source.kind == "tfds" else None
    start = time.perf_counter()
    for step in embedder.embedded_batches(todo, batch_size, encoded):
        writer.add(batch_rows(source, items_by_id, step.batch), step.vectors)
        if on_progress:
            on_progress(len(step.batch.row_ids))
    shards = writer.close()
    seconds = time.perf_counter() - start

    metadata, skipped = merged_tables(bundle, shards)
    rejected = pd.DataFrame(  # folder entries that never became items have no row id
        [{"row_id": None, "path": r.path, "reason": r.reason} for r in source.rejected],
        columns=list(skipped.columns))
    skipped = pd.concat([skipped, rejected], ignore_index=True) if len(rejected) else skipped
    bundle.write_metadata(metadata)
    bundle.write_skipped(skipped)
    stats = EmbedStats(len(metadata), len(skipped), seconds, len(shards), reused, len(todo))
    bundle.update_manifest(
        backbone=embedder.identity(),  # the runtime now records its parity figures
        counts={"images": len(source.items), "embedded": stats.embedded,
                "skipped": stats.skipped},
        embeddings={"shards": shards, "rows_per_shard": rows_per_shard, "dtype": "float32",
                    "normalised": "l2", "images_per_second": round(stats.images_per_second, 2),
                    "reused_items": reused},
    )
    files = [bundle.metadata_path, bundle.skipped_path]
    for entry in shards:
        files += [bundle.inside(entry["file"]), bundle.inside(entry["rows_file"])]
    bundle.record_files(*files)
    return stats
