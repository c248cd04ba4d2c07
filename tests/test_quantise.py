"""The int8 task check: samples, identities, neighbour overlap and the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from embed.quantise import (
    fold_of,
    neighbour_overlap,
    pick_samples,
    sample_identity,
    task_check,
)
from embed.sources import ImageItem


def items(n: int, labelled: int | None = None) -> list[ImageItem]:
    labelled = n if labelled is None else labelled
    return [ImageItem(i, f"/p/{i}.jpg", f"breed{i % 3}" if i < labelled else None,
                      "train" if i < labelled else "none") for i in range(n)]


def clustered(n_per_class: int = 20, classes: int = 3, dim: int = 16, noise: float = 0.3,
              seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Unit vectors around one centre per class, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    x = np.concatenate([c + noise * rng.normal(size=(n_per_class, dim)) for c in centres])
    labels = [f"c{k}" for k in range(classes) for _ in range(n_per_class)]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_samples_are_seeded_disjoint_and_prefer_labelled_items() -> None:
    pool = items(1000, labelled=700)
    a, b = pick_samples(pool), pick_samples(pool)
    assert [i.row_id for i in a.check] == [i.row_id for i in b.check]
    assert len(a.check) == 600 and len(a.calibration) == 50
    assert all(i.label is not None for i in a.check)
    assert not {i.row_id for i in a.check} & {i.row_id for i in a.calibration}
    assert [i.row_id for i in pick_samples(pool, seed=1).check] != [i.row_id for i in a.check]


def test_a_small_source_calibrates_on_its_check_sample() -> None:
    s = pick_samples(items(30), check_items=600, calibration_items=200)
    assert len(s.check) == 30
    assert {i.row_id for i in s.calibration} <= {i.row_id for i in s.check}
    assert pick_samples(items(5, labelled=0)).check  # unlabelled: any items


def test_sample_identity_follows_content_order_labels_and_inputs() -> None:
    base = sample_identity(["a", "b"], 160, "tf")
    assert base == sample_identity(["a", "b"], 160, "tf")
    assert len({base, sample_identity(["b", "a"], 160, "tf"),
                sample_identity(["a", "b"], 224, "tf"), sample_identity(["a", "b"], 160, "caffe"),
                sample_identity(["a", "b"], 160, "tf", ["x", "y"])}) == 5


def test_neighbour_overlap() -> None:
    x, _ = clustered()
    assert neighbour_overlap(x, x) == 1.0
    shuffled = x[np.random.default_rng(1).permutation(len(x))]
    assert neighbour_overlap(x, shuffled) < 0.5
    assert neighbour_overlap(x[:1], x[:1]) == 1.0  # no neighbours to lose


def test_folds_are_stratified_and_seeded() -> None:
    labels = ["a"] * 10 + ["b"] * 4
    folds = fold_of(labels, folds=5)
    assert np.array_equal(folds, fold_of(labels, folds=5))
    assert sorted(folds[:10].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(folds[10:].tolist()) == [0, 1, 2, 3]


def test_identical_vectors_pass_with_zero_drop() -> None:
    x, labels = clustered()
    figures = task_check(x, x, labels)
    assert figures["passed"] and figures["top1_drop_points"] == 0.0
    assert figures["overlap_at_10"] == 1.0 and figures["labelled_rows"] == 60
    assert figures["bounds"] == {"max_top1_drop": 0.01, "min_overlap_at_10": 0.75}


def test_the_verdict_is_deterministic_and_an_impossible_bound_fails() -> None:
    x, labels = clustered()
    noisy = x + 0.05 * np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    first = task_check(x, noisy, labels)
    assert first == task_check(x, noisy, labels)
    failed = task_check(x, noisy, labels, max_top1_drop=-1.0, min_overlap=1.01)
    assert failed["passed"] is False
    assert "top-1 drops" in failed["reason"] and "overlap@10" in failed["reason"]


@pytest.mark.parametrize("labels", [[None] * 60, ["only"] * 60])
def test_without_two_labelled_classes_only_the_overlap_is_judged(labels: list) -> None:
    x, _ = clustered()
    figures = task_check(x, x, labels)
    assert figures["top1_float32"] is None and figures["passed"]
