"""How good the look-alike search is for breeds: same-breed precision@k over a bundle's split.

Queries are the test-split rows, the searched collection the train-split rows, so a backbone
fine-tuned on the train split is judged on photos it never saw. Search is exact (inner product
over unit vectors), so the figure measures the embedding, not the index's approximation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embed.bundle import Bundle
from embed.vectors import exact_knn


def same_label_precision_at_k(
    queries: np.ndarray, query_labels: np.ndarray, base: np.ndarray, base_labels: np.ndarray,
    k: int = 5,
) -> float:
    """Mean share of each query's k nearest base rows (exact search) that carry the query's
    label."""
    if len(queries) == 0 or len(base) == 0:
        return 0.0
    _, positions = exact_knn(queries, base, k)
    neighbour_labels = np.asarray(base_labels)[positions]
    return float((neighbour_labels == np.asarray(query_labels)[:, None]).mean())


def bundle_precision_at_k(bundle: Bundle, k: int = 5) -> dict[str, Any]:
    """Same-breed precision@k of test-split queries against the train split of a bundle."""
    splits = bundle.split_arrays()
    (x_test, y_test), (x_train, y_train) = splits["test"], splits["train"]
    return {
        "k": k,
        f"precision@{k}": round(same_label_precision_at_k(x_test, y_test, x_train, y_train, k), 4),
        "queries": int(len(x_test)),
        "base": int(len(x_train)),
    }


# ---- the learned look-alike space against the raw one ----------------------------------------
def _nearest(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(base)))[1]


def neighbour_figures(queries: np.ndarray, query_labels: np.ndarray, base: np.ndarray,
                      base_labels: np.ndarray, k: int = 5) -> dict[str, float]:
    """Same-label precision@k and 1-NN accuracy of queries against base (exact search)."""
    if len(queries) == 0 or len(base) == 0:
        return {f"precision@{k}": 0.0, "nn1": 0.0}
    found = np.asarray(base_labels)[_nearest(queries, base, k)]
    same = found == np.asarray(query_labels)[:, None]
    return {f"precision@{k}": round(float(same.mean()), 4),
            "nn1": round(float(same[:, 0].mean()), 4)}


def within_label_overlap(queries: np.ndarray, base: np.ndarray, raw_queries: np.ndarray,
                         raw_base: np.ndarray, query_labels: np.ndarray,
                         base_labels: np.ndarray, k: int = 10) -> float:
    """Whether look-alikes within a breed still follow visual similarity: per query, the
    overlap of its k nearest same-label base rows in a space with its k nearest same-label
    rows in the raw space (1.0: the same photos), averaged."""
    base_labels = np.asarray(base_labels)
    overlaps = []
    for label in np.unique(query_labels):
        rows = np.flatnonzero(base_labels == label)
        asked = np.flatnonzero(np.asarray(query_labels) == label)
        if not len(rows) or not len(asked):
            continue
        kk = min(k, len(rows))
        mine = _nearest(queries[asked], base[rows], kk)
        raw = _nearest(raw_queries[asked], raw_base[rows], kk)
        overlaps += [len(set(a) & set(r)) / kk for a, r in zip(mine, raw, strict=True)]
    return round(float(np.mean(overlaps)), 4) if overlaps else 0.0


def near_copy_first(copies: np.ndarray, originals: np.ndarray, base: np.ndarray) -> float:
    """Share of near-copies (a resized, recompressed photo) whose nearest base row is their
    original (`originals`: each copy's row position in base)."""
    if not len(copies):
        return 0.0
    return round(float(np.mean(_nearest(copies, base, 1)[:, 0] == np.asarray(originals))), 4)


def space_figures(apply: Any, train: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], k: int = 5) -> dict[str, Any]:
    """Raw against learned on a bundle's split (test queries, train base): precision@k, 1-NN
    and the within-breed overlap@10. `apply` maps raw vectors into the learned space (a
    `LearnedSpace.apply`); these are the figures the build summary and `evaluate` show."""
    (x_train, y_train), (x_test, y_test) = train, test
    learned_train, learned_test = apply(x_train), apply(x_test)
    return {"queries": int(len(x_test)), "base": int(len(x_train)),
            "raw": neighbour_figures(x_test, y_test, x_train, y_train, k),
            "learned": {**neighbour_figures(learned_test, y_test, learned_train, y_train, k),
                        "within_breed_overlap@10": within_label_overlap(
                            learned_test, learned_train, x_test, x_train, y_test, y_train)}}
