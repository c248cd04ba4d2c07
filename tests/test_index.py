from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embed.bundle import Bundle
from index.choice import choose_index, ivf_lists, parse_budget
from index.lookalikes import LookalikeIndex, build_faiss_index, recall_at_k


@pytest.mark.parametrize(
    ("text", "expected"),
    [("4G", 4 << 30), ("512M", 512 << 20), ("1.5G", int(1.5 * (1 << 30))), ("100", 100),
     ("2GiB", 2 << 30), (123, 123)],
)
def test_parse_budget(text, expected) -> None:
    assert parse_budget(text) == expected


def test_parse_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="memory budget"):
        parse_budget("lots")


@pytest.mark.parametrize(
    ("n", "dim", "budget", "kind"),
    [
        (600, 1280, "2G", "flat"),
        (50_000, 1280, "2G", "flat"),
        (50_001, 1280, "2G", "hnsw"),
        (20_000, 1280, "50M", "ivf"),  # flat would need 98 MiB > 50M
        (200_000, 1280, "2G", "hnsw"),
        (1_000_000, 1280, "2G", "ivf"),  # graph needs ~5.4 GiB
        (3_000_000, 256, "64G", "ivf"),  # past the graph's size limit
    ],
)
def test_auto_ladder(n: int, dim: int, budget: str, kind: str) -> None:
    assert choose_index("auto", n, dim, budget).kind == kind


def test_explicit_kinds_and_factories() -> None:
    assert choose_index("flat", 10, 8, "1G").factory == "Flat"
    assert choose_index("hnsw", 10, 8, "1G").factory == "HNSW32,Flat"
    ivf = choose_index("ivf", 100_000, 1280, "1G")
    assert ivf.factory == f"IVF{ivf_lists(100_000)},PQ64" and ivf.params["nprobe"] <= 16
    assert choose_index("ivf", 100_000, 256, "1G").factory.endswith(",PQ64")
    assert choose_index("ivf", 100_000, 32, "1G").factory.endswith(",PQ8")  # >= 4 dims a code
    assert choose_index("ivf", 3_000, 256, "1G").factory == f"IVF{ivf_lists(3000)},Flat"
    assert choose_index("ivf", 100_000, 1280, "2M").factory.endswith(",PQ16")  # ~16 B/vector
    with pytest.raises(ValueError, match="unknown index kind"):
        choose_index("annoy", 10, 8, "1G")


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_indexes_are_inner_product_and_recall_is_measured(kind: str) -> None:
    vectors = _unit(3000, 32)
    index = build_faiss_index(vectors, choose_index(kind, len(vectors), 32, "1G"))
    scores, ids = index.search(vectors[:5], 1)
    if kind != "ivf":  # PQ is lossy: the exact self-match is not guaranteed
        assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)
    recall = recall_at_k(index, vectors, k=10, n_queries=200)
    # measured (seeded data and sample): flat 1.0, hnsw 1.0, ivf 0.79 (nprobe 16 of 76 lists);
    # ivf with nprobe 1 would measure 0.27
    assert recall >= {"flat": 1.0, "hnsw": 0.99, "ivf": 0.75}[kind] and recall <= 1.0


def test_bundle_index_search_returns_metadata(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    info = bundle.manifest["index"]
    assert info["kind"] == "flat" and info["recall@10"] == 1.0 and info["rows"] == 30
    lookalikes = LookalikeIndex(bundle)
    vectors = bundle.embeddings()
    hits = lookalikes.search(vectors[[4, 25]], k=3)
    assert [h.position for h in (hits[0][0], hits[1][0])] == [4, 25]
    table = bundle.metadata()
    assert hits[0][0].path == table.loc[4, "path"] and hits[0][0].label == table.loc[4, "label"]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0][0].score >= hits[0][1].score >= hits[0][2].score
    # k larger than the collection is capped
    assert len(lookalikes.search(vectors[:1], k=100)[0]) == 30


def test_breed_filtered_search(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    lookalikes = LookalikeIndex(bundle)
    table = bundle.metadata()
    query = bundle.embeddings()[0]
    breed = table.loc[0, "label"]
    same = lookalikes.search_filtered(query, 5, breed=breed, mode="same", exclude=0)
    assert len(same) == 5 and all(h.label == breed for h in same)
    assert 0 not in [h.position for h in same]
    other = lookalikes.search_filtered(query, 25, breed=breed, mode="other")
    assert len(other) == 20 and all(h.label != breed for h in other)  # only 20 of other breeds
    everything = lookalikes.search_filtered(query, 3)
    assert [h.position for h in everything] == [h.position for h in lookalikes.search(query, 3)[0]]
    with pytest.raises(ValueError, match="unknown filter"):
        lookalikes.search_filtered(query, 3, mode="nearby")


def _wrapped(kind: str, vectors: np.ndarray, labels: np.ndarray) -> LookalikeIndex:
    """A LookalikeIndex over a freshly built index and hand-made metadata (no bundle)."""
    choice = choose_index(kind, len(vectors), vectors.shape[1], "1G")
    lookalikes = LookalikeIndex.__new__(LookalikeIndex)
    lookalikes.index = build_faiss_index(vectors, choice)
    lookalikes.info = {"kind": kind, "params": choice.params}
    lookalikes.metadata = pd.DataFrame({
        "row_id": np.arange(len(vectors)), "path": [f"{i}.jpg" for i in range(len(vectors))],
        "label": labels, "split": "train",
    })
    lookalikes.dim = vectors.shape[1]
    return lookalikes


def _brute_force(lookalikes: LookalikeIndex, vectors: np.ndarray, labels: np.ndarray, q: int,
                 k: int, breed: str | None, mode: str, exclude: int | None) -> list[int]:
    """The k best allowed rows by exact inner product; for IVF only rows of the probed lists."""
    allowed = np.ones(len(vectors), bool)
    if mode != "all":
        same = labels == breed
        allowed &= same if mode == "same" else ~same
    if exclude is not None:
        allowed[exclude] = False
    if lookalikes.info["kind"] == "ivf":
        import faiss

        quantizer = faiss.extract_index_ivf(lookalikes.index).quantizer
        _, probed = quantizer.search(vectors[q:q + 1], lookalikes.info["params"]["nprobe"])
        allowed &= np.isin(quantizer.assign(vectors, 1)[:, 0], probed[0])
    rows = np.flatnonzero(allowed)
    scores = vectors[rows] @ vectors[q]
    return rows[np.argsort(-scores, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filtered_search_matches_brute_force(kind: str) -> None:
    n = 3000
    vectors = _unit(n, 32, seed=1)
    labels = np.array([f"breed{i}" for i in np.random.default_rng(2).integers(0, 30, n)],
                      dtype=object)
    labels[::50] = None  # unlabelled rows: never "same", always "other"
    labels[[3, 400, 1700, 2200, 2999]] = "rare"  # fewer rows than k
    lookalikes = _wrapped(kind, vectors, labels)
    cases = 0
    for q in (1, 3, 77, 400, 1234, 2501):
        for mode, breed in (("all", None), ("same", labels[q]), ("other", labels[q]),
                            ("same", "rare"), ("other", "rare")):
            for exclude in (None, q):
                hits = lookalikes.search_filtered(vectors[q], 12, breed=breed, mode=mode,
                                                  exclude=exclude)
                expected = _brute_force(lookalikes, vectors, labels, q, 12, breed, mode, exclude)
                assert [h.position for h in hits] == expected, (q, mode, breed, exclude)
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
                np.testing.assert_allclose(scores, vectors[expected] @ vectors[q], atol=1e-5)
                cases += 1
    assert cases == 60
