from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embed.bundle import Bundle
from embed.errors import EmbedDogsError
from index.choice import (
    IndexBudgetError,
    choose_index,
    flat_bytes,
    format_bytes,
    hnsw_bytes,
    ivf_flat_bytes,
    ivf_lists,
    ivf_pq_bytes,
    ivf_sq_bytes,
    parse_budget,
    training_rows,
)
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
    ("n", "dim", "budget", "factory", "why"),
    [
        (600, 1280, "2G", "Flat", "exact search is fast enough; needs 3M of the 2G budget"),
        (50_000, 1280, "2G", "Flat", "needs 244.2M of the 2G budget"),
        (50_001, 1280, "2G", "HNSW32,Flat", "a graph needs 268.6M of the 2G budget"),
        (200_000, 1280, "2G", "HNSW32,Flat", "a graph needs 1.1G"),
        (3_000_000, 256, "64G", "IVF2048,Flat", "full vectors in inverted lists need 2.9G"),
        (1_000_000, 256, "1G", "IVF1024,Flat", "need 985.2M of the 1G budget"),
        (1_000_000, 1280, "2G", "IVF1024,SQ8", "full vectors need 4.8G; 8-bit codes 1.3G"),
        (5_000, 1280, "10M", "IVF64,SQ8", "full vectors need 24.8M; 8-bit codes 6.5M of"),
        (1_000_000, 1280, "1G", "IVF1024,SQ4", "8-bit codes need 1.3G; 4-bit codes 623M of"),
        (20_000, 1280, "10M", "IVF128,PQ64", "4-bit codes need 13M; 64-byte PQ codes 3.3M"),
        (1_000_000, 1280, "50M", "IVF1024,PQ32", "32-byte PQ codes 44.4M of the 50M budget"),
    ],
    ids=["flat", "flat-limit", "hnsw", "hnsw-200k", "ivf-flat-past-graphs", "ivf-flat",
         "ivf-sq8", "ivf-sq8-small", "ivf-sq4", "ivf-pq", "ivf-pq-smaller-code"],
)
def test_auto_ladder(n: int, dim: int, budget: str, factory: str, why: str) -> None:
    choice = choose_index("auto", n, dim, budget)
    assert choice.factory == factory
    assert why in choice.reason and choice.reason.startswith(f"{n} vectors: ")
    assert choice.params["bytes"] <= parse_budget(budget)  # the estimate is recorded and fits
    if choice.kind == "ivf":
        assert choice.params["nprobe"] == 16 and choice.params["nlist"] == ivf_lists(n)


@pytest.mark.parametrize(
    ("n", "dim", "budget", "message", "fits_as"),
    [
        (5_000, 1280, "3M", "5000 x 1280 vectors need at least 3.5M as IVF64,SQ4 (PQ codes need"
         " 9984 vectors to train), more than the 3M memory budget; raise --memory-budget",
         "IVF64,SQ4"),
        (1_000_000, 1280, "10M", "1000000 x 1280 vectors need at least 17.7M as IVF1024,PQ4,"
         " more than the 10M memory budget; raise --memory-budget", "IVF1024,PQ4"),
        (10, 8, "100", "10 x 8 vectors need at least 216 as IVF1,SQ4", "IVF1,SQ4"),
    ],
    ids=["too-few-for-pq", "smallest-pq", "tiny"],
)
def test_auto_refuses_when_nothing_fits(n: int, dim: int, budget: str, message: str,
                                        fits_as: str) -> None:
    with pytest.raises(IndexBudgetError) as info:
        choose_index("auto", n, dim, budget)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, EmbedDogsError)
    least = str(info.value).split("need at least ")[1].split()[0]
    assert choose_index("auto", n, dim, least).factory == fits_as  # the named budget is enough


def test_estimates_follow_the_layouts() -> None:
    assert flat_bytes(1000, 1280) == 1000 * 1280 * 4
    assert hnsw_bytes(1000, 1280) == 1000 * (1280 * 4 + 2 * 32 * 8)
    assert ivf_flat_bytes(1000, 1280, 16) == 1000 * (1280 * 4 + 8) + 16 * 1280 * 4
    assert ivf_sq_bytes(1000, 1280, 16, 4) == 1000 * (640 + 8) + 16 * 1280 * 4 + 2 * 1280 * 4
    assert ivf_pq_bytes(1000, 1280, 16, 64) == 1000 * (64 + 8) + 16 * 1280 * 4 + 256 * 1280 * 4
    assert [format_bytes(b) for b in (100, 1536, 5 << 20, (5 << 20) + 1, 1288490189)] == [
        "100", "1.5K", "5M", "5.1M", "1.3G"]


def test_training_sample_is_bounded() -> None:
    assert training_rows(3_000, 32, 64, 1 << 30) == 3_000  # small collections: every row
    assert training_rows(1_000_000, 1280, 1024, 2 << 30) == 100_000
    assert training_rows(1_000_000, 1280, 1024, 100 << 20) == 10_240  # sample + residuals
    assert training_rows(1_000_000, 1280, 1024, 1 << 20) == 9_984  # never below PQ's need


def test_explicit_kinds_and_factories() -> None:
    assert choose_index("flat", 10, 8, "1G").factory == "Flat"
    assert choose_index("hnsw", 10, 8, "1G").factory == "HNSW32,Flat"
    assert choose_index("flat", 10, 8, "1G").reason == "requested; needs 320"
    ivf = choose_index("ivf", 100_000, 1280, "1G")
    assert ivf.factory == f"IVF{ivf_lists(100_000)},PQ64" and ivf.params["nprobe"] <= 16
    assert choose_index("ivf", 100_000, 256, "1G").factory.endswith(",PQ64")
    assert choose_index("ivf", 100_000, 32, "1G").factory.endswith(",PQ8")  # >= 4 dims a code
    assert choose_index("ivf", 3_000, 256, "1G").factory == f"IVF{ivf_lists(3000)},Flat"
    assert choose_index("ivf", 100_000, 1280, "6M").factory.endswith(",PQ16")  # ~16 B/vector
    assert choose_index("ivf", 100_000, 1280, "1M").factory.endswith(",PQ4")  # as asked
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
    # measured (seeded data and sample): flat 1.0, hnsw 1.0, ivf 0.82 (nprobe 16 of 64 lists);
    # ivf with nprobe 1 would measure 0.26
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

