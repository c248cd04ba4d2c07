"""index.space: learned look-alike spaces on seeded synthetic clusters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from embed.errors import BundleError
from index.quality import near_copy_first, neighbour_figures, space_figures
from index.space import KINDS, LearnedSpace, fit_space


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(n_per=40, classes=4, dim=32, seed=0):
    """Breeds differ a little along 4 dimensions; a large shared nuisance spread along the
    others hides them from raw cosine similarity."""
    rng = np.random.default_rng(seed)
    means = np.zeros((classes, dim))
    means[:, :classes] = 3.0 * np.eye(classes)
    means[:, classes:] = 4.0  # a common offset: every vector points roughly the same way
    x = np.concatenate([means[c] + rng.normal(0, 1.0, (n_per, dim)) * np.r_[
        np.full(classes, 0.8), np.full(dim - classes, 2.5)] for c in range(classes)])
    y = np.repeat([f"breed{c}" for c in range(classes)], n_per)
    return _unit(x), y


@pytest.fixture(scope="module")
def split():
    x, y = planted()
    test = np.arange(len(x)) % 4 == 0
    return (x[~test], y[~test]), (x[test], y[test])


@pytest.mark.parametrize("kind", KINDS)
def test_learned_space_beats_raw_on_planted_breeds(split, kind):
    (x_tr, y_tr), (x_te, y_te) = split
    space = fit_space(x_tr, y_tr, kind)
    raw = neighbour_figures(x_te, y_te, x_tr, y_tr)["precision@5"]
    learned = neighbour_figures(space.apply(x_te), y_te, space.apply(x_tr), y_tr)["precision@5"]
    assert raw < 0.7
    assert learned > raw + 0.15
    out = space.apply(x_te)
    assert out.dtype == np.float32 and out.shape == (len(x_te), space.dim_out)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_blend_finds_a_near_copy_first_and_pure_lda_does_not(split):
    (x_tr, y_tr), _ = split
    rng = np.random.default_rng(1)
    copies = _unit(x_tr + rng.normal(0, 0.01, x_tr.shape))
    blend, lda = fit_space(x_tr, y_tr, "blend"), fit_space(x_tr, y_tr, "lda")
    positions = np.arange(len(x_tr))
    assert near_copy_first(blend.apply(copies), positions, blend.apply(x_tr)) == 1.0
    assert near_copy_first(lda.apply(copies), positions, lda.apply(x_tr)) < 0.5
    assert blend.dim_out == x_tr.shape[1] + 3 and lda.dim_out == 3  # breeds - 1


def test_affine_and_faiss_index_reproduce_apply(split):
    (x_tr, y_tr), (x_te, _) = split
    space = fit_space(x_tr, y_tr, "blend")
    a, b = space.affine()
    y = x_te @ a + b
    np.testing.assert_allclose(_unit(y), space.apply(x_te), atol=1e-5)
    scores, positions = space.faiss_index(x_tr).search(x_te, 3)
    exact = space.apply(x_te) @ space.apply(x_tr).T
    np.testing.assert_array_equal(positions[:, 0], exact.argmax(axis=1))
    np.testing.assert_allclose(scores[:, 0], exact.max(axis=1), atol=1e-5)


def test_save_load_round_trip_and_tampering(tmp_path, split):
    (x_tr, y_tr), (x_te, _) = split
    space = fit_space(x_tr, y_tr, "blend")
    path = tmp_path / "space.npz"
    space.save(path)
    loaded = LearnedSpace.load(path)
    np.testing.assert_array_equal(loaded.apply(x_te), space.apply(x_te))
    assert loaded.figures == json.loads(json.dumps(space.figures))
    assert loaded.figures["rows"] == len(x_tr)
    with np.load(path, allow_pickle=False) as data:
        entries = {k: data[k] for k in data.files}
    entries["offset"] = entries["offset"] + 1
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(BundleError, match="checksum"):
        LearnedSpace.load(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError):
        LearnedSpace.load(tmp_path / "junk.npz")


def test_logit_space_from_head_arrays_equals_fitted_logits(split):
    (x_tr, y_tr), (x_te, _) = split
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    model = LogisticRegression(max_iter=2000, random_state=0).fit(scaler.transform(x_tr), y_tr)
    head = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": model.coef_,
            "intercept": model.intercept_, "classes": model.classes_}
    space = fit_space(x_tr, y_tr, "logit", head=head)
    logits = model.decision_function(scaler.transform(x_te))
    np.testing.assert_allclose(space.coordinates(x_te),
                               logits - logits.mean(axis=1, keepdims=True), atol=1e-4)


def test_breed_distances_and_space_figures(split):
    (x_tr, y_tr), (x_te, y_te) = split
    space = fit_space(x_tr, y_tr, "lda")
    nearest = space.classes[space.breed_distances(x_te).argmin(axis=1)]
    assert np.mean(nearest == y_te) > 0.8
    figures = space_figures(space.apply, (x_tr, y_tr), (x_te, y_te))
    assert figures["learned"]["precision@5"] > figures["raw"]["precision@5"]
    assert 0.0 <= figures["learned"]["within_breed_overlap@10"] <= 1.0


def test_refuses_one_breed_and_unknown_kinds(split):
    (x_tr, y_tr), _ = split
    with pytest.raises(ValueError, match="two breeds"):
        fit_space(x_tr, np.full(len(x_tr), "only"))
    with pytest.raises(ValueError, match="unknown space kind"):
        fit_space(x_tr, y_tr, "pca")


@pytest.mark.parametrize("n_per, dim", [(40, 32), (3, 64)])  # more rows than dims, and fewer
def test_lda_directions_are_scikit_learns_eigen_solution(n_per, dim):
    """Solving only the kept directions (issue 21) gives scikit-learn's full eigen solve's
    leading directions (up to sign) and eigenvalues."""
    from scipy import linalg
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from index.lda import lda_directions

    x, y = planted(n_per=n_per, dim=dim, seed=3)
    x = x.astype(np.float64)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto").fit(x, y)
    scalings, ratios = lda_directions(x, y, 3)
    expected = lda.scalings_[:, :3]
    signs = np.sign((scalings * expected).sum(axis=0))
    np.testing.assert_allclose(scalings * signs, expected, rtol=1e-7, atol=1e-9)
    within = lda.covariance_  # v' Sw v = 1, as scipy normalises generalised eigenvectors
    np.testing.assert_allclose(scalings.T @ within @ scalings, np.eye(3), atol=1e-8)
    from sklearn.discriminant_analysis import _cov  # the total scatter scikit-learn forms

    values = linalg.eigh(_cov(x, "auto") - within, within, eigvals_only=True)
    np.testing.assert_allclose(ratios, values[::-1][:3] / values.sum(), rtol=1e-7)
