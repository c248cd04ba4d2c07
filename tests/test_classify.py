import warnings
from pathlib import Path

import numpy as np
import pytest

from classify.evaluation import evaluate_probabilities, top_k_from_probabilities
from classify.heads import load_predictor
from classify.logreg import TRUSTED_TYPES, fit_logreg, load_head, save_head
from embed.bundle import Bundle
from embed.errors import BundleError


def test_metrics_on_a_hand_made_example() -> None:
    classes = np.array(["a", "b", "c"])
    probs = np.array([
        [0.7, 0.2, 0.1],  # a: right
        [0.6, 0.3, 0.1],  # b: wrong (a), b second
        [0.1, 0.2, 0.7],  # c: right
        [0.5, 0.1, 0.4],  # c: wrong (a), c second
    ])
    m = evaluate_probabilities(probs, classes, np.array(["a", "b", "c", "c"]))
    assert m["top1"] == 0.5 and m["top5"] == 1.0 and m["test_images"] == 4
    per = {r["breed"]: r for r in m["per_breed"]}
    assert per["a"]["precision"] == pytest.approx(1 / 3) and per["a"]["recall"] == 1.0
    assert per["c"]["recall"] == 0.5 and per["c"]["support"] == 2
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [1, 0, 1]]
    assert m["most_confused"][0] == {"true": "b", "predicted": "a", "count": 1}


def test_unseen_test_breeds_count_as_misses() -> None:
    classes = np.array(["a", "b", "c", "d", "e", "f"])
    probs = np.array([
        [0.50, 0.20, 0.10, 0.10, 0.05, 0.05],  # a: top-1 hit
        [0.40, 0.30, 0.10, 0.10, 0.06, 0.04],  # b: second, a top-5 hit
        [0.05, 0.10, 0.10, 0.15, 0.20, 0.40],  # a: sixth, a miss even in the top 5
        [0.30, 0.30, 0.10, 0.10, 0.10, 0.10],  # "zebra" is no class: a miss
        [0.10, 0.10, 0.60, 0.10, 0.05, 0.05],  # "yak" is no class: a miss
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate_probabilities(probs, classes, np.array(["a", "b", "a", "zebra", "yak"]))
    assert (m["top1"], m["top5"]) == (1 / 5, 2 / 5)  # the denominator is every test row
    assert m["test_images"] == 5 and m["unseen_breeds_in_test"] == 2


def test_two_breeds_and_k_beyond_the_breeds() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    labels = np.array(["pug", "pug", "beagle", "beagle", "corgi"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = evaluate_probabilities(probs, np.array(["beagle", "pug"]), labels)
    # top-1: beagle (a miss), pug, beagle, beagle on the tie, corgi is no breed (a miss);
    # top-5 covers both breeds: every known label is a hit
    assert (m["top1"], m["top5"], m["unseen_breeds_in_test"]) == (3 / 5, 4 / 5, 1)
    # classes in another order than sorted (sklearn wants them sorted); rows without the tie
    rows = [0, 1, 2, 4]
    swapped = evaluate_probabilities(probs[rows, ::-1], np.array(["pug", "beagle"]), labels[rows])
    assert (swapped["top1"], swapped["top5"]) == (2 / 4, 3 / 4)
    # three breeds, k = 5 beyond them: every known label is a hit
    three = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    m3 = evaluate_probabilities(three, np.array(["a", "b", "c"]), np.array(["a", "b"]))
    assert (m3["top1"], m3["top5"]) == (0.0, 1.0)


def test_top_k_ranking() -> None:
    ranked = top_k_from_probabilities(np.array([[0.1, 0.6, 0.3]]), np.array(["x", "y", "z"]), 2)
    assert ranked == [[("y", 0.6), ("z", 0.3)]]


def test_logreg_round_trip_through_skops(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(3, 1, (20, 4))])
    y = np.array(["beagle"] * 20 + ["pug"] * 20)
    head = fit_logreg(x, y)
    save_head(head, tmp_path / "h.skops")
    loaded = load_head(tmp_path / "h.skops")
    np.testing.assert_allclose(loaded.predict_proba(x), head.predict_proba(x))
    assert list(loaded.classes_) == ["beagle", "pug"]
    # the same data and seed give the same model
    np.testing.assert_allclose(fit_logreg(x, y).predict_proba(x), head.predict_proba(x))


def _stored_types(path: Path) -> set[str]:
    """Every module.class named in a skops file's schema."""
    import json
    import zipfile

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "__class__" in node:
                found.add(f"{node.get('__module__')}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    found: set[str] = set()
    with zipfile.ZipFile(path) as archive:
        walk(json.loads(archive.read("schema.json")))
    return found


def test_a_genuine_head_holds_exactly_the_trusted_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, (20, 4)), np.array(["beagle", "pug"] * 10)
    save_head(fit_logreg(x, y), tmp_path / "logreg.skops")
    stored = _stored_types(tmp_path / "logreg.skops")
    # the allow-list is neither too narrow (the head would not load) nor wider than needed
    assert {t for t in stored if not t.startswith(("builtins.", "numpy."))} == set(TRUSTED_TYPES)
    assert list(load_head(tmp_path / "logreg.skops").classes_) == ["beagle", "pug"]


def test_swapped_head_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=2, random_state=0).fit([[0], [1]], ["a", "b"])
    sio.dump(forest, tmp_path / "logreg.skops")
    untrusted = sio.get_untrusted_types(file=tmp_path / "logreg.skops")
    assert untrusted  # skops itself does not trust the forest's trees
    with pytest.raises(BundleError, match="not trusted") as refused:
        load_head(tmp_path / "logreg.skops")
    assert all(t in str(refused.value) for t in untrusted), (untrusted, str(refused.value))


def test_swapped_head_of_another_sklearn_type_is_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.neighbors import KNeighborsClassifier

    sio.dump(KNeighborsClassifier(1).fit([[0], [1]], ["a", "b"]), tmp_path / "logreg.skops")
    with pytest.raises(BundleError, match="not trusted"):
        load_head(tmp_path / "logreg.skops")


def test_one_breed_is_not_enough() -> None:
    with pytest.raises(BundleError, match="at least two breeds"):
        fit_logreg(np.zeros((3, 2)), np.array(["a", "a", "a"]))


def test_bundle_head_is_recorded_and_predicts(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    record = bundle.manifest.model_dump()["heads"]["logreg"]
    assert record["train_images"] == 24 and record["breeds"] == 3
    assert record["metrics"]["test_images"] == 6
    predictor = load_predictor(bundle)
    assert predictor.name == "logreg"
    ranked = predictor.predict_top_k(bundle.embeddings()[:2], k=5)
    assert len(ranked[0]) == 3  # capped at the number of breeds
    assert sum(p for _, p in ranked[0]) == pytest.approx(1.0)
    with pytest.raises(BundleError, match="no 'finetune' head"):
        load_predictor(bundle, "finetune")


def test_report_png_drawn_beside_the_caller_is_the_same_file(tmp_path: Path) -> None:
    """A warm build draws the confusion PNG in a background thread (issue 21): the file on
    disk when the block ends must be byte for byte the one drawn in line."""
    from classify.evaluation import write_report
    from embed.background import Background

    probs = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    m = evaluate_probabilities(probs, np.array(["a", "b", "c"]), np.array(["a", "b", "c", "c"]))
    inline = write_report(tmp_path / "inline" / "report", "logreg", m)
    with Background() as later:
        beside = write_report(tmp_path / "beside" / "report", "logreg", m, later)
    assert beside == inline  # the same relative files are recorded
    for rel in inline.values():
        assert (tmp_path / "beside" / rel).read_bytes() == (tmp_path / "inline" / rel).read_bytes()
    assert not list((tmp_path / "beside").rglob("*.tmp*"))  # nothing half-written left


def test_background_joins_its_work_and_raises_its_first_error() -> None:
    import threading
    import time

    from embed.background import Background

    done: list[int] = []
    with Background() as later:
        later.submit(lambda: (time.sleep(0.05), done.append(1)))
    assert done == [1]  # finished when the block ended

    def boom() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"), Background() as later:
        later.submit(boom)
    # a failing block waits for its threads too, and its own error goes on
    release = threading.Event()
    with pytest.raises(KeyError), Background() as later:
        later.submit(lambda: (release.wait(1), done.append(2)))
        release.set()
        raise KeyError("the block's own")
    assert done == [1, 2]


def test_logreg_fit_is_the_same_on_one_blas_thread() -> None:
    """The head is fitted on one BLAS thread now (issue 21); its coefficients must not move
    beyond rounding from an unrestricted fit."""
    from threadpoolctl import threadpool_limits

    from classify.logreg import make_logreg_pipeline

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 64)).astype(np.float32)
    y = np.repeat(np.array(["a", "b", "c"]), 20)
    x[y == "b"] += 0.5
    with threadpool_limits(2, user_api="blas"):
        free = make_logreg_pipeline().fit(x, y)
    one = fit_logreg(x, y)
    np.testing.assert_allclose(one[-1].coef_, free[-1].coef_, rtol=1e-6, atol=1e-8)
