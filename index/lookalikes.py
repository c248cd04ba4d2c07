"""Build, save, load and query the FAISS index of a bundle.

Building streams over the memory-mapped shards in row order, so it holds the index, two
seeded samples (recall queries, IVF's training rows) and one shard, never the whole
collection: the row count comes from the shards' shapes, one pass gathers the samples, and one
pass adds every shard while taking the queries' exact top-k for the recall check.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embed.bundle import REBUILD_HINT, Bundle, atomic_path
from embed.errors import BundleError, IncompatibleBundleError
from index.choice import DEFAULT_MEMORY_BUDGET, POINTS_PER_CENTROID, IndexChoice, choose_index
from index.passes import (
    RECALL_K,
    RECALL_QUERIES,
    SEED,
    ExactTopK,
    Shards,
    count_rows,
    gather_rows,
    in_memory,
    recall_of,
    sample_positions,
    stream_shards,
)

BREED_FILTERS = ("all", "same", "other")
RECALL_TARGET = 0.9  # an IVF build doubles nprobe until recall@10 reaches this ...
MAX_NPROBE = 256  # ... or it searches this many lists
ENCODER_ROWS = 32_768  # PQ: 128 rows for each of its 256 centroids; SQ: each dim's range


def _faiss() -> Any:
    import faiss

    return faiss


# ---- building -------------------------------------------------------------------------------
def faiss_index_from_factory(dim: int, factory: str) -> Any:
    """An empty inner-product index (cosine over unit vectors) from a factory string.

    An IVF-PQ index skips FAISS' default polysemous training: it only reorders the PQ
    centroids for Hamming-distance filtering, which our searches never use (`polysemous_ht`
    stays 0), and it took 6-17 s of a 2,000-row train on 2 cores whatever the row count."""
    faiss = _faiss()
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and hasattr(faiss.downcast_index(ivf), "do_polysemous_training"):
        faiss.downcast_index(ivf).do_polysemous_training = False
    return index


def new_faiss_index(dim: int, choice: IndexChoice) -> Any:
    """An empty index for `choice`, its build-time parameters set."""
    index = faiss_index_from_factory(dim, choice.factory)
    if choice.kind == "hnsw":
        index.hnsw.efConstruction = choice.params["efConstruction"]
    return index


def train_faiss_index(index: Any, sample: list[np.ndarray]) -> None:
    """Train on `sample` (a one-array list, emptied here so the rows can be freed early).

    IVF: k-means for the lists on the whole sample (told that under 39 rows a list is
    deliberate), then the codes on at most ENCODER_ROWS of it: FAISS copies the encoder's
    training rows as residuals, and SQ once more transposed."""
    rows = sample.pop()
    if index.is_trained:
        return
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        index.train(rows)
        return
    ivf.cp.min_points_per_centroid = min(POINTS_PER_CENTROID, len(rows) // ivf.nlist)
    faiss.Clustering(ivf.d, ivf.nlist, ivf.cp).train(rows, ivf.quantizer)
    step = -(-len(rows) // ENCODER_ROWS)
    rows = np.ascontiguousarray(rows[::step]) if step > 1 else rows
    index.train(rows)  # the lists' quantizer is trained: only the codes are


def apply_search_params(index: Any, kind: str, params: dict[str, Any]) -> None:
    faiss = _faiss()
    if kind == "hnsw":
        index.hnsw.efSearch = params["efSearch"]
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = params["nprobe"]


def build_faiss_index(vectors: np.ndarray, choice: IndexChoice) -> Any:
    """An index of in-memory vectors, built as a bundle's is (tests, small collections)."""
    return _build(in_memory(vectors), len(vectors), choice, measure=False)[0]


def _build(shards: Shards, n: int, choice: IndexChoice, measure: bool = True,
           ) -> tuple[Any, IndexChoice, float]:
    """Train on a seeded sample, add shard by shard; measure recall, tuning IVF's nprobe."""
    index = new_faiss_index(_dim(shards), choice)
    k = min(RECALL_K, n)
    query_at = sample_positions(n, min(RECALL_QUERIES, n)) if measure else np.arange(0)
    train_at = np.arange(0) if index.is_trained else sample_positions(
        n, choice.params.get("train_rows", n), SEED + 1)
    queries, *sample = gather_rows(shards, query_at, train_at)
    train_faiss_index(index, sample)
    truth = stream_shards(shards, index, choice.kind, queries if measure else None, k)
    apply_search_params(index, choice.kind, choice.params)
    if truth is None:
        return index, choice, float("nan")
    return (index, *_measure(index, choice, queries, truth, k))


def _dim(shards: Shards) -> int:
    return next(int(shard.shape[1]) for shard in shards())


def _measure(index: Any, choice: IndexChoice, queries: np.ndarray, truth: ExactTopK,
             k: int) -> tuple[IndexChoice, float]:
    """Recall@k against exact search; an IVF index searches twice as many lists until it
    reaches RECALL_TARGET (or MAX_NPROBE), and records the nprobe it settled on."""
    recall = recall_of(index.search(queries, k)[1], truth)
    if choice.kind != "ivf":
        return choice, recall
    ivf = _faiss().extract_index_ivf(index)
    most = min(ivf.nlist, MAX_NPROBE)
    while recall < RECALL_TARGET and ivf.nprobe < most:
        ivf.nprobe = min(ivf.nprobe * 2, most)
        recall = recall_of(index.search(queries, k)[1], truth)
    params = {**choice.params, "nprobe": int(ivf.nprobe)}
    return IndexChoice(choice.kind, choice.factory, params, choice.reason), recall


def _record(choice: IndexChoice, index: Any, recall: float) -> dict[str, Any]:
    return {
        **choice.describe(),
        "metric": "inner_product",
        "rows": int(index.ntotal),
        "dim": int(index.d),
        f"recall@{RECALL_K}": round(recall, 4),
        "recall_queries": int(min(RECALL_QUERIES, index.ntotal)),
    }


def _save(bundle: Bundle, index: Any) -> None:
    with atomic_path(bundle.index_path) as tmp:
        _faiss().write_index(index, str(tmp))


def build_bundle_index(
    bundle: Bundle, kind: str = "auto", memory_budget: int | str = DEFAULT_MEMORY_BUDGET
) -> dict[str, Any]:
    """Build the bundle's index from its shards, measure recall@10 against exact search and
    save it atomically; returns the manifest's index record."""
    shards = bundle.iter_embedding_shards
    n = count_rows(shards)
    if n == 0:
        raise BundleError("no embeddings to index: every input was skipped (see skipped.csv)")
    choice = choose_index(kind, n, bundle.manifest.backbone.dim, memory_budget)
    index, choice, recall = _build(shards, n, choice)
    _save(bundle, index)
    return _record(choice, index, recall)


def _layout(factory: str) -> str:
    """The factory without its list count: what decides the bytes a vector."""
    return factory.split(",", 1)[1] if factory.startswith("IVF") else factory


def extend_bundle_index(
    bundle: Bundle, new_vectors: Iterable[np.ndarray],
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
) -> dict[str, Any]:
    """Add new vectors to the bundle's saved index; returns the manifest's index record with
    "rebuilt" added.

    The new vectors must already be the bundle's last rows (`add` writes their shards first).
    They are added to the saved index in place when the ladder picks the same layout for the
    new total (an IVF index keeps its lists unless the ladder wants over 4 times as many);
    otherwise the index is rebuilt from all shards. A requested kind stays requested; an
    `auto` one climbs the ladder. Recall is measured again over all rows; the index is saved
    atomically.
    """
    info = bundle.manifest.index
    if info is None or not bundle.index_path.is_file():
        raise BundleError(f"bundle {bundle.root} has no index to extend; run"
                          " `embed-dogs build-index` to make one")
    shards = bundle.iter_embedding_shards
    n, old = count_rows(shards), info.rows
    kind = info.kind if str(info.get("reason", "")).startswith("requested") else "auto"
    choice = choose_index(kind, n, bundle.manifest.backbone.dim, memory_budget)
    in_place = (choice.kind == info.kind and _layout(choice.factory) == _layout(info.factory)
                and choice.params.get("nlist", 0) <= 4 * info.params.get("nlist", 0))
    if not in_place:
        _check_total(bundle, old + count_rows(lambda: new_vectors), n)
        index, choice, recall = _build(shards, n, choice)
    else:
        index = read_bundle_index(bundle, mmap=False)
        if index.ntotal != old:
            raise IncompatibleBundleError(f"index.faiss of {bundle.root} has {index.ntotal} rows,"
                                          f" the manifest recorded {old}; rebuild the bundle")
        stream_shards(lambda: new_vectors, index, info.kind)
        _check_total(bundle, int(index.ntotal), n)
        params = {**info.params, "bytes": choice.params["bytes"]}
        choice = IndexChoice(info.kind, info.factory, params, choice.reason)
        apply_search_params(index, choice.kind, choice.params)
        k = min(RECALL_K, n)
        (queries,) = gather_rows(shards, sample_positions(n, min(RECALL_QUERIES, n)))
        truth = stream_shards(shards, queries=queries, k=k)
        choice, recall = _measure(index, choice, queries, truth, k)
    _save(bundle, index)
    return {**_record(choice, index, recall), "rebuilt": not in_place}


def _check_total(bundle: Bundle, rows: int, n: int) -> None:
    if rows != n:
        raise BundleError(f"the index of {bundle.root} would hold {rows} rows but its shards hold"
                          f" {n}: write the new vectors as shards first;"
                          f" {REBUILD_HINT.format(root=bundle.root)}")


def read_bundle_index(bundle: Bundle, mmap: bool = True) -> Any:
    """The saved index; an IVF index's lists memory-mapped (read-only) when `mmap`.

    A file FAISS cannot read, or an index of another dimension than the backbone's, is an
    error that says what to do, not a traceback."""
    faiss = _faiss()
    kind = bundle.manifest.index.kind if bundle.manifest.index else None
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap and kind == "ivf" else 0
    try:
        index = faiss.read_index(str(bundle.index_path), flags)
    except (RuntimeError, MemoryError) as exc:
        raise BundleError(
            f"{bundle.index_path.name} of {bundle.root} cannot be read ({_faiss_error(exc)});"
            f" run `embed-dogs verify --bundle {bundle.root}` or rebuild the bundle"
        ) from None
    dim = bundle.manifest.backbone.dim
    if index.d != dim:
        raise IncompatibleBundleError(
            f"{bundle.index_path.name} of {bundle.root} holds {index.d}-d vectors but the"
            f" backbone makes {dim}-d ones; rebuild the index with `embed-dogs build-index`"
        )
    return index


def _faiss_error(exc: BaseException) -> str:
    """FAISS's own words without its C++ location: 'read error in ...: 1154 != 22784'."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^Error in .*? at \S+:\d+: ", "", text)
    text = re.sub(r"^Error: '[^']*' failed: ", "", text)
    return text[:200] or type(exc).__name__


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
        manifest = bundle.manifest
        if manifest.index is None or not bundle.index_path.is_file():
            raise BundleError(
                f"bundle {bundle.root} has no index; run `embed-dogs build-index` to make one"
            )
        self.bundle = bundle
        self.info = manifest.index
        self.index = read_bundle_index(bundle)
        apply_search_params(self.index, self.info.kind, self.info.params)
        self.raw = self.index  # the raw space's index (a learned space searches its own)
        self.metadata = bundle.metadata()
        if self.index.ntotal != len(self.metadata):
            raise IncompatibleBundleError(
                f"index of {bundle.root} has {self.index.ntotal} rows but metadata has"
                f" {len(self.metadata)}; rebuild the bundle"
            )
        self.dim = manifest.backbone.dim

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

    def raw_similarities(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(n, k) cosine similarities of each query's k nearest rows in the raw space (best
        first; -inf where fewer rows): the gate's kNN signal, whatever space look-alikes use."""
        queries = LookalikeIndex._queries(self, queries)
        k = max(1, min(k, self.raw.ntotal))
        scores, positions = self.raw.search(queries, k)
        return np.where(positions >= 0, scores, -np.inf)

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
        kind, params = self.info.kind, self.info.params
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
