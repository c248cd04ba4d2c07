"""Runtimes: choice, LiteRT conversion cache, parity with Keras and the fall-back."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")

from embed import runtimes  # noqa: E402
from embed.litert_runtime import (  # noqa: E402
    LiteRTRuntime,
    default_cache_dir,
    default_num_threads,
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
    with pytest.raises(ValueError, match="auto, litert, keras"):
        make_runtime(model, "onnx")


@pytest.mark.parametrize(("gpu", "expected"), [(False, "litert"), (True, "keras")])
def test_auto_picks_litert_on_cpu_and_keras_on_gpu(
    model: keras.Model, cache: Path, monkeypatch: pytest.MonkeyPatch, gpu: bool, expected: str
) -> None:
    monkeypatch.setattr(runtimes, "gpu_visible", lambda: gpu)
    rt = make_runtime(model, "auto", cache_key="tiny-32-abc", cache_dir=cache)
    assert rt.name == expected
    if expected == "litert":
        assert isinstance(rt, LiteRTRuntime)
        assert rt.describe()["requested"] == "auto"
        assert rt.num_threads == default_num_threads()


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
    assert d["num_threads"] == 2
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
    assert rt._model._batch_size == 4  # the arena was planned for 4 rows only
    np.testing.assert_allclose(got, np.asarray(model(batch)), rtol=1e-3, atol=1e-4)
    assert rt.parity_["rows"] == 11 and rt.parity_["passed"]


@pytest.mark.parametrize("max_rows", [None, 3])
def test_keras_runtime_slices_match_calling_the_model(model: keras.Model, max_rows: int) -> None:
    batch = images(7, seed=4)
    got = KerasRuntime(model, max_rows=max_rows).embed(batch)
    assert got.dtype == np.float32 and got.shape == (7, 16)
    np.testing.assert_allclose(got, np.asarray(model(batch, training=False)), rtol=1e-5, atol=1e-6)
    assert KerasRuntime(model).embed(batch[:0]).shape == (0, 16)
