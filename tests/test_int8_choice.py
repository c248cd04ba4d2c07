"""`--runtime auto`'s choice between float32 and int8: the pure rule with injected gains and
costs, the cached timings, and the int8 runtime following the rule."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from embed import int8_choice
from embed.int8_choice import Outlook, decide_int8, remaining_costs
from embed.int8_runtime import LiteRTInt8Runtime
from tests.conftest import TINY_DIM, TINY_SIZE, build_tiny_backbone

# issue 21's figures on a 2-core AMD EPYC with VNNI: 168 img/s float32, 451 img/s int8 on one
# thread; 27 s conversion, 40 s task check
EPYC = {"float_seconds": 1 / 168, "gain": 451 / 168}
COSTS = {"conversion": 27.0, "check": 40.0}


def saved_per_image(float_seconds: float, gain: float, workers: int) -> float:
    """What int8 saves per image on `workers` cores: float32's time less int8's."""
    return (float_seconds - float_seconds / gain) / workers


def test_int8_where_it_pays_says_how_much_and_when() -> None:
    choice = decide_int8(Outlook(600_000, workers=2, costs=COSTS, **EPYC))
    assert choice.use_int8
    expected = 67.0 / saved_per_image(1 / 168, 451 / 168, 2)  # ~35,600 images
    assert choice.break_even == pytest.approx(expected)
    assert choice.line == f"int8: 2.7x faster here, pays off after ~{expected:,.0f} images"


def test_float32_where_int8_gains_too_little_for_the_images() -> None:
    # a Xeon without VNNI: 1.05x; 20,000 images save ~30 s, less than 67 s of one-time work
    choice = decide_int8(Outlook(20_000, 1 / 168, 1.05, 2, COSTS))
    assert not choice.use_int8
    assert choice.line.startswith("float32: int8's conversion and check not cached, and"
                                  " 20,000 photos do not repay its 67 s one-time cost")


def test_float32_where_int8_is_not_faster_even_when_cached() -> None:
    choice = decide_int8(Outlook(10**7, 0.01, 0.9, 2, {}))
    assert not choice.use_int8 and choice.line == "float32: int8 is not faster here (0.90x)"


def test_a_40_photo_folder_stays_float32_when_int8_is_not_cached() -> None:
    costs = remaining_costs({}, converted=False, checked=False, check_rows=40, workers=2)
    assert set(costs) == {"conversion", "check"} and sum(costs.values()) > 30
    choice = decide_int8(Outlook(40, costs=costs, workers=2, **EPYC))
    assert not choice.use_int8 and "40 photos do not repay" in choice.line


def test_cached_one_time_work_counts_as_zero() -> None:
    costs = remaining_costs({"int8 conversion": 27.0}, converted=True, checked=True,
                            check_rows=40, workers=2)
    assert costs == {}
    choice = decide_int8(Outlook(40, costs=costs, workers=2, **EPYC))
    assert choice.use_int8 and choice.line == "int8: 2.7x faster here, its one-time work is cached"


def test_costs_last_paid_here_replace_the_estimates() -> None:
    record = {"int8 conversion": 12.5, "int8 check": 7.0}
    assert remaining_costs(record, False, False, 600, 2) == {"conversion": 12.5, "check": 7.0}
    record["int8 check rows"] = 600  # a check of 60 rows costs a tenth of one of 600
    assert remaining_costs(record, True, False, 60, 2) == {"check": pytest.approx(0.7)}


def test_untimed_gain_comes_from_the_cpu_flags_and_says_so() -> None:
    assert int8_choice.prior_gain({"model": "x", "flags": ["avx2", "avx512_vnni"]}) == 2.5
    assert int8_choice.prior_gain({"model": "x", "flags": ["avx2"]}) == 1.4
    line = decide_int8(Outlook(10**6, 0.01, 2.5, 2, COSTS, measured=False)).line
    assert "2.5x expected on this CPU, not timed yet" in line


def test_cpu_signature_reads_proc_cpuinfo() -> None:
    sig = int8_choice.cpu_signature()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "model name" in text:
        assert sig["model"] in text
    assert set(sig["flags"]) <= set(int8_choice.INT8_FLAGS)


def test_timings_are_cached_per_model(tmp_path: Path) -> None:
    assert int8_choice.read_speed("model-a") == {}
    int8_choice.keep_speed("model-a", float32=0.01)
    record = int8_choice.keep_speed("model-a", int8=0.004)
    assert record == {"float32": 0.01, "int8": 0.004} == int8_choice.read_speed("model-a")
    assert int8_choice.read_speed("model-b") == {}


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return build_tiny_backbone((TINY_SIZE, TINY_SIZE, 3))


def labelled(per_class: int = 12) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(5)
    colours = np.array([[0.8, -0.6, -0.6], [-0.6, 0.8, -0.6], [-0.6, -0.6, 0.8]], np.float32)
    x = np.concatenate([np.clip(c + rng.normal(0, 0.3, (per_class, TINY_SIZE, TINY_SIZE, 3)),
                                -1, 1) for c in colours]).astype(np.float32)
    return x, [f"class{k}" for k in range(3) for _ in range(per_class)]


def auto_runtime(model: keras.Model, key: str, tmp_path: Path, images: int) -> LiteRTInt8Runtime:
    rt = LiteRTInt8Runtime(model, cache_key=key, cache_dir=tmp_path, requested="auto",
                           max_top1_drop=1.0, min_overlap=0.0)
    x, labels = labelled()
    rt.calibrate(lambda: iter([x[::3]]), "calib", [(x, labels)], 12, "check", images=images)
    return rt


@pytest.mark.parametrize(("gain", "images", "int8"), [(2.7, 10**7, True), (1.001, 10**5, False)])
def test_auto_follows_the_injected_gain(model: keras.Model, tmp_path: Path, gain: float,
                                        images: int, int8: bool) -> None:
    key = f"tiny-auto-{gain}"
    int8_choice.keep_speed(key, float32=0.01, int8=0.01 / gain)  # as if timed here
    rt = auto_runtime(model, key, tmp_path, images)
    assert rt.use_int8_ is int8 and rt.name == ("litert-int8" if int8 else "litert")
    d = rt.describe()
    assert d["requested"] == "auto" and d["decision"] == rt.decision_
    if int8:
        assert rt.decision_.startswith(f"int8: {gain:.1f}x faster here") and rt.decision_.endswith(
            "; check passed")
        assert d["int8"]["passed"] and d["int8"]["converted"]
    else:  # not even converted: the choice came first
        assert rt.decision_.startswith("float32:") and d["int8"]["skipped"]
        assert not list(tmp_path.glob("*int8*.tflite"))


def test_auto_on_a_small_folder_converts_nothing_and_warns_nothing(
        model: keras.Model, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    rt = auto_runtime(model, "tiny-auto-small", tmp_path, images=40)
    assert not rt.use_int8_ and "40 photos do not repay" in rt.decision_
    assert not list(tmp_path.glob("*int8*.tflite"))
    assert not [w for w in recwarn if "int8" in str(w.message)]
    assert "float32" in int8_choice.read_speed("tiny-auto-small")  # float32 was timed
    assert rt.embed(labelled()[0][:2]).shape == (2, TINY_DIM)


def test_a_resume_keeps_the_choice_of_the_build_it_continues() -> None:
    from embed.build import kept_choice

    key = {"items_sha256": "abc", "runtime": "auto", "produced_by": "litert"}
    staged = {**key, "produced_by": "litert-int8"}  # the dead build chose int8
    assert kept_choice(staged, key) == "litert-int8"
    assert kept_choice({**staged, "items_sha256": "other"}, key) is None  # another build
    assert kept_choice(None, key) is None
    assert kept_choice({"items_sha256": "abc", "runtime": "auto"}, key) is None  # older key


@pytest.mark.parametrize("kept", ["litert", "litert-int8"])
def test_auto_keeps_a_choice_it_is_given(model: keras.Model, tmp_path: Path, kept: str) -> None:
    rt = LiteRTInt8Runtime(model, cache_key=f"tiny-kept-{kept}", cache_dir=tmp_path,
                           requested="auto", max_top1_drop=1.0, min_overlap=0.0)
    x, labels = labelled()
    # 40 images would never repay int8's costs: only the kept choice makes it int8
    rt.calibrate(lambda: iter([x[::3]]), "calib", [(x, labels)], 12, "check", images=40,
                 choice=kept)
    assert rt.name == kept and "kept from the interrupted build" in rt.decision_
