"""The gate turned on the bundle's own rows: which stored photos would it refuse as no dog?

Each row is judged leave-one-out, as if it were a new photo meeting the index: its kNN
similarity (:mod:`classify.gate`'s definition, the mean cosine similarity to its k nearest
rows) is taken against every *other* row, itself and its exact copies (same sha256) left
out, and the calibrated gate from the manifest gives its verdict. A cat filed under
``beagle/`` is far from every dog and is refused; a dog of a known breed is not.

Exact by default (:func:`classify.gate.knn_similarity`, O(n²) in blocks); given a kNN graph
of the rows (``index.duplicates.knn_graph``, passed in by the composition root, as
`classify` never imports `index`) it reads the scores off the graph instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classify.gate import NOT_A_DOG, Gate, knn_similarity


@dataclass
class GateAudit:
    knn: np.ndarray  # leave-one-out kNN similarity per row
    verdicts: np.ndarray  # the gate's verdict per row
    not_dog_threshold: float

    @property
    def refused(self) -> np.ndarray:
        """Positions of the rows the gate calls `not_a_dog`."""
        return np.flatnonzero(self.verdicts == NOT_A_DOG)

    @property
    def score(self) -> np.ndarray:
        """How far below the not-a-dog threshold, as a share of it (0 at the threshold)."""
        t = self.not_dog_threshold
        return np.clip((t - self.knn) / t, 0.0, 1.0) if t > 0 else np.zeros(len(self.knn))


def leave_one_out_knn(vectors: np.ndarray, hashes: np.ndarray, k: int,
                      graph: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per row, the mean similarity to its k nearest other rows, rows with the same sha256
    (itself included) left out. From `graph` = (similarities, ids), best first, when given: a
    row with more exact copies than the graph has spare columns averages the fewer that
    remain."""
    h = np.asarray(hashes, dtype=object).astype(str)
    if graph is None:
        return knn_similarity(vectors, vectors, k, h, h)
    sims, ids = graph
    n = len(ids)
    same = (ids < 0) | (ids == np.arange(n)[:, None])
    safe = np.where(ids >= 0, ids, 0)
    same |= (h[safe] == h[:, None]) & (h[:, None] != "")
    masked = np.where(same, np.nan, sims.astype(np.float64))
    # keep each row's first k remaining columns (the graph is sorted best first)
    rank = np.cumsum(~same, axis=1)
    masked = np.where(rank <= k, masked, np.nan)
    with np.errstate(invalid="ignore"):
        counts = np.sum(np.isfinite(masked), axis=1)
        return np.where(counts > 0, np.nansum(masked, axis=1) / np.maximum(counts, 1), np.nan)


def audit_gate(gate: Gate, vectors: np.ndarray, hashes: np.ndarray,
               graph: tuple[np.ndarray, np.ndarray] | None = None) -> GateAudit:
    """Every row's leave-one-out kNN similarity and the calibrated gate's verdict on it (the
    kNN test alone: the head's probability floor does not decide `not_a_dog`)."""
    knn = leave_one_out_knn(vectors, hashes, gate.k, graph)
    verdicts = np.array(gate.verdicts(knn), dtype=object)
    return GateAudit(knn, verdicts, gate.not_dog_threshold)
