"""Choosing an index: a short ladder of rules, as autofaiss does, kept free of FAISS itself."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
DEFAULT_INDEX_KIND = "auto"
DEFAULT_MEMORY_BUDGET = "2G"
FLAT_MAX_ROWS = 50_000  # exact search stays fast (well under 10 ms a query) up to about here
HNSW_MAX_ROWS = 2_000_000
HNSW_M = 32
PQ_MIN_TRAIN = 256 * 39  # FAISS wants 39 training points per PQ centroid
HNSW_BYTES_PER_LINK = 4 * 2  # int32 ids, about 2*M links per vector on level 0

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_budget(text: str | int) -> int:
    """'4G', '512M', '1.5G' or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)I?B?\s*", str(text).upper())
    if not match:
        raise ValueError(f"cannot read memory budget {text!r}; write e.g. 512M or 4G")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class IndexChoice:
    kind: str  # flat | hnsw | ivf
    factory: str  # FAISS index_factory string
    params: dict[str, Any]
    reason: str

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def flat_bytes(n: int, dim: int) -> int:
    return n * dim * 4


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M) -> int:
    return n * (dim * 4 + 2 * m * HNSW_BYTES_PER_LINK)


def _pq_size(dim: int, budget_per_vector: float) -> int:
    """The largest PQ code (bytes) dividing dim, at least 4 dims a code, within the budget."""
    for m in (64, 48, 32, 16, 8, 4):
        if dim % m == 0 and m <= dim // 4 and m <= budget_per_vector:
            return m
    return 0  # no sensible code: keep full vectors in the lists


def ivf_lists(n: int) -> int:
    """About 4 * sqrt(n) lists, a power of two, at least 39 training points per list."""
    lists = 2 ** round(math.log2(max(4.0 * math.sqrt(n), 1)))
    return max(1, min(lists, n // 39))


def choose_index(kind: str, n: int, dim: int, memory_budget: int | str) -> IndexChoice:
    """Pick the index for n vectors of dim floats; `auto` climbs the ladder by size and budget."""
    budget = parse_budget(memory_budget)
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        if n <= FLAT_MAX_ROWS and flat_bytes(n, dim) <= budget:
            kind, reason = "flat", f"{n} vectors: exact search is fast enough"
        elif n <= HNSW_MAX_ROWS and hnsw_bytes(n, dim) <= budget:
            kind, reason = "hnsw", f"{n} vectors fit the {budget >> 20} MiB budget as a graph"
        else:
            kind, reason = "ivf", f"{n} vectors: compressed to fit the {budget >> 20} MiB budget"
    else:
        reason = "requested"
    if kind == "flat":
        return IndexChoice("flat", "Flat", {}, reason)
    if kind == "hnsw":
        return IndexChoice(
            "hnsw", f"HNSW{HNSW_M},Flat", {"efConstruction": 80, "efSearch": 64}, reason
        )
    lists = ivf_lists(n)
    code = _pq_size(dim, budget / max(n, 1) * 0.8)
    params = {"nlist": lists, "nprobe": min(lists, 16)}
    if code and n >= PQ_MIN_TRAIN:
        return IndexChoice("ivf", f"IVF{lists},PQ{code}", params, reason)
    return IndexChoice("ivf", f"IVF{lists},Flat", params, reason + "; too few vectors for PQ")
