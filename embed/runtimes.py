"""Inference runtimes: the same backbone run by Keras (the reference) or a faster engine.

A runtime maps one preprocessed float32 batch (N, H, W, 3), or uint8 pixels, to raw (N, dim)
features. It holds no global state, so each worker process builds its own. `Runtime` is the
whole contract callers rely on: the embedding loop, the build's one-time preparation
(`embed.build.prepare_runtime`), the serving model a bundle keeps and the model Ray workers
run all go through these members, never through probing for attributes or runtime names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from embed.int8_runtime import LiteRTInt8Runtime
from embed.keras_runtime import KerasRuntime
from embed.litert_runtime import LiteRTRuntime


class Runtime(Protocol):
    """What every runtime (Keras, LiteRT float32, LiteRT int8, a bundle's `.tflite`) offers.

    One-time work happens before the embedding loop, through `check_parity` and
    `calibrate`; afterwards `name`, `model_file` and `describe` say what produces the
    vectors, and every later batch is steady-state work.
    """

    @property
    def name(self) -> str:
        """What produces the vectors now: "keras", "litert" or "litert-int8"."""
        ...

    @property
    def requested(self) -> str:
        """What the user asked for ("auto", "litert", ...), kept for the manifest."""
        ...

    @property
    def concurrency(self) -> int:
        """How many embed calls run side by side (the pipeline runs that many workers)."""
        ...

    @property
    def parity(self) -> dict[str, Any] | None:
        """The float32 model's first-batch agreement with Keras (mean_cosine, min_cosine,
        passed, rows); None before the check, and for Keras itself."""
        ...

    @property
    def parity_pending(self) -> bool:
        """True while `check_parity` still has work to do on a first batch."""
        ...

    @property
    def fallback_reason(self) -> str | None:
        """Why the vectors do not come from the model that was asked for, or None."""
        ...

    @property
    def seconds(self) -> dict[str, float]:
        """One-time costs so far, in seconds (conversion, parity, int8 conversion, int8
        check); kept apart from the embedding loop's steady state."""
        ...

    @property
    def float_runtime(self) -> Runtime:
        """The float32 runtime checked against Keras: the one under int8, else itself."""
        ...

    @property
    def calibrates(self) -> bool:
        """Whether `calibrate` wants samples of the build's images (int8 only): callers
        read the samples only then."""
        ...

    @property
    def model_file(self) -> Path | None:
        """The checked `.tflite` that produces the vectors: the file a bundle serves and
        Ray workers run. None while unchecked, and when Keras produces them."""
        ...

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Raw backbone features for a preprocessed float32 batch."""
        ...

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        """Raw features for uint8 RGB pixels (N, size, size, 3) under `preprocessing`:
        LiteRT preprocesses them straight into its input buffer, Keras into a float copy."""
        ...

    def check_parity(self, batch: np.ndarray) -> None:
        """The one-time check against Keras on a preprocessed batch (LiteRT falls back to
        Keras when it fails); a no-op when done or when there is nothing to check."""
        ...

    def calibrate(
        self,
        calibration: Callable[[], Iterator[np.ndarray]],
        calibration_id: str,
        check: Iterable[tuple[np.ndarray, Sequence[str | None]]],
        calibration_rows: int | None = None,
        check_id: str | None = None,
        images: int | None = None,
        choice: str | None = None,
    ) -> dict[str, Any] | None:
        """int8: quantise on the calibration batches, judge on the check batches, choose
        (see `LiteRTInt8Runtime.calibrate`; under ``auto`` only when the `images` to embed
        repay int8's one-time costs, or as `choice`, an interrupted build's, said); returns
        the manifest's int8 figures. Others: None, nothing done."""
        ...

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest about this runtime."""
        ...


RUNTIME_CHOICES = ("auto", "litert", "litert-int8", "keras")
DEFAULT_RUNTIME = "auto"


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (then Keras on the GPU beats LiteRT on the CPU). Without
    an NVIDIA device node there is none to see, and TensorFlow is not imported to say so."""
    import glob

    if not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg"):
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def make_runtime(
    model: Any,
    kind: str = "keras",
    *,
    cache_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
    reuse_parity: bool = False,
    **_: Any,
) -> Runtime:
    """Build a runtime for a Keras backbone.

    ``auto`` picks LiteRT (XNNPACK) on CPU, int8 where `calibrate` finds that it pays here
    and passes its check (`embed.int8_choice`), and Keras when a GPU is visible.
    ``litert-int8`` is the full-integer model, used once `calibrate` has judged it on the
    build's images (float32 LiteRT until then). ``reuse_parity``: trust a passed parity
    verdict cached beside the export (builds; then Keras is never built). ``cache_key``
    should name backbone, image size and weights sha256 so the converted model is reused.
    """
    if kind not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    if kind == "keras" or (kind == "auto" and gpu_visible()):
        return KerasRuntime(model, requested=kind)
    if kind in ("litert-int8", "auto"):
        return LiteRTInt8Runtime(model, cache_key=cache_key, cache_dir=cache_dir,
                                 num_threads=num_threads, requested=kind,
                                 reuse_parity=reuse_parity)
    return LiteRTRuntime(model, cache_key=cache_key, cache_dir=cache_dir,
                         num_threads=num_threads, requested=kind, reuse_parity=reuse_parity)


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
