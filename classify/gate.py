"""The open-set gate's shared pieces: verdict names, the kNN-similarity signal, the
bundle's held-out scores, and the AUROC / FPR@95 report of `evaluate`.

Verdicts are made by the evidence gate (:mod:`classify.gate_evidence`, fitted and stored by
:mod:`classify.gate_store`), which needs evidence of a dog before it answers `dog` or
`unknown_breed`. What stays here:

- **kNN similarity**: the mean cosine similarity of a photo to its ``k`` nearest rows of the
  bundle (raw space). One of the evidence gate's dog tests, the audit's not-a-dog signal, and
  the signal `evaluate`'s AUROC / FPR at 95 % dog recall report is about (kept: it says how
  separable the dev sets are, independent of the thresholds);
- `Gate`: the kNN test alone, read from the manifest, for the audit's leave-one-out pass over
  stored rows (the evidence gate's `knn_min` is its not-a-dog threshold).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embed.bundle import Bundle
from embed.errors import BundleError
from embed.manifest import Manifest
from embed.vectors import exact_knn

DOG = "dog"
UNKNOWN_BREED = "unknown_breed"
NOT_A_DOG = "not_a_dog"
VERDICTS = (DOG, UNKNOWN_BREED, NOT_A_DOG)
GATE_VERSION = 1  # the kNN-threshold gate; the evidence gate records version 2
KNN_K = 5
DOG_RECALL = 0.95  # held-out dogs kept as `dog` (and simulated unknown breeds kept as dogs)


# ---- signals ----------------------------------------------------------------------------------
def knn_similarity(queries: np.ndarray, reference: np.ndarray, k: int = KNN_K,
                   query_keys: np.ndarray | None = None,
                   reference_keys: np.ndarray | None = None) -> np.ndarray:
    """Per query, the mean of its k largest cosine similarities to `reference` (exact, through
    `embed.vectors.exact_knn`). With keys, a query skips the reference rows that share its
    key: keyed by content hash, itself and its exact copies (leave one out); keyed by breed,
    its whole breed (the score of a dog whose breed the bundle does not know). NaN for a query
    with no candidate left."""
    scores, _ = exact_knn(queries, reference, k, query_keys, reference_keys)
    if scores.shape[1] == 0:
        return np.full(len(scores), np.nan, np.float64)
    top = np.where(np.isfinite(scores), scores, np.nan).astype(np.float64)
    counts = np.isfinite(top).sum(axis=1)
    sums = np.nansum(top, axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def knn_from_neighbours(similarities: Any, k: int = KNN_K) -> np.ndarray:
    """The kNN similarity from an index search's scores (per query, best first)."""
    rows = [list(row)[:k] for row in similarities]
    return np.array([float(np.mean(row)) if row else np.nan for row in rows], np.float64)


def top_probability(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities, np.float64).max(axis=1)


def keep_threshold(scores: np.ndarray, keep: float = DOG_RECALL) -> float:
    """The largest threshold t with at least `keep` of the scores >= t."""
    values = np.sort(np.asarray(scores, np.float64)[np.isfinite(scores)])
    if not len(values):
        raise ValueError("no scores to choose a threshold from")
    return float(values[int(np.floor((1.0 - keep) * len(values) + 1e-9))])


def round_down(value: float, digits: int = 6) -> float:
    """Rounded towards minus infinity: a recorded threshold never exceeds the score that set
    it, so the held-out dog that set it stays a dog."""
    scale = 10.0 ** digits
    return float(np.floor(value * scale) / scale)


def _figures(scores: np.ndarray) -> dict[str, float]:
    values = np.asarray(scores, np.float64)
    values = values[np.isfinite(values)]
    return {"n": int(len(values)),
            **{name: round(float(np.quantile(values, q)), 6) for name, q in
               (("min", 0.0), ("p5", 0.05), ("median", 0.5), ("max", 1.0))}}


# ---- calibration -----------------------------------------------------------------------------
@dataclass
class HeldOut:
    """The bundle's own calibration rows: test dogs and their kNN scores."""

    vectors: np.ndarray
    labels: np.ndarray
    knn: np.ndarray  # against every other row, as a new photo meets the index
    knn_other_breeds: np.ndarray  # against the labelled rows of the other breeds


def held_out_scores(bundle: Bundle, k: int = KNN_K) -> HeldOut | None:
    """The test split's dogs, each queried against all the bundle's other rows (itself and
    exact copies left out), as a new photo is queried against the index; and against the
    rows of the other breeds only. None without labelled test rows and two train breeds."""
    table = bundle.metadata()
    vectors = bundle.embeddings()
    labels = table["label"].to_numpy(object)
    splits = table["split"].to_numpy(object)
    hashes = table["sha256"].astype(str).to_numpy()
    labelled = table["label"].notna().to_numpy()
    test = labelled & (splits == "test")
    train_breeds = {str(x) for x in labels[labelled & (splits == "train")]}
    if not test.any() or len(train_breeds) < 2 or len(vectors) != len(table):
        return None
    x_test = vectors[test]
    y_test = labels[test].astype(str)
    return HeldOut(
        x_test, y_test, knn_similarity(x_test, vectors, k, hashes[test], hashes),
        knn_similarity(x_test, vectors[labelled], k, y_test, labels[labelled].astype(str)),
    )


# ---- verdicts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """The kNN test of the bundle's gate (not-a-dog below `not_dog_threshold`), for passes
    over stored rows such as the audit. Query verdicts come from the evidence gate."""

    k: int
    dog_threshold: float
    not_dog_threshold: float
    floors: dict[str, float | None] = field(default_factory=dict)
    known_breeds: int = 0

    @classmethod
    def from_manifest(cls, manifest: Manifest, root: Any = "the bundle") -> Gate | None:
        """The bundle's kNN test; None when it has no gate. A version-1 gate's own
        thresholds, an evidence gate's `knn_min` for both."""
        record = manifest.gate
        if record is None:
            return None
        breeds = max([h.breeds for h in manifest.heads.values()] or [0])
        if record.version == GATE_VERSION and record.dog_threshold is not None:
            floors = {n: h.top_probability_floor for n, h in record.heads.items()}
            return cls(record.k, record.dog_threshold,
                       record.not_dog_threshold or record.dog_threshold, floors, breeds)
        knn_min = record.thresholds.get("knn_min")
        if knn_min is None:
            raise BundleError(f"the open-set gate of {root} has no kNN threshold; recalibrate"
                              f" it with `embed-dogs train --head logreg --bundle {root}`")
        return cls(record.k, float(knn_min), float(knn_min), {}, breeds)

    def verdict(self, knn: float, top_prob: float | None = None,
                head: str | None = None) -> str:
        """`not_a_dog` far from every dog, `unknown_breed` near dogs but not near enough (or
        the head less sure than on any held-out dog), else `dog`."""
        if not np.isfinite(knn) or knn < self.not_dog_threshold:
            return NOT_A_DOG
        if knn < self.dog_threshold:
            return UNKNOWN_BREED
        floor = self.floors.get(head) if head else None
        if floor is not None and top_prob is not None and top_prob < floor:
            return UNKNOWN_BREED
        return DOG

    def verdicts(self, knn: np.ndarray, top_prob: np.ndarray | None = None,
                 head: str | None = None) -> list[str]:
        probs = [None] * len(knn) if top_prob is None else [float(p) for p in top_prob]
        return [self.verdict(float(s), p, head) for s, p in zip(knn, probs, strict=True)]


# ---- reporting -------------------------------------------------------------------------------
def auroc(positives: np.ndarray, negatives: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance a positive scores above a negative (ties half)."""
    pos = np.asarray(positives, np.float64)
    neg = np.asarray(negatives, np.float64)
    if not len(pos) or not len(neg):
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2)
                 / (len(pos) * len(neg)))


def fpr_at_recall(positives: np.ndarray, negatives: np.ndarray,
                  recall: float = DOG_RECALL) -> float | None:
    """Share of negatives at or above the threshold that keeps `recall` of the positives."""
    if not len(positives) or not len(negatives):
        return None
    threshold = keep_threshold(np.asarray(positives, np.float64), recall)
    return float(np.mean(np.asarray(negatives, np.float64) >= threshold))


@dataclass
class Scored:
    """One set of photos, scored the way queries are."""

    knn: np.ndarray
    top_prob: np.ndarray | None
    verdicts: list[str]
    sure: list[bool] | None = None  # shown as a sure known breed (head and look-alikes agree)


def verdict_shares(verdicts: list[str], sure: list[bool] | None = None) -> dict[str, Any]:
    """Each verdict's share, the share shown as a sure breed, and the dog share's Wilson
    interval."""
    from classify.intervals import wilson_interval

    n = max(1, len(verdicts))
    dogs = sum(x == DOG for x in verdicts)
    low, high = wilson_interval(dogs, len(verdicts)) or (None, None)
    return {**{v: round(sum(x == v for x in verdicts) / n, 4) for v in VERDICTS},
            "dog_ci95": None if low is None else [round(low, 4), round(high, 4)],
            "sure_breed": None if sure is None else round(sum(sure) / n, 4)}


def dev_report(dogs: Scored, sets: dict[str, tuple[str, Scored]]) -> list[dict[str, Any]]:
    """Per set (name -> (kind, scores)): AUROC and FPR at 95 % dog recall of each signal
    against the held-out test dogs, and the gate's verdict shares. The test dogs' own row
    comes first."""
    rows = [{"set": "test dogs (held out)", "kind": "dog", "images": len(dogs.knn),
             "knn_auroc": None, "knn_fpr_at_95": None, "head_auroc": None,
             "head_fpr_at_95": None, **verdict_shares(dogs.verdicts, dogs.sure)}]
    for name, (kind, scored) in sets.items():
        row: dict[str, Any] = {"set": name, "kind": kind, "images": len(scored.knn)}
        for signal, mine, theirs in (("knn", dogs.knn, scored.knn),
                                     ("head", dogs.top_prob, scored.top_prob)):
            ok = mine is not None and theirs is not None and len(theirs)
            row[f"{signal}_auroc"] = _round(auroc(mine, theirs)) if ok else None
            row[f"{signal}_fpr_at_95"] = _round(fpr_at_recall(mine, theirs)) if ok else None
        row.update(verdict_shares(scored.verdicts, scored.sure))
        rows.append(row)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
