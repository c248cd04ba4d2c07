"""Shrinkage LDA's leading discriminants: scikit-learn's ``eigen`` solver, computing only the
directions the space keeps.

scikit-learn's ``LinearDiscriminantAnalysis(solver="eigen")`` solves the full generalised
eigenproblem ``Sb v = l Sw v`` for all ``d`` directions (1280 for MobileNetV2) although a
space keeps at most ``breeds - 1``; that full solve was most of a warm 40-photo build's
learned-space fit (issue 21). Here the same within- and total-scatter matrices (per-breed
Ledoit-Wolf covariances weighted by the breed priors, exactly as scikit-learn forms them) are
reduced to a standard problem with one Cholesky factor, and only the leading eigenvectors
are computed: the same directions (up to sign, which distances do not see) and eigenvalues.
The scatter matrices are built from n x d factors (`shrunk_parts`), never from one d x d
covariance per breed. The explained-variance ratios are the kept eigenvalues over the sum
of all of them (the trace of the reduced matrix). scikit-learn sorts all the ratios instead,
and since the difference of two differently shrunk matrices is not positive semi-definite,
that sum can be negative (woof-sample, 450 rows: -295), and its "largest ratios" then
belong to the most negative eigenvalues, not to the kept directions; with a positive sum the
two agree.
"""

from __future__ import annotations

import numpy as np


def shrunk_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``shrinkage="auto"`` covariance of `x` (Ledoit-Wolf on standardised
    columns, scaled back) as ``F' F + diag(g)``: returns (F, g), F with one row per row of x.

    The same formulas as ``sklearn.covariance.ledoit_wolf_shrinkage``, with its d x d sums
    taken over the n x n Gram matrices instead (the same numbers: sum(X2' X2) = |X2 1|^2 and
    |X' X|_F = |X X'|_F), so that a breed of four photos costs O(n^2 d), not O(n d^2)."""
    n, d = x.shape
    centred = x - x.mean(axis=0)
    scale = np.sqrt((centred**2).mean(axis=0))
    scale[scale < 10 * np.finfo(scale.dtype).eps] = 1.0  # StandardScaler's constant columns
    z = centred / scale
    z2 = z**2
    trace = z2.sum(axis=0) / n
    mu = trace.sum() / d
    beta_sum = float(np.sum(z2.sum(axis=1) ** 2))  # all entries of z2' z2
    delta_sum = float(np.sum((z @ z.T) ** 2)) / n**2  # squared entries of z' z, / n^2
    beta = (beta_sum / n - delta_sum) / (d * n)
    delta = (delta_sum - 2.0 * mu * trace.sum() + d * mu**2) / d
    beta = min(beta, delta)
    shrinkage = 0.0 if beta == 0 else beta / delta
    return centred * np.sqrt((1.0 - shrinkage) / n), shrinkage * mu * scale**2


def lda_directions(x: np.ndarray, y: np.ndarray, m: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(scalings (d, m), explained-variance ratios (m,)) of shrinkage LDA: the m leading
    generalised eigenvectors of (between, within) scatter, normalised to ``v' Sw v = 1``.

    On one BLAS thread: on the shared 2-core EPYC (load ~7) two threads took 1.9 s wall and
    1.2 s CPU (a waiting OpenBLAS thread spins while its partner is descheduled), one took
    0.7 s wall and 0.4 s CPU; even the best two-thread run (1.07 s) was slower."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return _lda_directions(x, y, m)


def _lda_directions(x: np.ndarray, y: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy import linalg

    x = np.asarray(x, np.float64)
    classes, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    priors = counts / len(y)
    rows, diagonal = [], np.zeros(x.shape[1])
    for k in range(len(classes)):  # within: the breeds' shrunk covariances, prior-weighted
        factor, g = shrunk_parts(x[index == k])
        rows.append(factor * np.sqrt(priors[k]))
        diagonal += priors[k] * g
    factor = np.concatenate(rows)
    within = factor.T @ factor
    within.flat[:: len(within) + 1] += diagonal
    total, g = shrunk_parts(x)
    between = total.T @ total - within
    between.flat[:: len(between) + 1] += g
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
