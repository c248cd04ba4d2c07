"""Label issues: photos probably filed under the wrong breed.

Confident learning (cleanlab >= 2.8, Apache-2.0) on *out-of-sample* predicted probabilities:
each labelled row's probabilities come from a logistic-regression head (the bundle's own
recipe, :func:`classify.logreg.make_logreg_pipeline`) fitted on the other folds of a seeded
stratified k-fold over the stored embeddings (``sklearn.model_selection.cross_val_predict``),
never from a head that saw the row. cleanlab estimates how often each breed is filed as each
other breed and flags, per breed, the rows that estimate says are most likely misfiled
(``cleanlab.filter.find_label_issues``, ``filter_by=FILTER_BY``); its label quality (the
out-of-sample probability of the given label, "self-confidence") ranks them, and the most
probable other breed is the suggestion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classify.logreg import SEED, make_logreg_pipeline

FOLDS = 5
# cleanlab's filter, chosen by measurement (benchmarks/audit_planted.py, 30 of 665 photos moved
# to another breed, dog-tuned MobileNetV2): flagged rows / moved photos found
#   prune_by_noise_rate (cleanlab's default) 44 / 23    both 36 / 23    confident_learning 39 / 23
#   prune_by_class 46 / 27    low_self_confidence 39 / 26    predicted_neq_given 103 / 30
# prune_by_class finds the most within the budget of 3 flagged rows per misfiled photo.
FILTER_BY = "prune_by_class"


# Memory: lbfgs fits in float64, so 5-fold logistic regression on 100k x 1280 held a float64
# copy of 80k rows (820 MB) beside the scaled float32 fold, the fold and the vectors: 2.8 GB
# peak. Above REDUCE_ABOVE bytes of float64 features the head runs on the top COMPONENTS
# principal components (PCA fitted on a seeded sample, rows projected in blocks), 5x less.
# Smaller collections (every measured woof-sample run) keep the full vectors.
REDUCE_ABOVE = 256 * 2**20
COMPONENTS = 256
PCA_SAMPLE = 20_000
BLOCK = 8192


def features(vectors: np.ndarray, rows: np.ndarray, seed: int = SEED) -> np.ndarray:
    """The rows' features for the cross-validated head: the vectors themselves (float32),
    or their projection on the top COMPONENTS principal components when the float64 copy
    the solver makes would pass REDUCE_ABOVE. Never a full copy of `vectors`."""
    n, dim = len(rows), vectors.shape[1]
    if n * dim * 8 <= REDUCE_ABOVE or dim <= COMPONENTS:
        if n == len(vectors):
            return np.asarray(vectors, np.float32)
        return np.asarray(vectors[rows], np.float32)
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rows, min(PCA_SAMPLE, n), replace=False))
    pca = PCA(COMPONENTS, svd_solver="randomized", random_state=seed).fit(
        np.asarray(vectors[sample], np.float32))
    out = np.empty((n, COMPONENTS), np.float32)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        out[start:stop] = pca.transform(np.asarray(vectors[rows[start:stop]], np.float32))
    return out


def out_of_sample_probabilities(vectors: np.ndarray, labels: np.ndarray, folds: int = FOLDS,
                                seed: int = SEED, max_iter: int = 500
                                ) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, classes), classes): every row scored by a head fitted without it.
    Every label needs at least two rows (the caller leaves singletons out)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(labels).astype(str)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ValueError("label issues need at least two labels")
    splits = int(max(2, min(folds, counts.min())))
    cv = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    probs = cross_val_predict(make_logreg_pipeline(max_iter=max_iter),
                              np.asarray(vectors, np.float32), y, cv=cv,
                              method="predict_proba")
    return np.asarray(probs, np.float64), classes


@dataclass
class LabelIssues:
    """Per judged row: flagged or not, how sure, and the breed the head prefers."""

    rows: np.ndarray  # positions in the table passed in (labelled rows with a peer)
    flagged: np.ndarray  # bool, cleanlab's verdict
    score: np.ndarray  # 1 - label quality: the out-of-sample chance the label is wrong
    given_probability: np.ndarray
    suggested: np.ndarray  # the most probable label other than the given one
    suggested_probability: np.ndarray


def find_label_issues(vectors: np.ndarray, labels: np.ndarray, folds: int = FOLDS,
                      seed: int = SEED) -> LabelIssues:
    """Judge every labelled row (a label held by at least two rows) of `vectors`/`labels`;
    unlabelled rows (None/NaN) and singleton labels are left out."""
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    raw = np.asarray(labels, dtype=object)
    labelled = np.array([isinstance(x, str) and x != "" for x in raw])
    names, counts = np.unique(raw[labelled].astype(str), return_counts=True)
    enough = set(names[counts >= 2])
    rows = np.flatnonzero(labelled & np.array([str(x) in enough for x in raw]))
    empty = np.zeros(0)
    if len(enough) < 2:
        return LabelIssues(rows[:0], empty.astype(bool), empty, empty, empty.astype(object),
                           empty)
    y = raw[rows].astype(str)
    probs, classes = out_of_sample_probabilities(features(np.asarray(vectors), rows, seed), y,
                                                 folds, seed)
    given = np.searchsorted(classes, y)
    flagged = cl_find(labels=given, pred_probs=probs, filter_by=FILTER_BY, n_jobs=1)
    quality = get_label_quality_scores(given, probs, method="self_confidence")
    others = probs.copy()
    others[np.arange(len(rows)), given] = -1.0
    best_other = others.argmax(axis=1)
    return LabelIssues(rows, np.asarray(flagged, bool), 1.0 - np.asarray(quality, np.float64),
                       probs[np.arange(len(rows)), given], classes[best_other].astype(object),
                       probs[np.arange(len(rows)), best_other])
