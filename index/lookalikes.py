"""Build, save, load and query the FAISS index of a bundle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embed.bundle import Bundle, atomic_path
from embed.errors import BundleError, IncompatibleBundleError
from index.choice import DEFAULT_MEMORY_BUDGET, IndexChoice, choose_index

RECALL_K = 10
BREED_FILTERS = ("all", "same", "other")
RECALL_QUERIES = 1000
SEED = 0


def _faiss() -> Any:
    import faiss

    return faiss


def build_faiss_index(vectors: np.ndarray, choice: IndexChoice) -> Any:
    """An inner-product index (cosine over unit vectors) built from the factory string."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], choice.factory, faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "hnsw":
        index.hnsw.efConstruction = choice.params["efConstruction"]
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    apply_search_params(index, choice.kind, choice.params)
    return index


def apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    faiss = _faiss()
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]


def recall_at_k(index: Any, vectors: np.ndarray, k: int = RECALL_K,
                n_queries: int = RECALL_QUERIES, seed: int = SEED) -> float:
    """Share of the exact top-k neighbours the index finds, on a sample of the vectors."""
    faiss = _faiss()
    n = len(vectors)
    if n == 0:
        return 1.0
    k = min(k, n)
    rng = np.random.default_rng(seed)
    sample = rng.choice(n, size=min(n_queries, n), replace=False)
    queries = np.ascontiguousarray(vectors[sample], dtype=np.float32)
    base = np.ascontiguousarray(vectors, dtype=np.float32)
    _, truth = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, k)
    hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found, strict=True))
    return hits / (len(queries) * k)


def build_bundle_index(
    bundle: Bundle, kind: str = "auto", memory_budget: int | str = DEFAULT_MEMORY_BUDGET
) -> dict[str, Any]:
    """Build the bundle's index, measure recall@10 against exact search, save it atomically."""
    faiss = _faiss()
    vectors = bundle.embeddings()
    if len(vectors) == 0:
        raise BundleError("no embeddings to index: every input was skipped (see skipped.csv)")
    choice = choose_index(kind, len(vectors), vectors.shape[1], memory_budget)
    index = build_faiss_index(vectors, choice)
    recall = recall_at_k(index, vectors)
    with atomic_path(bundle.index_path) as tmp:
        faiss.write_index(index, str(tmp))
    return {
        **choice.describe(),
        "metric": "inner_product",
        "rows": int(index.ntotal),
        "dim": int(vectors.shape[1]),
        f"recall@{RECALL_K}": round(recall, 4),
        "recall_queries": int(min(RECALL_QUERIES, len(vectors))),
    }


@dataclass
class Neighbour:
    position: int  # row in metadata.parquet (and in the index)
    row_id: int
    score: float
    path: str
    label: str | None
    split: str


class LookalikeIndex:
    """A loaded index with its metadata: search returns rows a person can read."""

    def __init__(self, bundle: Bundle) -> None:
        faiss = _faiss()
        manifest = bundle.manifest
        if not manifest.get("index") or not bundle.index_path.is_file():
            raise BundleError(
                f"bundle {bundle.root} has no index; run `embed-dogs build-index` to make one"
            )
        self.bundle = bundle
        self.info = manifest["index"]
        self.index = faiss.read_index(str(bundle.index_path))
        apply_search_params(self.index, self.info["kind"], self.info.get("params", {}))
        self.metadata = bundle.metadata()
        if self.index.ntotal != len(self.metadata):
            raise IncompatibleBundleError(
                f"index of {bundle.root} has {self.index.ntotal} rows but metadata has"
                f" {len(self.metadata)}; rebuild the bundle"
            )
        self.dim = int(manifest["backbone"]["dim"])

    def _neighbour(self, position: int, score: float) -> Neighbour:
        r = self.metadata.iloc[int(position)]
        label = r["label"] if isinstance(r["label"], str) else None
        return Neighbour(int(position), int(r["row_id"]), float(score), str(r["path"]), label,
                         str(r["split"]))

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise IncompatibleBundleError(
                f"query vectors have dim {queries.shape[1]}, the bundle's index has {self.dim}"
            )
        return queries

    def search(self, queries: np.ndarray, k: int = 8) -> list[list[Neighbour]]:
        """The k most similar dataset rows for each query vector (best first)."""
        queries = self._queries(queries)
        k = max(1, min(k, self.index.ntotal))
        scores, positions = self.index.search(queries, k)
        return [
            [self._neighbour(p, s) for s, p in zip(srow, prow, strict=True) if p >= 0]
            for srow, prow in zip(scores, positions, strict=True)
        ]

    def search_filtered(
        self, query: np.ndarray, k: int, breed: str | None = None, mode: str = "all",
        exclude: int | None = None,
    ) -> list[Neighbour]:
        """The k nearest rows of one query, only of `breed` ("same") or all but it ("other").

        `exclude` drops one position (the query's own row). One search with an ID selector:
        the index itself skips the rows outside the filter. An HNSW walk is widened by how
        few rows the filter lets through, so a rare breed still fills its k; an IVF index
        finds the filter's rows in its probed lists only (as an unfiltered search does).
        """
        if mode not in BREED_FILTERS:
            raise ValueError(f"unknown filter {mode!r}; expected one of {', '.join(BREED_FILTERS)}")
        query = self._queries(query)[:1]
        total = int(self.index.ntotal)
        allowed = np.ones(total, dtype=bool)
        if mode != "all":
            same = self.metadata["label"].to_numpy(dtype=object) == breed
            allowed &= same if mode == "same" else ~same
        if exclude is not None and 0 <= exclude < total:
            allowed[exclude] = False
        n_allowed = int(allowed.sum())
        k = min(k, n_allowed)
        if k <= 0:
            return []
        if n_allowed == total:
            scores, positions = self.index.search(query, k)
        else:
            # bitmap, selector and params stay referenced by these locals while faiss searches
            bitmap = np.packbits(allowed, bitorder="little")
            selector = _faiss().IDSelectorBitmap(bitmap)
            params = self._search_parameters(selector, k, n_allowed)
            scores, positions = self.index.search(query, k, params=params)
        return [self._neighbour(p, s) for s, p in zip(scores[0], positions[0], strict=True)
                if p >= 0]

    def _search_parameters(self, selector: Any, k: int, n_allowed: int) -> Any:
        """Search parameters with `selector` and the index's own efSearch / nprobe."""
        faiss = _faiss()
        kind, params = self.info["kind"], self.info.get("params", {})
        if kind == "hnsw":
            # a graph walk stops after about efSearch candidates: scale it by the filter's
            # selectivity so that about k of the visited rows pass
            wide = -(-k * int(self.index.ntotal) // n_allowed)
            ef = max(int(params.get("efSearch", self.index.hnsw.efSearch)), wide)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        if kind == "ivf":
            nprobe = int(params.get("nprobe", faiss.extract_index_ivf(self.index).nprobe))
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        return faiss.SearchParameters(sel=selector)
