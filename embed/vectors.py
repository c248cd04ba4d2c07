"""Unit vectors and exact nearest neighbours: the one implementation of each.

Every package normalises and searches exactly through these two functions (the index's recall
truth, the gate's kNN similarity, same-breed precision), so cosine similarity means the same
thing everywhere. Plain numpy: no FAISS here, and `embed` stays the bottom layer.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1024  # query rows per similarity block: memory stays CHUNK x reference rows


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32), so inner product is cosine similarity; an all-zero
    row stays zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _key_codes(query_keys: np.ndarray, reference_keys: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Both key arrays as integer codes of one shared vocabulary."""
    q = np.asarray(query_keys).astype(str)
    r = np.asarray(reference_keys).astype(str)
    _, codes = np.unique(np.concatenate([q, r]), return_inverse=True)
    return codes[:len(q)], codes[len(q):]


def exact_knn(queries: np.ndarray, reference: np.ndarray, k: int,
              query_keys: np.ndarray | None = None,
              reference_keys: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k largest inner products of each query with the reference rows, best first.

    Returns (scores, positions), both of shape (queries, min(k, reference rows)). Exact, in
    blocks of CHUNK queries. With keys, a query skips the reference rows that share its key
    (keyed by content hash: itself and its exact copies; keyed by breed: its whole breed); a
    query left with fewer than k candidates gets score -inf and position -1 in the rest.
    """
    queries = np.asarray(queries, np.float32)
    reference = np.asarray(reference, np.float32)
    k = min(int(k), len(reference))
    scores = np.full((len(queries), max(k, 0)), -np.inf, np.float32)
    positions = np.full((len(queries), max(k, 0)), -1, np.int64)
    if k <= 0 or not len(queries):
        return scores, positions
    keyed = query_keys is not None and reference_keys is not None
    if keyed:
        q_codes, r_codes = _key_codes(query_keys, reference_keys)
    for start in range(0, len(queries), CHUNK):
        block = slice(start, min(len(queries), start + CHUNK))
        sims = queries[block] @ reference.T
        if keyed:
            sims = np.where(q_codes[block][:, None] == r_codes[None, :], -np.inf, sims)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        top_scores = np.take_along_axis(top_scores, order, axis=1)
        scores[block] = top_scores
        positions[block] = np.where(np.isfinite(top_scores), top, -1)
    return scores, positions
