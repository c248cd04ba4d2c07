"""The open-set gate: is a photo one of the bundle's dogs, a dog of another breed, or no dog?

A breed head always names one of its breeds, even for a cat. The gate decides first whether
naming one is honest, with three verdicts:

- ``dog``: the photo looks like the bundle's dogs, and the head is as sure as it is for them;
- ``unknown_breed``: a dog, but none of the bundle's breeds fits;
- ``not_a_dog``: far from every dog of the bundle.

Signals (chosen by measurement on the team's dev photos, see README "Answers you can trust"):

- **kNN similarity**: the mean cosine similarity of the photo to its ``k`` nearest rows of the
  bundle. Dogs of a known breed sit close to their breed's rows, dogs of another breed a bit
  further, cats and objects far away. It was the strongest signal for every backbone measured
  and needs no head.
- **the head's top probability**: a floor that catches dogs close to the known ones on
  which the head still hesitates more than on any held-out dog that passed the kNN test.

(The probability mass on ImageNet's dog classes is not available: backbones are built with
``include_top=False``, so there is no ImageNet classifier.)

Calibration uses only the bundle's own rows, never photos from elsewhere:

- ``dog_threshold``: each test-split dog is queried against all the bundle's other rows
  (itself and exact copies left out), as a new photo meets the index; the threshold keeps at
  least 95 % of them (their 5th percentile).
- ``not_dog_threshold``: each breed in turn plays the unknown breed: its test dogs are
  queried against the rows of the *other* breeds; the threshold keeps at least 95 % of
  these simulated unknown-breed dogs above it, so they are called ``unknown_breed``, not
  ``not_a_dog``.
- per head, ``top_probability_floor``: the lowest top probability among the test rows that
  pass the kNN threshold, so the floor costs no held-out dog.
"""

from __future__ import annotations

from dataclasses import dataclass
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
GATE_VERSION = 1
KNN_K = 5
DOG_RECALL = 0.95  # held-out dogs kept as `dog` (and simulated unknown breeds kept as dogs)
HOW = (
    "kNN similarity = mean cosine similarity to the k nearest bundle rows. dog_threshold: 5th"
    " percentile of the test split's dogs, each queried against all other rows (itself and"
    " exact copies left out). not_dog_threshold: 5th percentile of each breed's test dogs"
    " queried against the other breeds' rows (simulated unknown breeds)."
    " top_probability_floor: the lowest top probability of a test dog above dog_threshold."
    " Only the bundle's own rows are used."
)


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


def _head_floor(predictor: Any, held: HeldOut, passed: np.ndarray) -> dict[str, Any]:
    if predictor.needs_images:
        return {"top_probability_floor": None,
                "why": "this head reads images, not stored vectors: the kNN test alone decides"}
    top = top_probability(predictor.predict_proba(held.vectors))
    floor = float(top[passed].min()) if passed.any() else None
    kept = passed & (top >= floor) if floor is not None else passed
    return {"top_probability_floor": None if floor is None else round_down(floor),
            "test_dogs_kept_as_dog": round(float(kept.mean()), 4),
            "top_probability_of_test_dogs": _figures(top)}


def fit_gate(bundle: Bundle, k: int = KNN_K) -> dict[str, Any] | None:
    """Calibrate the gate on the bundle's own rows and record it as the manifest's `gate`
    section; None (and the section removed) when the bundle has no labelled test rows."""
    from classify.heads import load_predictor

    held = held_out_scores(bundle, k)
    if held is None:
        bundle.update_manifest(gate=None)
        return None
    dog_threshold = keep_threshold(held.knn)
    passed = held.knn >= dog_threshold
    other = held.knn_other_breeds[np.isfinite(held.knn_other_breeds)]
    not_dog = min(keep_threshold(other), dog_threshold) if len(other) else dog_threshold
    heads = {}
    for name in bundle.manifest.heads:
        if bundle.manifest.head_is_stale(name):
            continue  # not served, so no floor; refitting the head refits the gate
        heads[name] = _head_floor(load_predictor(bundle, name, accepts_images=True), held,
                                  passed)
    record = {
        "version": GATE_VERSION,
        "signal": "knn_similarity",
        "k": int(k),
        "dog_recall_target": DOG_RECALL,
        "dog_threshold": round_down(dog_threshold),
        "not_dog_threshold": round_down(not_dog),
        "heads": heads,
        "figures": {
            "test_dogs": int(len(held.knn)),
            "test_dogs_above_dog_threshold": round(float(passed.mean()), 4),
            "knn_test_dogs": _figures(held.knn),
            "knn_as_unknown_breed": _figures(other),
            # each breed left out in turn: how often the gate notices an unknown breed
            "simulated_unknown_breeds_not_called_dog": round(float(
                np.mean(other < dog_threshold)), 4) if len(other) else None,
            "simulated_unknown_breeds_called_not_a_dog": round(float(
                np.mean(other < not_dog)), 4) if len(other) else None,
        },
        "calibrated_on": "the bundle's own rows: its test split queried against the rest",
        "how": HOW,
        "fitted_on": bundle.current_rows().model_dump(),
    }
    bundle.update_manifest(gate=record)
    return record


# ---- verdicts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gate:
    """A calibrated gate, read from the manifest."""

    k: int
    dog_threshold: float
    not_dog_threshold: float
    floors: dict[str, float | None]
    known_breeds: int

    @classmethod
    def from_manifest(cls, manifest: Manifest, root: Any = "the bundle") -> Gate | None:
        """The bundle's gate; None when it has none (no labelled test rows). A gate of
        another version is refused, never silently dropped: without it every photo would
        get a breed."""
        record = manifest.gate
        if record is None:
            return None
        if record.version != GATE_VERSION:
            raise BundleError(
                f"the open-set gate of {root} is version {record.version}, this embed-dogs"
                f" uses version {GATE_VERSION}; recalibrate it with `embed-dogs train --head"
                f" logreg --bundle {root}`")
        floors = {name: head.top_probability_floor for name, head in record.heads.items()}
        breeds = max([h.breeds for h in manifest.heads.values()] or [0])
        return cls(record.k, record.dog_threshold, record.not_dog_threshold, floors, breeds)

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

    def explain(self, verdict: str, knn: float, top_prob: float | None = None,
                head: str | None = None) -> str:
        """One sentence on why, in the numbers the verdict came from."""
        if verdict == NOT_A_DOG:
            return (f"Its nearest photos in the bundle are only {knn:.2f} similar; its dogs"
                    f" score at least {self.not_dog_threshold:.2f} even for a breed it does not"
                    " know.")
        if verdict == UNKNOWN_BREED and knn < self.dog_threshold:
            return (f"Its nearest photos are {knn:.2f} similar: like a dog, but below the"
                    f" {self.dog_threshold:.2f} that 95% of the bundle's held-out dogs of known"
                    " breeds reach.")
        if verdict == UNKNOWN_BREED:
            floor = self.floors.get(head or "")
            return (f"The breed head is only {top_prob:.0%} sure, less than for any held-out"
                    f" dog of a known breed ({floor:.0%}).")
        return (f"Its nearest photos are {knn:.2f} similar (known breeds: at least"
                f" {self.dog_threshold:.2f}).")


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


def verdict_shares(verdicts: list[str]) -> dict[str, float]:
    n = max(1, len(verdicts))
    return {v: round(sum(x == v for x in verdicts) / n, 4) for v in VERDICTS}


def dev_report(dogs: Scored, sets: dict[str, tuple[str, Scored]]) -> list[dict[str, Any]]:
    """Per set (name -> (kind, scores)): AUROC and FPR at 95 % dog recall of each signal
    against the held-out test dogs, and the gate's verdict shares. The test dogs' own row
    comes first."""
    rows = [{"set": "test dogs (held out)", "kind": "dog", "images": len(dogs.knn),
             "knn_auroc": None, "knn_fpr_at_95": None, "head_auroc": None,
             "head_fpr_at_95": None, **verdict_shares(dogs.verdicts)}]
    for name, (kind, scored) in sets.items():
        row: dict[str, Any] = {"set": name, "kind": kind, "images": len(scored.knn)}
        for signal, mine, theirs in (("knn", dogs.knn, scored.knn),
                                     ("head", dogs.top_prob, scored.top_prob)):
            ok = mine is not None and theirs is not None and len(theirs)
            row[f"{signal}_auroc"] = _round(auroc(mine, theirs)) if ok else None
            row[f"{signal}_fpr_at_95"] = _round(fpr_at_recall(mine, theirs)) if ok else None
        row.update(verdict_shares(scored.verdicts))
        rows.append(row)
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
