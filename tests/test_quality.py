"""Same-breed precision@k: hand-made vectors with known neighbours, and a real bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embed.bundle import Bundle
from index.quality import bundle_precision_at_k, same_label_precision_at_k


def test_precision_on_hand_made_vectors() -> None:
    base = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    labels = np.array(["a", "a", "b", "b"])
    queries = np.array([[1, 0], [0, 1]], np.float32)
    assert same_label_precision_at_k(queries, np.array(["a", "b"]), base, labels, 2) == 1.0
    assert same_label_precision_at_k(queries, np.array(["a", "a"]), base, labels, 2) == 0.5
    # k larger than the collection is capped; empty queries give 0
    assert same_label_precision_at_k(queries, np.array(["a", "b"]), base, labels, 10) == 0.5
    assert same_label_precision_at_k(queries[:0], labels[:0], base, labels) == 0.0


def test_bundle_precision_uses_test_queries_against_train(tiny_bundle: Path) -> None:
    bundle = Bundle(tiny_bundle)
    result = bundle_precision_at_k(bundle, k=5)
    assert (result["k"], result["queries"], result["base"]) == (5, 6, 24)
    # the same figure by brute force over the stored vectors and metadata
    table, vectors = bundle.metadata(), bundle.embeddings()
    test = np.flatnonzero(table["split"].to_numpy() == "test")
    train = np.flatnonzero(table["split"].to_numpy() == "train")
    labels = table["label"].to_numpy()
    nearest = train[np.argsort(-(vectors[test] @ vectors[train].T), axis=1, kind="stable")[:, :5]]
    expected = (labels[nearest] == labels[test][:, None]).mean()
    assert result["precision@5"] == round(float(expected), 4)
