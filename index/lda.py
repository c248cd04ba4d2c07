"""Shrinkage LDA's leading discriminants: scikit-learn's ``eigen`` solver, computing only the
directions the space keeps.

scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen")`` solves the full generalised
eigenproblem ``Sb v = l Sw v`` for all ``d`` directions (1280 for MobileNetV2) although a
space keeps at most ``breeds - 1``; that full solve was most of a warm 40-photo build's
learned-space fit (issue 21). Here the same within- and total-scatter matrices (per-breed
Ledoit-Wolf covariances weighted by the breed priors, exactly as scikit-learn forms them) are
reduced to a standard problem with one Cholesky factor, and only the leading eigenvectors
are computed: the same directions (up to sign, which distances do not see) and eigenvalues.
The explained-variance ratios are the kept eigenvalues over the sum of all of them (the
trace of the reduced matrix). scikit-learn sorts all the ratios instead, and since the
difference of two differently shrunk matrices is not positive semi-definite, that sum can be
negative (woof-sample, 450 rows: -295), and its "largest ratios" then belong to the most
negative eigenvalues, not to the kept directions; with a positive sum the two agree.
"""

from __future__ import annotations

import numpy as np


def shrunk_covariance(x: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance of standardised columns, scaled back (scikit-learn's
    ``shrinkage="auto"``)."""
    from sklearn.covariance import ledoit_wolf
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    s = ledoit_wolf(scaler.fit_transform(x))[0]
    return scaler.scale_[:, np.newaxis] * s * scaler.scale_[np.newaxis, :]


def lda_directions(x: np.ndarray, y: np.ndarray, m: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(scalings (d, m), explained-variance ratios (m,)) of shrinkage LDA: the m leading
    generalised eigenvectors of (between, within) scatter, normalised to ``v' Sw v = 1``."""
    from scipy import linalg

    x = np.asarray(x, np.float64)
    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    priors = counts / len(y)
    within = np.zeros((x.shape[1], x.shape[1]))
    for k in range(len(classes)):
        within += priors[k] * np.atleast_2d(shrunk_covariance(x[index == k]))
    between = shrunk_covariance(x) - within
    lower = linalg.cholesky(within, lower=True)
    half = linalg.solve_triangular(lower, between, lower=True)  # L^-1 Sb
    reduced = linalg.solve_triangular(lower, half.T, lower=True)  # L^-1 Sb L^-T
    reduced = (reduced + reduced.T) / 2
    d = len(reduced)
    m = max(1, min(m, d))
    values, vectors = linalg.eigh(reduced, subset_by_index=[d - m, d - 1])
    order = np.argsort(values)[::-1]
    scalings = linalg.solve_triangular(lower, vectors[:, order], lower=True, trans="T")
    return scalings, values[order] / np.trace(reduced)
