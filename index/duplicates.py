"""Exact duplicates, near-duplicates and split leaks: kNN questions over the stored vectors.

- **Exact duplicates** share a content sha256 (metadata), whatever their names or folders.
- **Near-duplicates** are pairs whose cosine similarity reaches a threshold calibrated on the
  bundle's own photos (:func:`calibrate_threshold`): never a fixed number, because what a
  resize does to the similarity depends on the backbone.
- **Split leaks** are near-duplicate (or exact) pairs with one row in train and one in test:
  the test photo was, in effect, seen in training.

Pairs come from one exact kNN graph (:func:`knn_graph`, FAISS inner product over
L2-normalised vectors, queried in blocks), so memory is rows x k and nothing is O(n²) in
Python. A photo with more than k - 1 near-copies keeps its k - 1 closest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

GRAPH_K = 16  # neighbours per row in the audit's kNN graph (the row itself included)
BLOCK = 8192  # query rows per FAISS call: results stay rows x k, the scratch stays small


# ---- the kNN graph ----------------------------------------------------------------------------
def knn_graph(vectors: np.ndarray, k: int = GRAPH_K, index: Any = None,
              block: int = BLOCK, base: np.ndarray | None = None,
              queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids), each (rows, k), best first, of every row (or of the row positions
    `queries`) against all rows (itself included, usually first), or against the row
    positions `base` only; ids are always positions in `vectors`, -1 where fewer than k
    exist. Exact (FAISS IndexFlatIP) unless a built inner-product `index` over all rows in
    their order is given (then as exact as that index)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    q = x if queries is None else x[np.asarray(queries, np.int64)]
    positions = None if base is None else np.asarray(base, np.int64)
    if positions is not None:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x[positions])
    elif index is None:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
    k = max(0, min(k, index.ntotal))
    sims = np.empty((len(q), k), np.float32)
    ids = np.empty((len(q), k), np.int64)
    if k:
        for start in range(0, len(q), block):
            stop = min(len(q), start + block)
            sims[start:stop], ids[start:stop] = index.search(q[start:stop], k)
    if positions is not None:
        ids = np.where(ids >= 0, positions[np.maximum(ids, 0)], -1)
    return sims, ids


def restricted_graph(vectors: np.ndarray, graph: tuple[np.ndarray, np.ndarray],
                     allowed: np.ndarray, hashes: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph against the `allowed` rows only (a boolean mask), read off an exact
    `graph` of all rows wherever a row keeps at least k allowed neighbours that are neither
    itself nor an exact copy (those are then exactly its k best allowed ones); the few rows
    left short are searched again against the allowed rows alone."""
    sims, ids = graph
    h = np.asarray(hashes, dtype=object).astype(str)
    n = len(ids)
    ok = (ids >= 0) & allowed[np.maximum(ids, 0)]
    ids = np.where(ok, ids, -1)
    useful = ok & (ids != np.arange(n)[:, None]) & (h[np.maximum(ids, 0)] != h[:, None])
    short = np.flatnonzero(useful.sum(axis=1) < k)
    if len(short):
        extra = k + 1 + int(np.bincount(np.unique(h, return_inverse=True)[1]).max())
        width = max(ids.shape[1], extra)
        s2, i2 = knn_graph(vectors, width, base=np.flatnonzero(allowed), queries=short)
        sims = np.pad(sims, ((0, 0), (0, width - sims.shape[1])), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=-1)
        sims[short, :s2.shape[1]], ids[short, :i2.shape[1]] = s2, i2
        ids[short, i2.shape[1]:] = -1
    return sims, ids


def graph_pairs(sims: np.ndarray, ids: np.ndarray, threshold: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct pairs (i < j) with similarity >= threshold, each once: (i, j, similarity),
    most similar first."""
    n, k = ids.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = ids.ravel()
    vals = sims.ravel().astype(np.float64)
    keep = (cols >= 0) & (cols != rows) & (vals >= threshold)
    i, j, v = np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep], vals[keep]
    if not len(i):
        return i, j, v
    order = np.lexsort((j, i, -v))  # most similar first; the same pair from both sides
    i, j, v = i[order], j[order], v[order]
    _, first = np.unique(i * n + j, return_index=True)
    first = np.sort(first)
    return i[first], j[first], v[first]


# ---- exact duplicates ------------------------------------------------------------------------
def exact_duplicates(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, kept): every row whose sha256 an earlier row already has, with that first row.
    Rows without a hash (empty or missing) are never duplicates."""
    h = np.asarray(hashes, dtype=object)
    valid = np.array([isinstance(x, str) and x != "" for x in h])
    positions = np.flatnonzero(valid)
    if not len(positions):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, first, inverse = np.unique(h[positions].astype(str), return_index=True,
                                  return_inverse=True)
    kept = positions[first[inverse]]
    dup = kept != positions
    return positions[dup].astype(np.int64), kept[dup].astype(np.int64)


# ---- the threshold -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Threshold:
    """A calibrated near-duplicate threshold and the figures behind it."""

    value: float
    copies: int  # (original, near-copy) pairs measured
    neighbours: int  # distinct same-label nearest-neighbour pairs measured
    copy_recall: float  # share of near-copies at or above the threshold
    neighbour_rate: float  # share of distinct neighbour pairs at or above it
    how: str = ("the midpoint of the gap between consecutive measured similarities where"
                " (copies kept - distinct neighbours kept) is largest (Youden's J); copies:"
                " the bundle's own photos resized, re-saved at a lower JPEG quality or lightly"
                " cropped, against their stored vectors; distinct: each sampled row's nearest"
                " row of the same label with different bytes")

    def as_dict(self) -> dict[str, Any]:
        return {"value": round(self.value, 6), "copies": self.copies,
                "neighbours": self.neighbours, "copy_recall": round(self.copy_recall, 4),
                "neighbour_rate": round(self.neighbour_rate, 4), "how": self.how}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Threshold:
        """The threshold `as_dict` recorded (in an audit's or a build's manifest section)."""
        return cls(float(record["value"]), int(record["copies"]), int(record["neighbours"]),
                   float(record["copy_recall"]), float(record["neighbour_rate"]))


def calibrate_threshold(copy_sims: np.ndarray, neighbour_sims: np.ndarray) -> Threshold:
    """The similarity above which a pair is called a near-duplicate.

    Positives: (original, edited copy) similarities. Negatives: distinct photos of the same
    label, each with its nearest such neighbour, the hardest pairs that are not copies. The
    threshold maximises Youden's J = (share of copies kept) - (share of negatives kept), which
    a few real, unknown near-duplicates among the negatives barely move; it is the midpoint of
    the widest gap between consecutive measured values that reaches the best J, so it sits as
    far as possible from both kinds."""
    pos = np.sort(np.asarray(copy_sims, np.float64)[np.isfinite(copy_sims)])
    neg = np.sort(np.asarray(neighbour_sims, np.float64)[np.isfinite(neighbour_sims)])
    if not len(pos):
        raise ValueError("no near-copy similarities to calibrate on")
    values = np.unique(np.concatenate([pos, neg, [1.0 + 1e-6]]))
    # candidate thresholds: below every value, then each gap's midpoint
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2])
    gaps = np.concatenate([[0.0], np.diff(values)])
    kept_pos = 1.0 - np.searchsorted(pos, cuts, side="left") / len(pos)
    kept_neg = (1.0 - np.searchsorted(neg, cuts, side="left") / len(neg)) if len(neg) else 0.0
    j = kept_pos - kept_neg
    best = np.flatnonzero(np.isclose(j, j.max()))
    choice = best[np.argmax(gaps[best])]
    value = float(cuts[choice])
    return Threshold(value, int(len(pos)), int(len(neg)),
                     float(np.mean(pos >= value)),
                     float(np.mean(neg >= value)) if len(neg) else 0.0)


def same_label_neighbour_sims(vectors: np.ndarray, labels: np.ndarray, hashes: np.ndarray,
                              rows: np.ndarray) -> np.ndarray:
    """For each of `rows`, the similarity to its nearest other row of the same label whose
    bytes differ (exact copies are not "distinct photos"); NaN when it has none."""
    x = np.asarray(vectors, np.float32)
    labels = np.asarray(labels, dtype=object).astype(str)
    hashes = np.asarray(hashes, dtype=object).astype(str)
    rows = np.asarray(rows, np.int64)
    out = np.full(len(rows), np.nan)
    for label in np.unique(labels[rows]):
        mine = np.flatnonzero(labels[rows] == label)
        peers = np.flatnonzero(labels == label)
        sims = x[rows[mine]] @ x[peers].T  # (sampled rows of this label) x (its rows)
        sims[hashes[rows[mine]][:, None] == hashes[peers][None, :]] = -np.inf
        best = sims.max(axis=1) if sims.shape[1] else np.full(len(mine), -np.inf)
        out[mine] = np.where(np.isfinite(best), best, np.nan)
    return out


# ---- near-duplicates and leaks ---------------------------------------------------------------
def near_duplicates(sims: np.ndarray, ids: np.ndarray, threshold: float,
                    hashes: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, similarity) at or above `threshold` from a kNN graph, leaving out exact
    duplicates (same sha256), which :func:`exact_duplicates` reports."""
    i, j, v = graph_pairs(sims, ids, threshold)
    if hashes is not None and len(i):
        h = np.asarray(hashes, dtype=object).astype(str)
        keep = (h[i] != h[j]) | (h[i] == "")
        i, j, v = i[keep], j[keep], v[keep]
    return i, j, v


def split_leaks(i: np.ndarray, j: np.ndarray, splits: np.ndarray
                ) -> np.ndarray:
    """Which pairs cross the train/test split (a boolean mask over the pairs)."""
    s = np.asarray(splits, dtype=object).astype(str)
    a, b = s[np.asarray(i, np.int64)], s[np.asarray(j, np.int64)]
    return ((a == "train") & (b == "test")) | ((a == "test") & (b == "train"))


def one_split_per_group(i: np.ndarray, j: np.ndarray, splits: np.ndarray
                        ) -> tuple[dict[int, str], int, int]:
    """Keep near-duplicate groups on one side of a train/test split: the groups are the
    connected components of the pairs (i, j) (union-find, no Python over all rows); a group
    with rows in both train and test goes whole to the side most of its rows are on (train
    on a tie: a test photo must never have a copy in train, and the test split stays free of
    doubtful rows). Returns ({row position: new split} for the rows that move, how many
    groups there are, how many of them crossed the split)."""
    s = np.asarray(splits, dtype=object).astype(str)
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(np.asarray(i, np.int64).tolist(), np.asarray(j, np.int64).tolist(),
                    strict=True):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in list(parent):
        groups.setdefault(root(x), []).append(x)
    moves: dict[int, str] = {}
    crossed = 0
    for members in groups.values():
        sides = s[members]
        train, test = int((sides == "train").sum()), int((sides == "test").sum())
        if not (train and test):
            continue
        crossed += 1
        side = "test" if test > train else "train"
        moves.update({m: side for m, here in zip(members, sides, strict=True)
                      if here in ("train", "test") and here != side})
    return moves, len(groups), crossed
