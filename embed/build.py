"""Embedding a whole source into a bundle: shards, metadata.parquet and skipped.csv."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embed.bundle import (
    DEFAULT_ROWS_PER_SHARD,
    METADATA_COLUMNS,
    SKIPPED_COLUMNS,
    Bundle,
    ShardWriter,
)
from embed.embedder import Embedder
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.sources import Source, encoded_images

ProgressCallback = Callable[[int], None]  # called with the number of items just processed


@dataclass
class EmbedStats:
    embedded: int
    skipped: int
    seconds: float
    shards: int

    @property
    def images_per_second(self) -> float:
        return (self.embedded + self.skipped) / self.seconds if self.seconds > 0 else 0.0


def embed_source_into(
    bundle: Bundle,
    source: Source,
    embedder: Embedder,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    on_progress: ProgressCallback | None = None,
) -> EmbedStats:
    """Run reader -> mapper -> writer over every item; bad files go to skipped.csv.

    Records the counts, the shard layout and the runtime's parity figures in the manifest.
    """
    import pandas as pd

    items_by_id = {item.row_id: item for item in source.items}
    writer = ShardWriter(bundle, embedder.dim, rows_per_shard)
    meta: dict[str, list[Any]] = {c: [] for c in METADATA_COLUMNS}
    skipped: dict[str, list[Any]] = {c: [] for c in SKIPPED_COLUMNS}
    encoded = encoded_images(source) if source.kind == "tfds" else None
    start = time.perf_counter()
    for step in embedder.embedded_batches(source.items, batch_size, encoded):
        b = step.batch
        writer.add(step.vectors)
        for i, row_id in enumerate(b.row_ids.tolist()):
            item = items_by_id[row_id]
            if b.ok[i]:
                meta["row_id"].append(row_id)
                meta["path"].append(item.ref)
                meta["label"].append(item.label)
                meta["split"].append(item.split)
                meta["sha256"].append(b.sha256[i])
                meta["width"].append(int(b.widths[i]))
                meta["height"].append(int(b.heights[i]))
            else:
                skipped["row_id"].append(row_id)
                skipped["path"].append(item.ref)
                skipped["reason"].append(b.reasons[i])
        if on_progress:
            on_progress(len(b.row_ids))
    shards = writer.close()
    seconds = time.perf_counter() - start

    table = pd.DataFrame(meta).astype({"row_id": "int64", "width": "int32", "height": "int32"})
    bundle.write_metadata(table)
    bundle.write_skipped(pd.DataFrame(skipped))
    assert writer.rows == len(table), "every embedded row has exactly one metadata row"
    stats = EmbedStats(int(len(table)), len(skipped["row_id"]), seconds, shards)
    bundle.update_manifest(
        backbone=embedder.identity(),  # the runtime now records its parity figures
        counts={"images": len(source.items), "embedded": stats.embedded,
                "skipped": stats.skipped},
        embeddings={"shards": shards, "rows_per_shard": rows_per_shard, "dtype": "float32",
                    "normalised": "l2", "images_per_second": round(stats.images_per_second, 2)},
    )
    return stats
