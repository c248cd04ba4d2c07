"""Passes over a bundle's embedding shards: counting, sampling and gathering rows, adding them
to an index, and the exact top-k (recall's truth) merged shard by shard.

Each pass holds one shard and the samples, never the whole collection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embed.vectors import exact_knn

RECALL_K = 10
RECALL_QUERIES = 1000
ADD_BATCH = 16_384  # rows added to an HNSW graph at a time
SEED = 0

Shards = Callable[[], Iterable[np.ndarray]]  # a fresh pass over float32 blocks in row order


def in_memory(vectors: np.ndarray) -> Shards:
    """One array as a single shard."""
    block = np.ascontiguousarray(vectors, dtype=np.float32)
    return lambda: [block]


def count_rows(shards: Shards) -> int:
    """Rows from the shards' shapes: only their headers are read."""
    return sum(len(shard) for shard in shards())


def sample_positions(n: int, size: int, seed: int = SEED) -> np.ndarray:
    """`size` distinct seeded row positions, sorted; every row, in order, when size >= n."""
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def gather_rows(shards: Shards, *positions: np.ndarray) -> list[np.ndarray]:
    """The rows at each sorted array of positions, copied out of the shards in one pass
    straight into their final arrays."""
    out: list[np.ndarray | None] = [None] * len(positions)
    start = 0
    for shard in shards():
        stop = start + len(shard)
        for i, wanted in enumerate(positions):
            if out[i] is None:
                out[i] = np.empty((len(wanted), shard.shape[1]), np.float32)
            lo, hi = np.searchsorted(wanted, [start, stop])
            if hi > lo:
                out[i][lo:hi] = shard[wanted[lo:hi] - start]
        start = stop
    return [rows if rows is not None else np.zeros((0, 0), np.float32) for rows in out]


TIE_SLACK = 16  # exact neighbours kept past the k-th, to see which rows tie it
TIE_EPS = 1e-5  # scores this close to the k-th exact score tie it (duplicate photos)


@dataclass(frozen=True)
class ExactTopK:
    """The queries' exact nearest rows (positions and scores, best first), `k` of them
    asked for and up to TIE_SLACK more, so that recall can count ties as found."""

    ids: np.ndarray
    scores: np.ndarray
    k: int


def stream_shards(shards: Shards, index: Any = None, kind: str = "flat",
                  queries: np.ndarray | None = None, k: int = RECALL_K,
                  skip: int = 0) -> ExactTopK | None:
    """One pass: add every row after the first `skip` to `index` (HNSW in batches) and, given
    `queries`, return their exact top-k positions over all rows, merged shard by shard."""
    import faiss

    wide = k + TIE_SLACK
    heap = None if queries is None else faiss.ResultHeap(len(queries), wide, keep_max=True)
    start = 0
    for shard in shards():
        rows = len(shard)
        if heap is not None and rows:
            scores, ids = exact_knn(queries, shard, wide)
            heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
        if index is not None:
            step = ADD_BATCH if kind == "hnsw" else max(rows, 1)
            for lo in range(max(skip - start, 0), rows, step):
                index.add(np.ascontiguousarray(shard[lo:lo + step], dtype=np.float32))
        start += rows
    if heap is None:
        return None
    heap.finalize()
    return ExactTopK(heap.I, heap.D, k)


def recall_of(found: np.ndarray, truth: ExactTopK) -> float:
    """Share of the exact top-k neighbours found. A row whose exact score ties the k-th one
    (a photo stored twice) is as right as the one exact search happened to list, so it counts
    as found: without that, a flat index over duplicates showed a recall below 1."""
    k = truth.k
    hits = 0
    for ids, scores, got in zip(truth.ids, truth.scores, found, strict=True):
        real = ids >= 0
        if not real.any():
            continue
        kth = scores[real][min(k, int(real.sum())) - 1]
        right = set(ids[real & (scores >= kth - TIE_EPS)].tolist())
        hits += min(len(right & set(np.asarray(got)[:k].tolist())), k)
    return hits / max(len(found) * k, 1)


def recall_at_k(index: Any, vectors: np.ndarray | Shards, k: int = RECALL_K,
                n_queries: int = RECALL_QUERIES, seed: int = SEED) -> float:
    """Share of the exact top-k neighbours the index finds, on a seeded sample of the rows.

    `vectors` is an array, or a function giving a pass over shards (the exact top-k is then
    taken shard by shard: only one shard and the queries are in memory)."""
    shards = vectors if callable(vectors) else in_memory(vectors)
    n = count_rows(shards)
    if n == 0:
        return 1.0
    k = min(k, n)
    (queries,) = gather_rows(shards, sample_positions(n, min(n_queries, n), seed))
    truth = stream_shards(shards, queries=queries, k=k)
    return recall_of(index.search(queries, k)[1], truth)
