"""The audit's signals on data each test plants itself: the expectations come from the
planting (which row was copied, swapped, blurred), never from the code under test."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from classify.gate import Gate, knn_similarity
from classify.gate_audit import audit_gate, leave_one_out_knn
from classify.label_issues import LabelIssues, find_label_issues
from classify.outliers import find_outliers
from embed.image_quality import find_low_quality
from embed.perturb import PERTURBATIONS, copy_similarities, near_copies
from index.duplicates import (
    calibrate_threshold,
    exact_duplicates,
    knn_graph,
    near_duplicates,
    restricted_graph,
    same_label_neighbour_sims,
    split_leaks,
)
from ui.audit_report import COLUMNS, KINDS, Signals, compose_findings

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clusters(rng: np.random.Generator, per: int = 40, classes: int = 3, spread: float = 0.35
             ) -> tuple[np.ndarray, np.ndarray]:
    centres = unit(rng.standard_normal((classes, DIM)))
    y = np.repeat(np.arange(classes), per)
    return unit(centres[y] + spread * rng.standard_normal((len(y), DIM))), y


def table_for(n: int, labels: list[str], splits: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"/photos/{i}.jpg" for i in range(n)], "label": labels,
                         "split": splits or ["train"] * n, "sha256": [f"h{i}" for i in range(n)],
                         "width": [400] * n, "height": [300] * n})


# ---- duplicates -------------------------------------------------------------------------------
def test_exact_duplicates_point_at_the_first_copy():
    hashes = np.array(["a", "b", "a", "", None, "b", "a"], dtype=object)
    rows, kept = exact_duplicates(hashes)
    assert sorted(zip(rows.tolist(), kept.tolist(), strict=True)) == [(2, 0), (5, 1), (6, 0)]


def test_calibrated_threshold_separates_copies_from_distinct_neighbours():
    rng = np.random.default_rng(0)
    copies = rng.uniform(0.93, 0.99, 200)
    distinct = np.concatenate([rng.uniform(0.5, 0.85, 300), [0.97, 0.98]])  # 2 real copies
    t = calibrate_threshold(copies, distinct)
    assert 0.85 < t.value < 0.93  # in the gap, not pulled up by the two unknown copies
    assert t.copy_recall == 1.0 and t.neighbour_rate == pytest.approx(2 / 302)


def test_planted_near_copy_is_found_with_the_other_copy_as_related_path():
    rng = np.random.default_rng(1)
    x, y = clusters(rng)
    original, copy = 7, len(x)
    x = np.vstack([x, unit(x[original] + 0.03 * rng.standard_normal(DIM))])
    y = np.append(y, y[original])
    hashes = np.array([f"h{i}" for i in range(len(x))], dtype=object)
    copy_sims = [float(unit(x[i] + 0.03 * rng.standard_normal(DIM)) @ x[i]) for i in range(30)]
    negatives = same_label_neighbour_sims(x, y.astype(str), hashes, np.arange(len(x) - 1))
    threshold = calibrate_threshold(np.array(copy_sims), negatives)
    graph = knn_graph(x, k=8)
    i, j, _ = near_duplicates(*graph, threshold.value, hashes)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(original, copy)]
    splits = ["train"] * len(x)
    splits[copy] = "test"
    assert split_leaks(i, j, np.array(splits)).tolist() == [True]
    table = table_for(len(x), [f"c{v}" for v in y], splits)
    found = compose_findings(table, Signals(near=(i, j, _), threshold=threshold))
    near = found[found["issue"] == "near_duplicate"]
    assert {near["path"].iloc[0], near["related_path"].iloc[0]} == {
        f"/photos/{original}.jpg", f"/photos/{copy}.jpg"}
    leak = found[found["issue"] == "split_leak"].iloc[0]
    assert (leak["path"], leak["related_path"]) == (f"/photos/{copy}.jpg",
                                                   f"/photos/{original}.jpg")


def test_knn_graph_against_a_subset_reports_positions_in_the_whole_table():
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((50, DIM)))
    base = np.arange(0, 50, 2)
    sims, ids = knn_graph(x, k=3, base=base)
    assert np.isin(ids, base).all()
    exact = x @ x[base].T
    assert np.allclose(sims[:, 0], exact.max(axis=1), atol=1e-5)


# ---- label issues and outliers ---------------------------------------------------------------
def test_swapped_label_ranks_first_with_its_true_breed_suggested():
    rng = np.random.default_rng(3)
    x, y = clusters(rng, per=40, spread=0.25)
    labels = np.array(["beagle", "samoyed", "dingo"], dtype=object)[y]
    swapped = 5  # a beagle filed as samoyed
    labels[swapped] = "samoyed"
    issues = find_label_issues(x, labels, folds=5)
    top = issues.rows[np.argmax(issues.score)]
    assert top == swapped
    where = int(np.flatnonzero(issues.rows == swapped)[0])
    assert issues.flagged[where] and issues.suggested[where] == "beagle"
    assert issues.flagged.sum() <= 3


def test_unlabelled_rows_and_singletons_are_not_judged():
    rng = np.random.default_rng(4)
    x, y = clusters(rng, per=20)
    labels = np.array(["a", "b", "c"], dtype=object)[y]
    labels[0], labels[1] = None, "lonely"
    issues = find_label_issues(x, labels, folds=3)
    assert 0 not in issues.rows and 1 not in issues.rows and len(issues.rows) == len(x) - 2


def test_a_photo_far_from_its_breed_is_an_outlier():
    rng = np.random.default_rng(5)
    x, y = clusters(rng, per=30, spread=0.2)
    far = unit(rng.standard_normal(DIM))  # a random direction: like no breed
    x = np.vstack([x, far])
    labels = np.append(np.array(["a", "b", "c"], dtype=object)[y], "b")
    hashes = np.array([f"h{i}" for i in range(len(x))], dtype=object)
    found = find_outliers(x, labels, hashes)
    assert found.rows[np.argmax(found.score)] == len(x) - 1
    assert len(x) - 1 in found.rows[found.flagged]
    assert found.score[found.rows == len(x) - 1][0] > 0.5


# ---- not a dog, leave one out ------------------------------------------------------------------
def test_the_gate_refuses_a_stored_cat_but_not_the_dogs():
    rng = np.random.default_rng(6)
    x, _ = clusters(rng, per=30, spread=0.2)
    cat = unit(rng.standard_normal(DIM))
    x = np.vstack([x, cat, cat])  # the cat and its exact copy: the copy must not vouch for it
    hashes = np.array([f"h{i}" for i in range(len(x) - 2)] + ["cat", "cat"], dtype=object)
    dogs = leave_one_out_knn(x[:-2], hashes[:-2], 5)
    gate = Gate(k=5, dog_threshold=float(dogs.min()), not_dog_threshold=float(dogs.min()) * 0.9,
                floors={}, known_breeds=3)
    result = audit_gate(gate, x, hashes)
    assert set(result.refused.tolist()) == {len(x) - 2, len(x) - 1}
    graph = knn_graph(x, k=12)
    assert np.allclose(leave_one_out_knn(x, hashes, 5, graph), result.knn, atol=1e-5)
    assert np.allclose(result.knn, knn_similarity(x, x, 5, hashes, hashes))


def test_a_graph_restricted_to_trusted_rows_equals_an_exact_search_against_them():
    rng = np.random.default_rng(10)
    x, _ = clusters(rng, per=30, spread=0.2)
    cats = unit(rng.standard_normal(DIM) + 0.05 * rng.standard_normal((6, DIM)))
    x = np.vstack([x, cats])  # six similar cats vouch for each other ...
    hashes = np.array([f"h{i}" for i in range(len(x))], dtype=object)
    hashes[3] = hashes[4]  # ... and one exact copy among the dogs
    trusted = np.ones(len(x), bool)
    trusted[-6:-1] = False  # ... until five of them leave the reference
    graph = restricted_graph(x, knn_graph(x, k=8), trusted, hashes, 5)
    exact = knn_similarity(x, x[trusted], 5, hashes, hashes[trusted])
    assert np.allclose(leave_one_out_knn(x, hashes, 5, graph), exact, atol=1e-5)


# ---- images -----------------------------------------------------------------------------------
def photo(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A sharp, textured photo: blocks of colour with noise."""
    w, h = size
    base = rng.integers(40, 215, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float64)
    arr = np.kron(base, np.ones((16, 16, 1)))[:h, :w] + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jpeg(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def test_near_copies_are_smaller_or_cropped_jpegs_of_the_original():
    data = jpeg(photo(np.random.default_rng(7)))
    copies = near_copies(data)
    assert set(copies) == {kind for kind, *_ in PERTURBATIONS}
    assert Image.open(io.BytesIO(copies["resized"])).size == (160, 120)
    assert Image.open(io.BytesIO(copies["cropped"])).size == (288, 216)

    def embed(encoded: bytes) -> np.ndarray:  # a colour-layout "backbone"
        img = Image.open(io.BytesIO(encoded)).convert("RGB").resize((8, 8))
        return unit(np.asarray(img, np.float32).ravel() - 127.5)

    sims, kinds = copy_similarities(["/no/such.jpg"], np.zeros((1, 192)), embed)
    assert len(sims) == 0  # unreadable photos are left out


def test_a_rebuild_takes_near_copy_vectors_from_the_cache(tmp_path):
    """The cache gives exactly what embedding the copies gives, without embedding them, and
    only for the same photo bytes, seed and embedder."""
    from embed.copy_cache import CopyVectors

    paths, hashes = [], []
    for i in range(3):
        data = jpeg(photo(np.random.default_rng(20 + i)))
        (tmp_path / f"{i}.jpg").write_bytes(data)
        paths.append(str(tmp_path / f"{i}.jpg"))
        hashes.append(hashlib.sha256(data).hexdigest())
    calls = []

    def embed(encoded: bytes) -> np.ndarray:  # a colour-layout "backbone" that counts
        calls.append(1)
        img = Image.open(io.BytesIO(encoded)).convert("RGB").resize((8, 8))
        return unit(np.asarray(img, np.float32).ravel() - 127.5)

    originals = np.stack([embed((tmp_path / f"{i}.jpg").read_bytes()) for i in range(3)])
    calls.clear()
    plain, plain_kinds = copy_similarities(paths, originals, embed, seed=5)
    made = len(calls)
    assert made == 3 * len(PERTURBATIONS)
    cache = CopyVectors({"name": "colour-layout"}, tmp_path / "cache")
    first, _ = copy_similarities(paths, originals, embed, 5, hashes, cache)
    again, again_kinds = copy_similarities(paths, originals, embed, 5, hashes, cache)
    assert len(calls) == 2 * made  # the second pass embedded nothing
    np.testing.assert_allclose(again, plain, rtol=1e-6)
    np.testing.assert_allclose(first, plain, rtol=1e-6)
    assert again_kinds == plain_kinds
    other = CopyVectors({"name": "another backbone"}, tmp_path / "cache")
    copy_similarities(paths, originals, embed, 5, hashes, other)
    copy_similarities(paths, originals, embed, 6, hashes, cache)  # another seed: other edits
    assert len(calls) == 4 * made


def test_blurred_dark_washed_out_and_tiny_photos_are_found(tmp_path):
    rng = np.random.default_rng(8)
    paths = []
    for i in range(20):  # the fences need a collection: 4 poor photos among 20
        img = photo(rng)
        if i == 3:
            img = img.filter(ImageFilter.GaussianBlur(5))
        if i == 5:
            img = Image.fromarray((np.asarray(img) * 0.05).astype(np.uint8))
        if i == 7:
            img = img.resize((60, 45))
        if i == 9:  # washed out: blended 80 % with white
            img = Image.blend(img, Image.new("RGB", img.size, (255, 255, 255)), 0.8)
        path = tmp_path / f"{i}.jpg"
        img.save(path, quality=92)
        paths.append(str(path))
    sizes = np.array([Image.open(p).size for p in paths])
    found = find_low_quality(paths, sizes[:, 0], sizes[:, 1], min_side=64)
    kinds = {(q.row, q.kind) for q in found}
    assert {(3, "blurry"), (5, "dark"), (7, "tiny"), (9, "washed_out")} <= kinds
    assert {row for row, _ in kinds} <= {3, 5, 7, 9}


# ---- composition ------------------------------------------------------------------------------
def test_findings_have_the_columns_and_the_most_certain_kind_first():
    n = 12
    table = table_for(n, ["a"] * 6 + ["b"] * 6)
    table.loc[10, "sha256"] = table.loc[4, "sha256"]
    labels = LabelIssues(rows=np.arange(n), flagged=np.isin(np.arange(n), [2, 8]),
                         score=np.where(np.arange(n) == 8, 0.99, 0.6),
                         given_probability=np.full(n, 0.1),
                         suggested=np.array(["b"] * 6 + ["a"] * 6, dtype=object),
                         suggested_probability=np.full(n, 0.8))
    signals = Signals(exact=exact_duplicates(table["sha256"].to_numpy(object)), labels=labels)
    found = compose_findings(table, signals)
    assert tuple(found.columns) == COLUMNS
    assert found["issue"].tolist() == ["exact_duplicate", "label", "label"]
    assert (found["path"].iloc[0], found["related_path"].iloc[0]) == ("/photos/10.jpg",
                                                                      "/photos/4.jpg")
    assert found["path"].tolist()[1:] == ["/photos/8.jpg", "/photos/2.jpg"]  # surest first
    assert found["suggested_label"].tolist()[1:] == ["a", "b"]
    assert found["why"].str.len().gt(10).all()
    ranks = found["issue"].map(KINDS.index).to_numpy()
    assert (np.diff(ranks) >= 0).all()


def test_an_audit_after_a_build_reuses_the_builds_near_copy_vectors(
        litert_bundle, monkeypatch, tmp_path):
    """The build embeds the calibration copies with the model it ships; the audit, serving
    that same model from the bundle, finds them in the cache (no copy embedded again) and
    draws the build's threshold. With an empty cache it has to embed every copy."""
    import shutil

    import embed.perturb
    from embed.bundle import Bundle
    from ui.audit_report import calibrate_near_duplicates

    made = []
    real = embed.perturb.embed_copies

    def counting(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(embed.perturb, "embed_copies", counting)
    bundle = Bundle.open(litert_bundle)
    table, vectors = bundle.metadata(), bundle.embeddings()
    built = bundle.manifest.source.get("near_duplicate_threshold")
    cache = tmp_path / "cache"
    shutil.copytree(litert_bundle.parent / "cache", cache)  # the build's, left as it was
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(cache))
    warm = calibrate_near_duplicates(bundle, table, vectors)
    assert made == []
    assert warm.value == pytest.approx(built["value"], abs=1e-6)
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(tmp_path / "empty"))
    cold = calibrate_near_duplicates(bundle, table, vectors)
    assert len(made) == len(table)  # 30 photos, fewer than the 100 sampled: all copied
    assert cold.value == pytest.approx(warm.value, abs=1e-5)
