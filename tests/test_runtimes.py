"""Runtimes: choice, LiteRT conversion cache, parity with Keras and the fall-back."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from embed import runtimes  # noqa: E402
from embed.int8_runtime import LiteRTInt8Runtime  # noqa: E402
from embed.litert_model import default_num_threads, default_replicas  # noqa: E402
from embed.litert_runtime import (  # noqa: E402
    LiteRTRuntime,
    default_cache_dir,
    export_litert,
    row_cosines,
)
from embed.runtimes import KerasRuntime, make_runtime  # noqa: E402


def tiny_model(seed: int = 0, name: str = "tiny") -> keras.Model:
    """A few convolutions and average pooling at 32x32: the shape of a real backbone."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu")(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, outputs, name=name)


def images(n: int, size: int = 32, seed: int = 1) -> np.ndarray:
    """Preprocessed input as the pipeline hands it over: float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return tiny_model()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("litert-cache")


@pytest.fixture(scope="module")
def runtime(model: keras.Model, cache: Path) -> LiteRTRuntime:
    return LiteRTRuntime(model, cache_key="tiny-32-abc", cache_dir=cache, num_threads=2)


def test_keras_runtime_is_the_default(model: keras.Model) -> None:
    rt = make_runtime(model, "keras")
    assert isinstance(rt, KerasRuntime)
    assert rt.describe() == {"name": "keras"}
    assert make_runtime(model).name == "keras"


def test_unknown_runtime_names_the_choices(model: keras.Model) -> None:
    with pytest.raises(ValueError, match="auto, litert, litert-int8, keras"):
        make_runtime(model, "onnx")


@pytest.mark.parametrize(("gpu", "expected"), [(False, "litert"), (True, "keras")])
def test_auto_picks_litert_on_cpu_and_keras_on_gpu(
    model: keras.Model, cache: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool, expected: str
) -> None:
    monkeypatch.setattr(runtimes, "gpu_visible", lambda: gpu)
    rt = make_runtime(model, "auto", cache_key="tiny-32-abc", cache_dir=cache)
    assert rt.name == expected
    if expected == "litert":  # float32 LiteRT until calibrate finds that int8 pays here
        assert isinstance(rt, LiteRTInt8Runtime) and rt.calibrates
        assert isinstance(rt.float_runtime, LiteRTRuntime)
        assert rt.describe()["requested"] == "auto"
        assert rt.float_runtime.num_threads == default_num_threads() == 1
        assert rt.float_runtime.replicas == default_replicas()


def test_litert_matches_keras_within_the_parity_bound(
    model: keras.Model, runtime: LiteRTRuntime
) -> None:
    batch = images(6)
    got = runtime.embed(batch)
    want = np.asarray(model(batch, training=False))
    assert got.shape == (6, 16) and got.dtype == np.float32
    cos = row_cosines(got, want)
    assert cos.mean() >= 0.999 and cos.min() >= 0.995
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_describe_reports_parity_threads_and_cache_file(
    runtime: LiteRTRuntime, cache: Path
) -> None:
    runtime.embed(images(3))
    d = runtime.describe()
    assert d["name"] == "litert" and d["requested"] == "litert"
    assert d["num_threads"] == 2 and d["precision"] == "float32"
    assert d["cache_file"] == str(cache / "tiny-32-abc.tflite")
    assert d["parity"]["passed"] is True
    assert d["parity"]["mean_cosine"] >= 0.999 and d["parity"]["min_cosine"] >= 0.995
    assert "fallback_reason" not in d


def test_variable_batch_sizes_and_empty_batch(model: keras.Model, runtime: LiteRTRuntime) -> None:
    for n in (1, 5, 5, 2):
        batch = images(n, seed=n)
        np.testing.assert_allclose(
            runtime.embed(batch), np.asarray(model(batch)), rtol=1e-3, atol=1e-4
        )
    assert runtime.embed(np.zeros((0, 32, 32, 3), np.float32)).shape == (0, 16)


def test_second_construction_converts_nothing(model: keras.Model, tmp_path: Path) -> None:
    first = LiteRTRuntime(model, cache_key="k/1", cache_dir=tmp_path)
    assert first.converted_
    mtime = first.cache_file.stat().st_mtime_ns
    second = LiteRTRuntime(model, cache_key="k/1", cache_dir=tmp_path)
    assert not second.converted_
    assert second.cache_file == first.cache_file
    assert second.cache_file.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["k_1.tflite"]  # no temp files left
    batch = images(2)
    np.testing.assert_array_equal(first.embed(batch), second.embed(batch))


def test_unloadable_cached_file_is_converted_again(model: keras.Model, tmp_path: Path) -> None:
    (tmp_path / "k.tflite").write_bytes(b"not a flatbuffer")
    rt = LiteRTRuntime(model, cache_key="k", cache_dir=tmp_path)
    assert rt.converted_ and rt.name == "litert"
    assert rt.cache_file.stat().st_size > 1000
    assert rt.embed(images(2)).shape == (2, 16)


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "litert"
    monkeypatch.delenv("EMBED_DOGS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "embed-dogs" / "litert"


def test_wrong_converted_model_fails_parity_and_falls_back(
    model: keras.Model, tmp_path: Path
) -> None:
    wrong = export_litert(tiny_model(seed=7, name="other"), tmp_path / "wrong.tflite")
    rt = LiteRTRuntime(model, tflite_path=wrong)
    batch = images(4)
    with pytest.warns(RuntimeWarning, match="disagrees with Keras"):
        got = rt.embed(batch)
    want = np.asarray(model(batch, training=False))
    np.testing.assert_array_equal(got, want)
    d = rt.describe()
    assert d["name"] == "keras" and d["requested"] == "litert"
    assert d["parity"]["passed"] is False and d["parity"]["mean_cosine"] < 0.999
    later = images(3, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not on every batch
        np.testing.assert_array_equal(rt.embed(later), np.asarray(model(later)))


def test_unreachable_threshold_forces_the_fall_back(model: keras.Model, cache: Path) -> None:
    rt = LiteRTRuntime(model, cache_key="tiny-32-abc", cache_dir=cache, min_min_cosine=1.01)
    with pytest.warns(RuntimeWarning, match="falling back"):
        rt.embed(images(2))
    assert rt.name == "keras" and rt.describe()["parity"]["passed"] is False


def test_failed_conversion_falls_back_to_keras(
    model: keras.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("op not supported")

    monkeypatch.setattr("embed.litert_runtime.export_litert", broken)
    with pytest.warns(RuntimeWarning, match="op not supported"):
        rt = LiteRTRuntime(model, cache_key="x", cache_dir=tmp_path)
    assert rt.name == "keras"
    assert "op not supported" in rt.describe()["fallback_reason"]
    assert rt.embed(images(2)).shape == (2, 16)


def test_mobilenet_v2_parity(tmp_path: Path) -> None:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), include_top=False, pooling="avg", weights=None, alpha=0.35
    )
    rt = make_runtime(model, "litert", cache_key="mnv2-96", cache_dir=tmp_path)
    out = rt.embed(images(4, size=96))
    assert out.shape == (4, 1280)
    d = rt.describe()
    assert d["name"] == "litert", d
    assert d["parity"]["mean_cosine"] >= 0.999 and d["parity"]["min_cosine"] >= 0.995


def test_large_batches_run_in_fixed_slices(model: keras.Model, cache: Path) -> None:
    rt = LiteRTRuntime(model, cache_key="tiny-32-abc", cache_dir=cache, max_rows=4)
    batch = images(11, seed=3)
    got = rt.embed(batch)  # slices of 4, 4 and 3 padded to 4
    assert got.shape == (11, 16)
    assert {s.batch_size for s in rt._model._slots} - {None} == {4}  # planned for 4 rows only
    np.testing.assert_allclose(got, np.asarray(model(batch)), rtol=1e-3, atol=1e-4)
    assert rt.parity_["rows"] == 11 and rt.parity_["passed"]


def test_pixels_preprocessed_into_the_interpreter_give_the_float_path_numbers(
        model: keras.Model, cache: Path) -> None:
    """uint8 pixels looked up straight into LiteRT's input buffer: exactly what the float
    path gives, for whole, sliced and padded batches, before and after the parity check."""
    from embed.backbones import preprocess_pixels
    from embed.litert_model import BundledLiteRTRuntime

    rt = LiteRTRuntime(model, cache_key="tiny-32-abc", cache_dir=cache, max_rows=4)
    pixels = np.random.default_rng(8).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    first = rt.embed_pixels(pixels[:5], "tf")  # the parity check, on floats
    assert rt.parity_ is not None and rt.parity_["rows"] == 5
    floats = preprocess_pixels(pixels, "tf")
    want = rt.embed(floats)
    np.testing.assert_array_equal(first, want[:5])
    for n in (11, 4, 3, 1):  # slices of 4 (the last one padded with stale rows), or one call
        np.testing.assert_array_equal(rt.embed_pixels(pixels[:n], "tf"), want[:n])
    assert rt.embed_pixels(pixels[:0], "tf").shape == (0, 16)
    # a mode that mixes channels has no table: it goes through floats, same numbers
    np.testing.assert_array_equal(rt.embed_pixels(pixels[:3], "caffe"),
                                  rt.embed(preprocess_pixels(pixels[:3], "caffe")))
    served = BundledLiteRTRuntime(rt.cache_file, replicas=2)
    np.testing.assert_array_equal(served.embed_pixels(pixels, "tf"), served.embed(floats))


@pytest.mark.parametrize("max_rows", [None, 3])
def test_keras_runtime_slices_match_calling_the_model(model: keras.Model, max_rows: int) -> None:
    batch = images(7, seed=4)
    got = KerasRuntime(model, max_rows=max_rows).embed(batch)
    assert got.dtype == np.float32 and got.shape == (7, 16)
    np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), rtol=1e-5, atol=1e-6)
    assert KerasRuntime(model).embed(batch[:0]).shape == (0, 16)


def labelled_images(per_class: int = 12, size: int = 32, seed: int = 5
                    ) -> tuple[np.ndarray, list[str]]:
    """Three classes of preprocessed images, each around its own colour."""
    rng = np.random.default_rng(seed)
    colours = np.array([[0.8, -0.6, -0.6], [-0.6, 0.8, -0.6], [-0.6, -0.6, 0.8]], np.float32)
    x = np.concatenate([np.clip(c + rng.normal(0, 0.3, (per_class, size, size, 3)), -1, 1)
                        for c in colours]).astype(np.float32)
    return x, [f"class{k}" for k in range(3) for _ in range(per_class)]


def calibrate(rt: LiteRTInt8Runtime, check_id: str | None = None) -> dict:
    x, labels = labelled_images()
    return rt.calibrate(lambda: iter([x[::3]]), "calib-sample-1", [(x[:18], labels[:18]),
                        (x[18:], labels[18:])], 12, check_id)


def test_int8_converts_judges_and_embeds_with_int8(model: keras.Model, tmp_path: Path) -> None:
    rt = LiteRTInt8Runtime(model, cache_key="tiny-32-abc", cache_dir=tmp_path,
                           max_top1_drop=1.0, min_overlap=0.0)
    assert rt.name == "litert" and rt.describe()["int8"]["reason"] == "not calibrated"
    figures = calibrate(rt)
    assert figures["passed"] and figures["converted"] and figures["rows"] == 36
    assert rt.name == "litert-int8" and rt.use_int8_
    assert rt.cache_file == tmp_path / "tiny-32-abc-int8-calib-sample-1.tflite"
    from ai_edge_litert.interpreter import Interpreter

    kinds = {t["dtype"] for t in Interpreter(str(rt.cache_file)).get_tensor_details()}
    assert np.int8 in kinds  # weights and activations in int8; float32 only in and out
    batch = images(5)
    got = rt.embed(batch)
    assert got.shape == (5, 16) and not np.array_equal(got, rt.float_.embed(batch))
    pixels = np.random.default_rng(2).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    from embed.backbones import preprocess_pixels

    np.testing.assert_array_equal(rt.embed_pixels(pixels, "tf"),
                                  rt.embed(preprocess_pixels(pixels, "tf")))  # int8 too
    assert row_cosines(got, np.asarray(model(batch))).mean() > 0.9  # close, not equal
    d = rt.describe()
    assert d["name"] == "litert-int8" and d["precision"] == "int8"
    assert d["requested"] == "litert-int8" and d["parity"]["passed"]
    assert d["int8"]["top1_float32"] is not None and "overlap_at_10" in d["int8"]
    assert set(rt.seconds_) == {"int8 conversion", "int8 check"}


def test_int8_model_and_verdict_are_cached(model: keras.Model, tmp_path: Path) -> None:
    first = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, max_top1_drop=1.0,
                              min_overlap=0.0)
    calibrate(first, check_id="check-sample")
    again = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, max_top1_drop=1.0,
                              min_overlap=0.0)
    figures = calibrate(again, check_id="check-sample")
    assert "converted" not in figures and figures["check_cached"] is True
    assert figures["overlap_at_10"] == first.int8_["overlap_at_10"]
    assert again.use_int8_ and "int8 conversion" not in again.seconds_
    other = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, max_top1_drop=1.0,
                              min_overlap=0.5)  # other bounds: judged again
    assert "check_cached" not in calibrate(other, check_id="check-sample")


def test_int8_failing_the_task_check_falls_back_to_float32(model: keras.Model,
                                                            tmp_path: Path) -> None:
    rt = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, min_overlap=1.01)
    with pytest.warns(RuntimeWarning, match="int8 model not used .*overlap@10.*< 1.01"):
        figures = calibrate(rt)
    assert figures["passed"] is False
    assert rt.name == "litert" and rt.cache_file == rt.float_.cache_file
    batch = images(3)
    np.testing.assert_array_equal(rt.embed(batch), rt.float_.embed(batch))
    d = rt.describe()
    assert d["precision"] == "float32" and d["int8"]["passed"] is False
    assert "overlap@10" in d["int8"]["reason"]
    again = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, min_overlap=1.01)
    with pytest.warns(RuntimeWarning):
        again_figures = calibrate(again)
    figures.pop("converted")
    assert again_figures == figures  # the same verdict, deterministically


def test_int8_conversion_failure_falls_back(model: keras.Model, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("no int8 kernel")

    monkeypatch.setattr("embed.int8_runtime.export_int8", broken)
    rt = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path)
    with pytest.warns(RuntimeWarning, match="no int8 kernel"):
        calibrate(rt)
    assert rt.name == "litert" and rt.embed(images(2)).shape == (2, 16)


def test_make_runtime_builds_the_int8_runtime(model: keras.Model, tmp_path: Path) -> None:
    rt = make_runtime(model, "litert-int8", cache_key="k", cache_dir=tmp_path)
    assert isinstance(rt, LiteRTInt8Runtime) and rt.requested == "litert-int8"


def test_replicas_serve_concurrent_calls_with_the_serial_answers(
    model: keras.Model, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rt = LiteRTRuntime(model, cache_key="k", cache_dir=tmp_path, replicas=3, num_threads=1)
    assert rt.concurrency == 3 and len(rt._model._slots) == 3
    batches = [images(4, seed=s) for s in range(12)]
    serial = [rt.embed(b) for b in batches]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(rt.embed, batches))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- the Runtime contract --------------------------------------------------------------
def protocol_members() -> set[str]:
    """Every member `embed.runtimes.Runtime` declares."""
    return {name for name in vars(runtimes.Runtime) if not name.startswith("_")}


def test_the_protocol_declares_what_callers_use() -> None:
    assert protocol_members() == {
        "name", "requested", "concurrency", "parity", "parity_pending", "fallback_reason",
        "seconds", "float_runtime", "calibrates", "model_file", "embed", "embed_pixels",
        "check_parity", "calibrate", "describe"}


def test_callers_use_the_protocol_not_probes() -> None:
    """No `getattr`/`hasattr` on a runtime and no dispatch on its name outside the runtimes:
    the Protocol is the whole contract (how the Ray path once skipped int8 unnoticed)."""
    import re

    root = Path(runtimes.__file__).parent
    probes = re.compile(r"(getattr|hasattr)\(\s*[\w.]*runtime\b"
                        r"|runtime\.name\s*(==|!=|\.startswith)"
                        r"|\.(float_|parity_|seconds_|error_|fell_back_|cache_file)\b")
    own = {"runtimes.py", "keras_runtime.py", "litert_runtime.py", "litert_model.py",
           "int8_runtime.py"}
    found = [f"{path.name}:{n}: {line.strip()}" for path in sorted(root.glob("*.py"))
             if path.name not in own
             for n, line in enumerate(path.read_text().splitlines(), 1) if probes.search(line)]
    assert found == []


def check_contract(rt: object) -> None:
    missing = sorted(m for m in protocol_members() if not hasattr(rt, m))
    assert missing == [], f"{type(rt).__name__} lacks {missing}"


def test_keras_implements_the_contract_with_honest_no_ops(model: keras.Model) -> None:
    from embed.backbones import preprocess_pixels

    rt = make_runtime(model, "keras")
    check_contract(rt)
    assert rt.concurrency == 1 and rt.parity is None and not rt.parity_pending
    assert rt.fallback_reason is None and rt.seconds == {} and rt.float_runtime is rt
    assert not rt.calibrates and rt.model_file is None and rt.requested == "keras"
    rt.check_parity(images(2))
    assert rt.calibrate(lambda: iter(()), "id", []) is None
    pixels = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rt.embed_pixels(pixels, "tf"),
                                  rt.embed(preprocess_pixels(pixels, "tf")))


def test_litert_ships_its_model_only_once_checked(model: keras.Model, tmp_path: Path) -> None:
    rt = LiteRTRuntime(model, cache_key="k", cache_dir=tmp_path)
    check_contract(rt)
    assert rt.parity_pending and rt.model_file is None and rt.float_runtime is rt
    assert not rt.calibrates and rt.calibrate(lambda: iter(()), "id", []) is None
    rt.check_parity(images(0))  # nothing to check on: still pending
    assert rt.parity_pending
    rt.check_parity(images(3))
    assert not rt.parity_pending and rt.parity is not None and rt.parity["passed"]
    assert rt.model_file == rt.cache_file and rt.fallback_reason is None
    assert {"conversion", "parity"} <= set(rt.seconds)
    rt.check_parity(images(2, seed=5))
    assert rt.parity["rows"] == 3  # checked once


def test_litert_that_fails_parity_ships_nothing(model: keras.Model, tmp_path: Path) -> None:
    wrong = export_litert(tiny_model(seed=7, name="other"), tmp_path / "wrong.tflite")
    rt = LiteRTRuntime(model, tflite_path=wrong)
    with pytest.warns(RuntimeWarning):
        rt.check_parity(images(4))
    assert rt.model_file is None and rt.name == "keras" and rt.concurrency == 1
    assert "disagrees with Keras" in rt.fallback_reason and not rt.parity_pending


def test_int8_contract_follows_the_task_check(model: keras.Model, tmp_path: Path) -> None:
    rt = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, max_top1_drop=1.0,
                           min_overlap=0.0)
    check_contract(rt)
    assert rt.calibrates and rt.float_runtime is rt.float_ and rt.parity_pending
    rt.check_parity(images(3))  # the float model's parity check
    assert not rt.parity_pending and rt.parity == rt.float_.parity
    assert rt.model_file == rt.float_.cache_file and rt.fallback_reason is None
    calibrate(rt)
    assert rt.model_file == rt.int8_file and "-int8-" in rt.model_file.name
    assert {"conversion", "parity", "int8 conversion", "int8 check"} <= set(rt.seconds)
    strict = LiteRTInt8Runtime(model, cache_key="k", cache_dir=tmp_path, min_overlap=1.01)
    strict.check_parity(images(3))
    with pytest.warns(RuntimeWarning):
        calibrate(strict)
    assert strict.model_file == strict.float_.cache_file and strict.name == "litert"
    assert strict.fallback_reason.startswith("int8 model not used: neighbour overlap@10")


def test_a_bundled_model_is_trusted_as_it_is(runtime: LiteRTRuntime) -> None:
    from embed.litert_model import BundledLiteRTRuntime

    runtime.check_parity(images(2))
    served = BundledLiteRTRuntime(runtime.cache_file, parity=runtime.parity,
                                  name="litert-int8", replicas=2)
    check_contract(served)
    assert served.model_file == runtime.cache_file and served.parity == runtime.parity
    assert not served.parity_pending and not served.calibrates and served.seconds == {}
    assert served.concurrency == 2 and served.requested == "litert-int8"
    assert served.float_runtime is served and served.fallback_reason is None
