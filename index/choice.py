"""Choosing an index: a short ladder of rules, as autofaiss does, kept free of FAISS itself.

Every candidate's memory is estimated from its layout (the `*_bytes` functions), so `auto`
takes the first rung that fits the budget and its reason says how much it needs; when no rung
fits, it refuses and names the smallest budget that would do.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from embed.errors import EmbedDogsError

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
DEFAULT_INDEX_KIND = "auto"
DEFAULT_MEMORY_BUDGET = "2G"
FLAT_MAX_ROWS = 50_000  # exact search stays fast (well under 10 ms a query) up to about here
HNSW_MAX_ROWS = 2_000_000
HNSW_M = 32
HNSW_BYTES_PER_LINK = 4 * 2  # int32 ids, about 2*M links per vector on level 0, twice for slack
POINTS_PER_CENTROID = 39  # FAISS wants 39 training points per k-means centroid
PQ_CENTROIDS = 256  # 8-bit codes
PQ_MIN_TRAIN = PQ_CENTROIDS * POINTS_PER_CENTROID
PQ_CODES = (64, 48, 32, 16, 8, 4)  # code bytes a vector, largest first
ID_BYTES = 8  # inverted lists store an int64 id beside every code
TRAIN_MAX_ROWS = 100_000  # IVF trains on a sample of at most this many rows
NPROBE = 16  # lists searched a query; the build raises it until the recall target is met

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class IndexBudgetError(EmbedDogsError, ValueError):
    """No index of the collection fits the memory budget; the message names one that does."""


def parse_budget(text: str | int) -> int:
    """'4G', '512M', '1.5G' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)I?B?\s*", str(text).upper())
    if not match:
        raise ValueError(f"cannot read memory budget {text!r}; write e.g. 512M or 4G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(n: int) -> str:
    """Bytes as the budget option reads them, rounded up: 5 MiB + 1 byte -> '5.1M'."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            value = math.ceil(n / _UNITS[unit] * 10) / 10
            return f"{value:g}{unit}"
    return str(n)


@dataclass(frozen=True)
class IndexChoice:
    kind: str  # flat | hnsw | ivf
    factory: str  # FAISS index_factory string
    params: dict[str, Any]  # search parameters, "bytes" (the estimate); ivf: nlist, train_rows
    reason: str

    def describe(self) -> dict[str, Any]:
        return asdict(self)


# ---- memory of each layout ------------------------------------------------------------------
def flat_bytes(n: int, dim: int) -> int:
    return n * dim * 4


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    """The vectors and the graph's links."""
    return n * (dim * 4 + 2 * m * HNSW_BYTES_PER_LINK)


def ivf_flat_bytes(n: int, dim: int, nlist: int) -> int:
    """Full vectors and their ids in the lists, plus the centroids."""
    return n * (dim * 4 + ID_BYTES) + nlist * dim * 4


def ivf_sq_bytes(n: int, dim: int, nlist: int, bits: int) -> int:
    """`bits` a dimension and the id a vector, the centroids and the quantizer's ranges."""
    return n * (-(-dim * bits // 8) + ID_BYTES) + nlist * dim * 4 + 2 * dim * 4


def ivf_pq_bytes(n: int, dim: int, nlist: int, code: int) -> int:
    """`code` bytes and the id a vector, the centroids and the PQ codebooks."""
    return n * (code + ID_BYTES) + nlist * dim * 4 + PQ_CENTROIDS * dim * 4


def ivf_lists(n: int) -> int:
    """About sqrt(n) lists, a power of two, at least 39 training points per list.

    Training (k-means on the sample) and adding (assigning every vector) cost about
    rows * lists * dim each, so the usual 4 * sqrt(n) lists cost four times as much on a
    laptop's cores; a query scans longer lists instead (and the build tunes nprobe)."""
    lists = 2 ** round(math.log2(max(math.sqrt(n), 1)))
    return max(1, min(lists, n // POINTS_PER_CENTROID))


def pq_code(n: int, dim: int, nlist: int, budget: int) -> int:
    """The largest PQ code (bytes) dividing dim, at least 4 dims a code, within the budget."""
    for m in PQ_CODES:
        if dim % m == 0 and m <= dim // 4 and ivf_pq_bytes(n, dim, nlist, m) <= budget:
            return m
    return 0


def smallest_pq_code(dim: int) -> int:
    return next((m for m in reversed(PQ_CODES) if dim % m == 0 and m <= dim // 4), 0)


def training_rows(n: int, dim: int, nlist: int, budget: int) -> int:
    """Rows of the seeded sample an IVF index trains on: all of them up to TRAIN_MAX_ROWS, fewer
    when the sample and FAISS's copy of its residuals would outgrow the budget, but never fewer
    than PQ needs or than 4 a list."""
    affordable = budget // (2 * dim * 4)
    return min(n, max(min(TRAIN_MAX_ROWS, affordable), PQ_MIN_TRAIN, 4 * nlist))


# ---- the ladder -----------------------------------------------------------------------------
def _ivf(factory: str, n: int, dim: int, budget: int, size: int, reason: str) -> IndexChoice:
    nlist = ivf_lists(n)
    params = {"nlist": nlist, "nprobe": min(nlist, NPROBE), "bytes": size,
              "train_rows": training_rows(n, dim, nlist, budget)}
    return IndexChoice("ivf", factory, params, reason)


def _flat(size: int, reason: str) -> IndexChoice:
    return IndexChoice("flat", "Flat", {"bytes": size}, reason)


def _hnsw(size: int, reason: str) -> IndexChoice:
    params = {"efConstruction": 80, "efSearch": 64, "bytes": size}
    return IndexChoice("hnsw", f"HNSW{HNSW_M},Flat", params, reason)


def choose_index(kind: str, n: int, dim: int, memory_budget: int | str) -> IndexChoice:
    """Pick the index for n vectors of dim floats; `auto` takes the first rung that fits."""
    budget = parse_budget(memory_budget)
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind != "auto":
        return _requested(kind, n, dim, budget)
    nlist, of = ivf_lists(n), f"of the {format_bytes(budget)} budget"
    size = flat_bytes(n, dim)
    if n <= FLAT_MAX_ROWS and size <= budget:
        return _flat(size, f"{n} vectors: exact search is fast enough; needs {_b(size)} {of}")
    size = hnsw_bytes(n, dim)
    if n <= HNSW_MAX_ROWS and size <= budget:
        return _hnsw(size, f"{n} vectors: a graph needs {_b(size)} {of}")
    full = ivf_flat_bytes(n, dim, nlist)
    if full <= budget:
        return _ivf(f"IVF{nlist},Flat", n, dim, budget, full,
                    f"{n} vectors: full vectors in inverted lists need {_b(full)} {of}")
    sq8 = ivf_sq_bytes(n, dim, nlist, 8)
    if sq8 <= budget:
        return _ivf(f"IVF{nlist},SQ8", n, dim, budget, sq8,
                    f"{n} vectors: full vectors need {_b(full)}; 8-bit codes {_b(sq8)} {of}")
    sq4 = ivf_sq_bytes(n, dim, nlist, 4)
    if sq4 <= budget:
        return _ivf(f"IVF{nlist},SQ4", n, dim, budget, sq4,
                    f"{n} vectors: 8-bit codes need {_b(sq8)}; 4-bit codes {_b(sq4)} {of}")
    code = pq_code(n, dim, nlist, budget)
    if code and n >= PQ_MIN_TRAIN:
        size = ivf_pq_bytes(n, dim, nlist, code)
        return _ivf(f"IVF{nlist},PQ{code}", n, dim, budget, size,
                    f"{n} vectors: 4-bit codes need {_b(sq4)}; {code}-byte PQ codes"
                    f" {_b(size)} {of}")
    raise IndexBudgetError(too_small(n, dim, budget))


def _b(size: int) -> str:
    return format_bytes(size)


def too_small(n: int, dim: int, budget: int) -> str:
    """Why no rung fits, and the smallest budget that would."""
    nlist, code = ivf_lists(n), smallest_pq_code(dim)
    options = {f"IVF{nlist},SQ4": ivf_sq_bytes(n, dim, nlist, 4)}
    if n <= FLAT_MAX_ROWS:
        options["Flat"] = flat_bytes(n, dim)
    if code and n >= PQ_MIN_TRAIN:
        options[f"IVF{nlist},PQ{code}"] = ivf_pq_bytes(n, dim, nlist, code)
    what = min(options, key=options.__getitem__)
    note = f" (PQ codes need {PQ_MIN_TRAIN} vectors to train)" if n < PQ_MIN_TRAIN else ""
    return (f"{n} x {dim} vectors need at least {format_bytes(options[what])} as {what}{note},"
            f" more than the {format_bytes(budget)} memory budget; raise --memory-budget")


def _requested(kind: str, n: int, dim: int, budget: int) -> IndexChoice:
    """An explicitly requested kind: built as asked; the budget only sizes IVF's codes."""
    if kind == "flat":
        size = flat_bytes(n, dim)
        return _flat(size, f"requested; needs {format_bytes(size)}")
    if kind == "hnsw":
        size = hnsw_bytes(n, dim)
        return _hnsw(size, f"requested; needs {format_bytes(size)}")
    nlist = ivf_lists(n)
    code = pq_code(n, dim, nlist, budget) or smallest_pq_code(dim)
    if code and n >= PQ_MIN_TRAIN:
        size = ivf_pq_bytes(n, dim, nlist, code)
        return _ivf(f"IVF{nlist},PQ{code}", n, dim, budget, size,
                    f"requested; {code} bytes a vector, needs {format_bytes(size)}")
    size = ivf_flat_bytes(n, dim, nlist)
    return _ivf(f"IVF{nlist},Flat", n, dim, budget, size,
                f"requested; too few vectors for PQ, needs {format_bytes(size)}")
