"""Outliers: photos far from their own breed.

A row's **same-label kNN similarity** is the mean cosine similarity to its k nearest rows of
the same label (itself and exact copies left out; the gate's exact, blocked
:func:`classify.gate.knn_similarity`, run breed by breed, so the cost is the sum of the
squared breed sizes, not the square of the collection). A row is an outlier when it falls
below its breed's lower Tukey fence, Q1 - 1.5 x IQR of that breed's own scores: a rule that
adapts to how tight each breed is and that a few odd rows cannot drag along (the quartiles
barely move). Label-blind distance (cleanlab's OutOfDistribution on features) is what the
gate's leave-one-out kNN test already measures (:mod:`classify.gate_audit`); this asks the
other question: does the photo look like the breed it is filed under?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classify.gate import KNN_K, knn_similarity

FENCE = 1.5  # Tukey's lower fence: Q1 - FENCE x IQR
MIN_ROWS = 5  # a breed needs this many rows before it can have outliers


@dataclass
class Outliers:
    rows: np.ndarray  # positions judged
    similarity: np.ndarray  # same-label kNN similarity
    fence: np.ndarray  # the breed's lower fence
    typical: np.ndarray  # the breed's median score
    flagged: np.ndarray  # bool

    @property
    def score(self) -> np.ndarray:
        """1 - similarity / the breed's median: how much less like its breed than a typical
        photo of it (0 = typical), clipped to [0, 1]."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(self.typical > 0, self.similarity / self.typical, 1.0)
        return np.clip(1.0 - ratio, 0.0, 1.0)


def find_outliers(vectors: np.ndarray, labels: np.ndarray, hashes: np.ndarray,
                  k: int = KNN_K, fence: float = FENCE) -> Outliers:
    """Judge every labelled row of a breed with at least MIN_ROWS rows."""
    raw = np.asarray(labels, dtype=object)
    labelled = np.array([isinstance(x, str) and x != "" for x in raw])
    names = raw[labelled].astype(str)
    h = np.asarray(hashes, dtype=object).astype(str)
    x = np.asarray(vectors, np.float32)
    rows_out, sims_out, fences_out, typical_out = [], [], [], []
    for label in np.unique(names):
        rows = np.flatnonzero(labelled & (raw == label))
        if len(rows) < MIN_ROWS:
            continue
        sims = knn_similarity(x[rows], x[rows], k, h[rows], h[rows])
        finite = sims[np.isfinite(sims)]
        if not len(finite):
            continue
        q1, median, q3 = np.quantile(finite, [0.25, 0.5, 0.75])
        rows_out.append(rows)
        sims_out.append(sims)
        fences_out.append(np.full(len(rows), q1 - fence * (q3 - q1)))
        typical_out.append(np.full(len(rows), median))
    if not rows_out:
        z = np.zeros(0)
        return Outliers(z.astype(np.int64), z, z, z, z.astype(bool))
    rows = np.concatenate(rows_out)
    sims = np.concatenate(sims_out)
    fences = np.concatenate(fences_out)
    return Outliers(rows, sims, fences, np.concatenate(typical_out),
                    np.isfinite(sims) & (sims < fences))
