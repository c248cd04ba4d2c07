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
