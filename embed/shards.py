"""Self-describing embedding shards: the writer, finding complete ones again, and merging them.

A shard is two files: `part-NNNNN.npy` (float32 vectors, `rows_per_shard` of them, the last
shard fewer) and `part-NNNNN.rows.parquet` (every source item the shard covers, in item order:
row id, path, label, split, sha256, size and, for items that could not be used, the reason).
The rows file is written last, so a shard is complete exactly when both files exist and agree.
Because items are processed in row-id order, the complete shards of an interrupted build say
how far it got, and a resumed build continues after their last row id. Shards written by
several workers merge the same way: concatenate their rows files in row-id order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embed.atomic import atomic_path, atomic_save_npy
from embed.bundle import METADATA_COLUMNS, SKIPPED_COLUMNS, Bundle

ROW_COLUMNS = (*METADATA_COLUMNS, "reason")  # reason "" = embedded


class ShardWriter:
    """Writes rows and their vectors in shards of exactly `rows_per_shard` embedded rows.

    `add` takes one batch: a row dict per item (ROW_COLUMNS) in item order, and the vectors of
    the rows whose reason is "" in the same order. Skipped items travel with the shard of the
    next embedded row (or the last shard). `shards` lists what was written (manifest entries);
    pass the complete shards of an interrupted build to continue after them.
    """

    def __init__(self, bundle: Bundle, dim: int, rows_per_shard: int,
                 shards: list[dict[str, Any]] | None = None) -> None:
        self.bundle = bundle
        self.dim = dim
        self.rows_per_shard = rows_per_shard
        self.shards: list[dict[str, Any]] = list(shards or [])
        self._rows: list[dict[str, Any]] = []
        self._vectors: list[np.ndarray] = []
        self._pending_ok = 0

    @property
    def rows(self) -> int:
        """Embedded rows written or pending."""
        return sum(s["rows"] for s in self.shards) + self._pending_ok

    def add(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        ok = sum(1 for r in rows if not r["reason"])
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim) if ok else np.zeros(
            (0, self.dim), np.float32)
        if len(vectors) != ok:
            raise ValueError(f"{ok} usable rows but {len(vectors)} vectors")
        self._rows.extend(rows)
        if ok:
            self._vectors.append(vectors)
        self._pending_ok += ok
        while self._pending_ok >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n_ok: int | None) -> None:
        """Write the pending rows up to the n_ok-th embedded one (None: all of them)."""
        cut, seen = len(self._rows), 0
        if n_ok is not None:
            for i, row in enumerate(self._rows):
                seen += not row["reason"]
                if seen == n_ok:
                    cut = i + 1
                    break
        taken, self._rows = self._rows[:cut], self._rows[cut:]
        n_vectors = sum(1 for r in taken if not r["reason"])
        block = np.concatenate(self._vectors) if self._vectors else np.zeros((0, self.dim),
                                                                              np.float32)
        rest = block[n_vectors:]
        self._vectors = [rest] if len(rest) else []
        self._pending_ok -= n_vectors
        number = len(self.shards)
        vectors_path = self.bundle.shard_path(number)
        rows_path = self.bundle.shard_rows_path(number)
        atomic_save_npy(vectors_path, np.ascontiguousarray(block[:n_vectors]))
        write_rows(rows_path, taken)  # last: the shard is complete once this file exists
        self.shards.append(shard_entry(self.bundle, number, taken, n_vectors))

    def close(self) -> list[dict[str, Any]]:
        """Write whatever is pending; returns every shard's manifest entry."""
        if self._rows:
            self._flush(None)
        return self.shards


def write_rows(path: Any, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(ROW_COLUMNS)).astype(
        {"row_id": "int64", "width": "int32", "height": "int32"})
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def shard_entry(bundle: Bundle, number: int, rows: list[dict[str, Any]] | Any,
                n_vectors: int) -> dict[str, Any]:
    """The manifest's record of one shard: its files, its embedded rows and its row-id span."""
    ids = [int(r) for r in (rows["row_id"] if hasattr(rows, "columns") else
                            [row["row_id"] for row in rows])]
    return {
        "file": bundle.relative(bundle.shard_path(number)),
        "rows_file": bundle.relative(bundle.shard_rows_path(number)),
        "rows": int(n_vectors),
        "items": len(ids),
        "first_row_id": min(ids) if ids else None,
        "last_row_id": max(ids) if ids else None,
    }


def whole_shard(bundle: Bundle, number: int, dim: int,
                row_ids: list[int] | None = None) -> dict[str, Any] | None:
    """The manifest entry of shard `number` when both its files are there, readable and
    agree (one `dim`-wide vector per usable row, and exactly `row_ids` when given); None
    for a missing, partial or damaged shard."""
    import pandas as pd

    vectors_path, rows_path = bundle.shard_path(number), bundle.shard_rows_path(number)
    if not (vectors_path.is_file() and rows_path.is_file()):
        return None
    try:
        rows = pd.read_parquet(rows_path)
        vectors = np.load(vectors_path, mmap_mode="r")
        ok = int((rows["reason"] == "").sum())
        whole = (vectors.ndim == 2 and vectors.shape == (ok, dim)
                 and (row_ids is None or rows["row_id"].tolist() == row_ids))
    except Exception:  # a damaged leftover
        return None
    return shard_entry(bundle, number, rows, ok) if whole else None


def clear_leftovers(bundle: Bundle, keep: set[int]) -> None:
    """Remove every file in the embeddings folder that is not part of a shard in `keep`:
    partial files of a build killed mid-write, shards of another plan."""
    if not bundle.embeddings_dir.is_dir():
        return
    for path in bundle.embeddings_dir.iterdir():
        stem = path.name.split(".")[0]
        number = int(stem[5:]) if stem.startswith("part-") and stem[5:].isdigit() else None
        if number not in keep:
            path.unlink()


def complete_shards(bundle: Bundle, dim: int) -> list[dict[str, Any]]:
    """The shards an interrupted build finished, in order; later, partial files are removed."""
    shards: list[dict[str, Any]] = []
    while (entry := whole_shard(bundle, len(shards), dim)) is not None:
        shards.append(entry)
    clear_leftovers(bundle, set(range(len(shards))))
    return shards


def merged_tables(bundle: Bundle, shards: list[dict[str, Any]]) -> tuple[Any, Any]:
    """(metadata, skipped): every shard's rows in row-id order, split by whether embedded."""
    import pandas as pd

    parts = [pd.read_parquet(bundle.inside(s["rows_file"])) for s in shards]
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=list(ROW_COLUMNS))
    embedded = (rows["reason"] == "").to_numpy()
    metadata = rows.loc[embedded, list(METADATA_COLUMNS)].reset_index(drop=True).astype(
        {"row_id": "int64", "width": "int32", "height": "int32"})
    skipped = rows.loc[~embedded, list(SKIPPED_COLUMNS)].reset_index(drop=True)
    return metadata, skipped
