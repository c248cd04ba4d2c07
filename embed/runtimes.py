"""Inference runtimes: the same backbone run by Keras (the reference) or a faster engine.

A runtime maps one preprocessed float32 batch (N, H, W, 3) to raw (N, dim) features. It holds
no global state, so each worker process builds its own. The LiteRT runtimes also take uint8
pixels (``embed_pixels(pixels, preprocessing)``) and preprocess them straight into their
interpreters' input buffers; the pipeline uses that where a runtime has it.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from embed.keras_runtime import KerasRuntime
from embed.litert_runtime import LiteRTInt8Runtime, LiteRTRuntime


class Runtime(Protocol):
    name: str

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Raw backbone features for a preprocessed float32 batch."""
        ...

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest about this runtime."""
        ...


RUNTIME_CHOICES = ("auto", "litert", "litert-int8", "keras")
DEFAULT_RUNTIME = "auto"


def gpu_visible() -> bool:
    """Whether TensorFlow sees a GPU (then Keras on the GPU beats LiteRT on the CPU)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def make_runtime(
    model: Any,
    kind: str = "keras",
    *,
    cache_key: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    num_threads: int | None = None,
    **_: Any,
) -> Runtime:
    """Build a runtime for a Keras backbone.

    ``auto`` picks LiteRT (XNNPACK) on CPU and Keras when a GPU is visible. ``litert-int8``
    is the full-integer model, used once `calibrate` has judged it on the build's images
    (float32 LiteRT until then). ``cache_key`` should name backbone, image size and weights
    sha256 so the converted model is reused.
    """
    if kind not in RUNTIME_CHOICES:
        raise ValueError(f"unknown runtime {kind!r}; choose one of {', '.join(RUNTIME_CHOICES)}")
    if kind == "keras" or (kind == "auto" and gpu_visible()):
        return KerasRuntime(model)
    if kind == "litert-int8":
        return LiteRTInt8Runtime(model, cache_key=cache_key, cache_dir=cache_dir,
                                 num_threads=num_threads, requested=kind)
    return LiteRTRuntime(
        model,
        cache_key=cache_key,
        cache_dir=cache_dir,
        num_threads=num_threads,
        requested=kind,
    )


def l2_normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so inner product is cosine similarity."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)
