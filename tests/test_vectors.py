"""embed.vectors: the one L2 normalisation and the one exact kNN, on hand-made vectors."""

from __future__ import annotations

import numpy as np
import pytest

from embed import vectors
from embed.vectors import exact_knn, l2_normalise


def test_l2_normalise_makes_unit_rows_and_keeps_zero_rows() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])


def test_exact_knn_ranks_known_neighbours_best_first() -> None:
    reference = np.eye(3, dtype=np.float32)  # three orthogonal unit vectors
    query = l2_normalise(np.array([[3.0, 2.0, 1.0]]))  # closest to e0, then e1, then e2
    scores, positions = exact_knn(query, reference, 3)
    assert positions.tolist() == [[0, 1, 2]]
    np.testing.assert_allclose(scores[0], np.array([3, 2, 1]) / np.sqrt(14), rtol=1e-6)
    assert exact_knn(query, reference, 10)[1].shape == (1, 3)  # k is capped at the rows


def test_exact_knn_skips_rows_that_share_the_query_key() -> None:
    reference = np.eye(3, dtype=np.float32)
    query = reference[:1]
    _, positions = exact_knn(query, reference, 2, np.array(["a"]), np.array(["a", "b", "b"]))
    assert positions[0, 0] in (1, 2)  # itself (key "a") left out
    scores, positions = exact_knn(query, reference, 3, np.array(["b"]),
                                  np.array(["a", "b", "b"]))
    assert positions[0].tolist() == [0, -1, -1] and np.isneginf(scores[0, 1:]).all()


def test_exact_knn_blocks_give_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    base = l2_normalise(rng.normal(size=(50, 8)))
    queries = l2_normalise(rng.normal(size=(7, 8)))
    whole = exact_knn(queries, base, 5)
    monkeypatch.setattr(vectors, "CHUNK", 2)
    blocked = exact_knn(queries, base, 5)
    np.testing.assert_array_equal(whole[1], blocked[1])
    # the best score is the largest inner product, found here by a plain loop
    best = [max(float(q @ b) for b in base) for q in queries]
    np.testing.assert_allclose(whole[0][:, 0], best, rtol=1e-5)
