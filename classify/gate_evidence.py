"""A gate that needs evidence of a dog before it names a breed, or says "a dog of a breed I
do not know".

Three questions, each answered by a signal measured against the bundle's train split only:

1. **Is it a dog at all?** Two tests must both pass, or the answer is ``not_a_dog``:
   - *dog subspace*: the share of the photo's (centred) raw vector that lies outside the
     top principal directions of the train dogs' vectors (``residual``; a dog-tuned backbone
     spends those directions on dogs, of any breed);
   - *kNN similarity*: the mean cosine similarity of its ``k`` nearest rows in the raw space
     (``knn``, from the caller's index search).
   Both thresholds come from simulated unknown breeds: each train breed in turn is left out,
   the subspace and the neighbours come from the other breeds, and the thresholds keep
   ``keep_unknown`` (95 %) of the left-out dogs, so a dog of a breed the bundle lacks is still
   a dog. A third, *joint* test (``joint_min``, gate version 2) standardises both signals on
   those simulated unknown dogs and adds them (kNN z-score minus residual z-score), with a
   threshold that keeps the same share of them: a photo that only just passes both tests
   (the corner where cats and stuffed toys sit) is not a dog. On the simulated unknown dogs
   it costs nothing (they are spread along the diagonal, not in that corner).
2. **Is it one of the known breeds?** Positive evidence of an unknown breed: the photo is a
   dog (1.) and its cosine similarity to the nearest breed's centre (the mean of that breed's
   train vectors) is lower than ``keep_known`` (95 %) of known dogs reach, measured out of
   fold (5 folds of the train split, centres from the other folds). Then ``unknown_breed``.
3. **Is the breed answer confident?** Only when the head's top breed is also the breed of
   most of the photo's nearest look-alikes. Otherwise the verdict stays ``dog`` but is not
   confident, and an interface must not show the breed as a sure answer.

The calibration slice is the train split (cross-fitted); the test split stays for reporting
and the dev photos (cats, objects, an unknown breed) only chose the signals and measure.
`fit_evidence_gate` returns the fitted arrays (principal directions, breed centres) and a
JSON-able record of thresholds and figures; `EvidenceGate.verdicts` answers with a sentence.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classify.gate import DOG, NOT_A_DOG, UNKNOWN_BREED, knn_similarity
from embed.checked_arrays import read_checked_npz, save_checked_npz
from embed.errors import BundleError
from embed.labels import spoken_breed

EVIDENCE_VERSION = 2  # 2 adds the joint dog test; 1 is still read (no joint test)
READABLE_VERSIONS = (1, 2)
KNN_K = 5
PCA_DIMS = 64
FOLDS = 5
KEEP_UNKNOWN = 0.95  # simulated unknown-breed dogs kept as dogs by each dog test
KEEP_KNOWN = 0.95  # out-of-fold known dogs kept as a known breed
SEED = 0


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def dog_subspace(vectors: np.ndarray, dims: int = PCA_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, basis): the top principal directions (rows of basis) of dog vectors, at most a
    quarter of the dimensions (a subspace that spans everything would tell nothing)."""
    x = np.asarray(vectors, np.float64)
    mean = x.mean(axis=0)
    dims = max(1, min(dims, len(x) - 1, x.shape[1] // 4))
    centred = x - mean
    if len(x) < x.shape[1]:  # the smaller of the two Gram matrices: n x n ...
        values, vectors_ = np.linalg.eigh(centred @ centred.T)
        top = np.argsort(values)[::-1][:dims]
        basis = (vectors_[:, top].T @ centred) / np.sqrt(np.maximum(values[top], 1e-12))[:, None]
    else:  # ... or d x d (many rows)
        values, vectors_ = np.linalg.eigh(centred.T @ centred)
        basis = vectors_[:, np.argsort(values)[::-1][:dims]].T
    return mean, basis


def residual(vectors: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Share of each centred vector's norm outside the subspace (0: inside, 1: orthogonal)."""
    centred = np.atleast_2d(np.asarray(vectors, np.float64)) - mean
    outside = centred - (centred @ basis.T) @ basis
    norms = np.linalg.norm(centred, axis=1)
    return np.linalg.norm(outside, axis=1) / np.where(norms > 0, norms, 1.0)


def breed_centres(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(classes, unit centres): each breed's mean train vector, renormalised."""
    labels = np.asarray(labels).astype(str)
    classes = np.unique(labels)
    return classes, _unit(np.stack([np.asarray(vectors)[labels == c].mean(axis=0)
                                    for c in classes]))


def _keep(scores: np.ndarray, keep: float, high_is_good: bool = True) -> float:
    """The threshold that keeps `keep` of the scores on the good side."""
    values = np.asarray(scores, np.float64)
    values = values[np.isfinite(values)]
    return float(np.quantile(values, 1.0 - keep if high_is_good else keep))


@dataclass(frozen=True)
class Answer:
    verdict: str  # dog, unknown_breed, not_a_dog
    confident: bool  # a breed may be shown as the answer (dog, and head and neighbours agree)
    why: str


@dataclass(eq=False)
class EvidenceGate:
    record: dict[str, Any]  # thresholds and figures, JSON-able
    mean: np.ndarray
    basis: np.ndarray
    classes: np.ndarray
    centres: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.record["k"])

    def joint(self, knn: np.ndarray, res: np.ndarray) -> np.ndarray | None:
        """The joint dog score (kNN z-score minus residual z-score, standardised on the
        simulated unknown dogs); None for a version-1 gate, which has no joint test."""
        scale = self.record.get("joint")
        if not scale:
            return None
        return joint_score(knn, res, scale)

    def signals(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """The stored-vector signals of raw query vectors: residual outside the dog
        subspace, similarity to the nearest breed centre, and that breed."""
        x = _unit(np.atleast_2d(vectors))
        sims = x @ self.centres.T
        return {"residual": residual(x, self.mean, self.basis),
                "breed_similarity": sims.max(axis=1),
                "nearest_breed": self.classes[sims.argmax(axis=1)]}

    def verdicts(self, vectors: np.ndarray, knn: np.ndarray,
                 head_breeds: Any = None, neighbour_breeds: Any = None) -> list[Answer]:
        """Per raw query vector: its verdict, whether a breed may be shown as sure, and why.
        `knn`: mean cosine similarity of its k nearest bundle rows in the raw space;
        `head_breeds`: the head's top breed per query; `neighbour_breeds`: the breeds of its
        nearest look-alikes (best first, any space), per query."""
        sig = self.signals(vectors)
        t = self.record["thresholds"]
        knn = np.asarray(knn, np.float64)
        joint = self.joint(knn, sig["residual"])
        out = []
        for i, score in enumerate(knn):
            res, near = float(sig["residual"][i]), float(sig["breed_similarity"][i])
            if res > t["residual_max"]:
                out.append(Answer(NOT_A_DOG, False, (
                    f"{res:.0%} of it lies outside what the bundle's dogs have in common; dogs"
                    f" of a breed it does not know stay within {t['residual_max']:.0%}.")))
            elif not np.isfinite(score) or score < t["knn_min"]:
                out.append(Answer(NOT_A_DOG, False, (
                    f"Its nearest photos in the bundle are only {score:.2f} similar; dogs of a"
                    f" breed it does not know reach {t['knn_min']:.2f}.")))
            elif joint is not None and not joint[i] >= t["joint_min"]:
                out.append(Answer(NOT_A_DOG, False, (
                    f"It only just passes both dog tests ({res:.0%} outside the dogs' common"
                    f" directions, nearest photos {score:.2f} similar): taken together that is"
                    " less dog-like than dogs of a breed the bundle lacks.")))
            elif near < t["breed_similarity_min"]:
                out.append(Answer(UNKNOWN_BREED, False, (
                    f"It looks like a dog (its nearest photos are {score:.2f} similar), but"
                    " its similarity to the closest breed,"
                    f" {spoken_breed(sig['nearest_breed'][i])}, is only {near:.2f};"
                    " dogs of the known breeds reach"
                    f" {t['breed_similarity_min']:.2f}.")))
            else:
                out.append(self._known(i, near, head_breeds, neighbour_breeds))
        return out

    def _known(self, i: int, near: float, head_breeds: Any, neighbour_breeds: Any) -> Answer:
        if head_breeds is None or neighbour_breeds is None:
            return Answer(DOG, True, f"It is {near:.2f} similar to a known breed.")
        head = str(head_breeds[i])
        said = spoken_breed(head)
        found = [str(b) for b in list(neighbour_breeds[i])[:self.k]]
        agree = sum(b == head for b in found)
        if found and agree * 2 > len(found):
            return Answer(DOG, True, (f"The breed head says {said}, and {agree} of its"
                                      f" {len(found)} nearest look-alikes are {said} too."))
        return Answer(DOG, False, (f"A dog of a known breed, but the breed head says {said}"
                                   f" while only {agree} of its {len(found)} nearest look-alikes"
                                   " agree: not a sure answer."))

    # ---- persistence ----------------------------------------------------------------------
    def _entries(self) -> dict[str, np.ndarray]:
        return {"mean": np.asarray(self.mean, np.float64),
                "basis": np.asarray(self.basis, np.float64),
                "classes": np.asarray(self.classes).astype(str),
                "centres": np.asarray(self.centres, np.float64),
                "record": np.array(json.dumps(self.record, sort_keys=True))}

    def save(self, path: str | Path) -> str:
        return save_checked_npz(path, self._entries())

    @classmethod
    def load(cls, path: str | Path) -> EvidenceGate:
        try:
            entries, intact = read_checked_npz(path)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path} is not a readable gate file ({exc})") from None
        if set(entries) != {"mean", "basis", "classes", "centres", "record"} or not intact:
            raise BundleError(f"{path} is damaged (checksum mismatch); refit the gate")
        record = json.loads(str(entries["record"]))
        if record.get("version") not in READABLE_VERSIONS:
            raise BundleError(f"{path} holds a gate this version cannot read")
        return cls(record, entries["mean"], entries["basis"], entries["classes"],
                   entries["centres"])


# ---- calibration on the train split -----------------------------------------------------------
def simulated_unknown(vectors: np.ndarray, labels: np.ndarray, k: int = KNN_K,
                      dims: int = PCA_DIMS) -> dict[str, np.ndarray]:
    """Each breed left out in turn: its rows' residual outside the other breeds' subspace and
    their kNN similarity to the other breeds' rows."""
    labels = np.asarray(labels).astype(str)
    res, knn = np.empty(len(labels)), np.empty(len(labels))
    for breed in np.unique(labels):
        out = labels == breed
        mean, basis = dog_subspace(vectors[~out], dims)
        res[out] = residual(vectors[out], mean, basis)
        knn[out] = knn_similarity(vectors[out], vectors[~out], k)
    return {"residual": res, "knn": knn}


def out_of_fold_known(vectors: np.ndarray, labels: np.ndarray, folds: int = FOLDS,
                      seed: int = SEED) -> np.ndarray:
    """Each row's similarity to its nearest breed centre, centres from the other folds. A
    breed with one train photo cannot be held out and still have a centre: its row stays in
    every fit and gets NaN (unmeasured), unless no breed has two photos."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels).astype(str)
    names, counts = np.unique(labels, return_counts=True)
    measurable = np.isin(labels, names[counts >= 2])
    if not measurable.any():
        measurable[:] = True  # nothing can be measured properly: hold out what there is
    held_out = np.flatnonzero(measurable)
    folds = max(2, min(folds, int(np.unique(labels[held_out], return_counts=True)[1].min())))
    near = np.full(len(labels), np.nan)
    with warnings.catch_warnings():  # only the fall-back above has breeds of one row
        warnings.filterwarnings("ignore", message="The least populated class")
        splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(
            held_out, labels[held_out]))
    for _, fold in splits:
        held = held_out[fold]
        fit_rows = np.setdiff1d(np.arange(len(labels)), held)
        _, centres = breed_centres(vectors[fit_rows], labels[fit_rows])
        near[held] = (_unit(vectors[held]) @ centres.T).max(axis=1)
    return near


def fit_evidence_gate(vectors: np.ndarray, labels: np.ndarray, k: int = KNN_K,
                      dims: int = PCA_DIMS, keep_unknown: float = KEEP_UNKNOWN,
                      keep_known: float = KEEP_KNOWN, folds: int = FOLDS,
                      fitted_on: dict[str, Any] | None = None) -> EvidenceGate:
    """Fit on the train split's raw vectors and breeds (at least two breeds, two rows each);
    never on the rows the gate is then reported on."""
    x = _unit(vectors)
    y = np.asarray(labels).astype(str)
    if len(np.unique(y)) < 2 or len(x) != len(y):
        raise ValueError("the evidence gate needs labelled rows of at least two breeds")
    unknown = simulated_unknown(x, y, k, dims)
    known_near = out_of_fold_known(x, y, folds)
    scale = joint_scale(unknown["knn"], unknown["residual"])
    joint = joint_score(unknown["knn"], unknown["residual"], scale)
    thresholds = {"residual_max": _keep(unknown["residual"], keep_unknown, high_is_good=False),
                  "knn_min": _keep(unknown["knn"], keep_unknown),
                  "joint_min": _keep(joint, keep_unknown),
                  "breed_similarity_min": _keep(known_near, keep_known)}
    thresholds = {key: round(value, 6) for key, value in thresholds.items()}
    mean, basis = dog_subspace(x, dims)
    classes, centres = breed_centres(x, y)
    t = thresholds
    is_dog = ((unknown["residual"] <= t["residual_max"]) & (unknown["knn"] >= t["knn_min"])
              & (joint >= t["joint_min"]))
    record = {
        "version": EVIDENCE_VERSION, "k": int(k), "pca_dims": int(basis.shape[0]),
        "keep_unknown": keep_unknown, "keep_known": keep_known, "folds": int(folds),
        "thresholds": thresholds, "joint": scale,
        "figures": {
            "train_rows": int(len(x)), "breeds": int(len(classes)),
            "simulated_unknown_kept_as_dog": round(float(is_dog.mean()), 4),
            "simulated_unknown_called_unknown_breed": round(float(np.mean(
                is_dog & (np.array([_max_other(x[i], centres, classes, y[i])
                                    for i in range(len(x))]) < t["breed_similarity_min"]))),
                4),
            "known_out_of_fold_kept_as_known": round(float(np.mean(
                known_near[np.isfinite(known_near)] >= t["breed_similarity_min"])), 4),
        },
        "calibrated_on": "the train split only: breeds left out in turn (dog tests) and"
                         f" {folds} folds (known-breed test); the test split is never used",
        **({"fitted_on": fitted_on} if fitted_on else {}),
    }
    return EvidenceGate(record, mean, basis, classes, centres)


def joint_scale(knn: np.ndarray, res: np.ndarray) -> dict[str, float]:
    """Mean and spread of both dog signals over the simulated unknown dogs."""
    k, r = np.asarray(knn, np.float64), np.asarray(res, np.float64)
    spread = 1e-6  # signals with no spread (constructed vectors): one unit of 1e-6
    return {"knn_mean": round(float(k.mean()), 6),
            "knn_sd": round(max(float(k.std()), spread), 6),
            "residual_mean": round(float(r.mean()), 6),
            "residual_sd": round(max(float(r.std()), spread), 6)}


def joint_score(knn: np.ndarray, res: np.ndarray, scale: dict[str, float]) -> np.ndarray:
    """High for dog-like photos: close neighbours and little outside the dogs' subspace."""
    k, r = np.asarray(knn, np.float64), np.asarray(res, np.float64)
    return ((k - scale["knn_mean"]) / scale["knn_sd"]
            - (r - scale["residual_mean"]) / scale["residual_sd"])


def _max_other(x: np.ndarray, centres: np.ndarray, classes: np.ndarray, own: str) -> float:
    """Similarity to the nearest centre of another breed (the row's breed left out)."""
    sims = centres @ x
    return float(np.max(np.where(classes != own, sims, -np.inf)))
