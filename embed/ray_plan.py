"""The Ray engine's plan, fixed on the driver before the pipeline runs.

Row ids are the source's; shard k covers the items [k*U, (k+1)*U) (U = `items_per_shard`),
so which worker embeds which shard, and when, changes nothing in the result. Each planned
shard's items travel to the workers as `.ray-inputs/part-NNNNN.parquet` inside the staging
bundle (a filesystem every node sees), with the encoded images of a tfds source, whose
examples exist on the driver only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from embed.atomic import atomic_path
from embed.bundle import Bundle
from embed.shards import whole_shard
from embed.sources import ImageItem

INPUTS_DIR = ".ray-inputs"  # per-shard item lists inside the staging bundle, removed after
SHARDS_PER_WORKER = 2  # planned shards per worker: balance against each shard's start-up
MIN_SHARD_ITEMS = 64  # each shard starts a reader (a few tenths of a second): not too small


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
