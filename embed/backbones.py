"""The backbone registry: each model's input size, preprocessing and embedding size as data.

Preprocessing is applied in the input pipeline (see :func:`preprocess`), never guessed at
query time: the spec is recorded in the bundle manifest and query-time embedding rebuilds the
same spec from it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import file_sha256
from embed.errors import UnknownBackboneError, WeightsUnavailableError

# Preprocessing modes, as keras.applications names them.
#   "tf":    scale [0, 255] to [-1, 1]              (MobileNet, MobileNetV2)
#   "caffe": RGB->BGR, subtract ImageNet mean      (ResNet50)
#   "none":  the model rescales inside itself       (EfficientNet, MobileNetV3)
PREPROCESSING_MODES = ("tf", "caffe", "none")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild a backbone identically, kept beside its name."""

    name: str
    keras_name: str  # attribute of keras.applications, or "" for a custom builder
    default_image_size: int
    preprocessing: str
    dim: int
    image_sizes: tuple[int, ...] = ()  # sizes Keras has ImageNet weights for; () = any >= 32
    builder_kwargs: dict[str, Any] = field(default_factory=dict)
    custom_builder: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("custom_builder")
        return d


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, *, replace: bool = False) -> BackboneSpec:
    """Add a backbone; tests register a tiny random-weight one this way."""
    if spec.preprocessing not in PREPROCESSING_MODES:
        raise ValueError(f"unknown preprocessing mode {spec.preprocessing!r}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def known_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; known backbones: {', '.join(known_backbones())}"
        ) from None


_MOBILENET_SIZES = (128, 160, 192, 224)
for _spec in (
    BackboneSpec("mobilenet_v2", "MobileNetV2", 224, "tf", 1280, (96, 128, 160, 192, 224)),
    BackboneSpec("mobilenet", "MobileNet", 224, "tf", 1024, _MOBILENET_SIZES, {"alpha": 1.0}),
    BackboneSpec("mobilenet_025", "MobileNet", 224, "tf", 256, _MOBILENET_SIZES, {"alpha": 0.25}),
    BackboneSpec("mobilenet_050", "MobileNet", 224, "tf", 512, _MOBILENET_SIZES, {"alpha": 0.5}),
    BackboneSpec("mobilenet_v3_large", "MobileNetV3Large", 224, "none", 960),
    BackboneSpec("efficientnet_b0", "EfficientNetB0", 224, "none", 1280),
    BackboneSpec("efficientnet_v2_b0", "EfficientNetV2B0", 224, "none", 1280),
    BackboneSpec("resnet50", "ResNet50", 224, "caffe", 2048),
):
    register_backbone(_spec)

DEFAULT_BACKBONE = "mobilenet_v2"
DEFAULT_WEIGHTS = "imagenet"
WEIGHTS_HELP = "imagenet (Keras download, cached under $KERAS_HOME), a weights file, or none"
RANDOM_WEIGHTS_SEED = 0


def resolve_image_size(spec: BackboneSpec, image_size: int | None, weights: str | None) -> int:
    """Pick the input size; refuse sizes Keras has no ImageNet weights for, saying which it has."""
    size = image_size or spec.default_image_size
    if size < 32:
        raise UnknownBackboneError(f"--image-size {size} is too small; use 32 or more")
    if weights == "imagenet" and spec.image_sizes and size not in spec.image_sizes:
        sizes = ", ".join(map(str, spec.image_sizes))
        raise UnknownBackboneError(
            f"{spec.name} has ImageNet weights only for image sizes {sizes}; got {size}"
        )
    return size


def preprocess(images: Any, mode: str) -> Any:
    """Map float RGB pixels in [0, 255] to what the backbone expects (tf or numpy arrays)."""
    if mode == "tf":
        return images / 127.5 - 1.0
    if mode == "caffe":
        return images[..., ::-1] - _CAFFE_MEAN_BGR
    if mode == "none":
        return images
    raise ValueError(f"unknown preprocessing mode {mode!r}")


PER_VALUE_MODES = ("tf", "none")  # modes that map each 0-255 value on its own


@functools.cache
def preprocess_table(mode: str) -> np.ndarray | None:
    """The 256 float32 values `preprocess` maps 0..255 to (read-only), for modes that map
    each value on its own: the reader and the LiteRT runtimes then preprocess by one table
    lookup. None for modes that mix channels."""
    if mode not in PER_VALUE_MODES:
        return None
    table = np.asarray(preprocess(np.arange(256, dtype=np.float32), mode), np.float32)
    table.setflags(write=False)
    return table


def preprocess_pixels(pixels: np.ndarray, mode: str) -> np.ndarray:
    """uint8 RGB (N, size, size, 3) -> the backbone's float32 inputs, the same numbers as
    `preprocess` on float pixels.

    Modes that map each value on its own ("tf", "none") go through a 256-entry table with
    OpenCV's SIMD lookup: one pass, a third of numpy's divide-then-subtract time.
    """
    from embed.images import opencv

    table = preprocess_table(mode)
    if table is not None and pixels.size:
        rows = np.ascontiguousarray(pixels, np.uint8).reshape(len(pixels), -1)
        return opencv().LUT(rows, table).reshape(pixels.shape)
    out = np.empty(pixels.shape, np.float32)
    out[...] = pixels
    return np.asarray(preprocess(out, mode), np.float32)


def normalise_weights_arg(weights: str | None) -> str | None:
    """`imagenet`, a path (made absolute) or `none`/`random` for random initialisation."""
    if weights is None or weights.lower() in ("none", "random"):
        return None
    if weights == "imagenet":
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"weights file {weights} does not exist; pass --weights imagenet or an existing file"
        )
    return str(path.resolve())


def build_backbone(spec: BackboneSpec, image_size: int, weights: str | None) -> Any:
    """Build the Keras model (include_top=False, average pooling) with the requested weights."""
    import keras

    input_shape = (image_size, image_size, 3)
    if weights is None:
        keras.utils.set_random_seed(RANDOM_WEIGHTS_SEED)  # "random" weights are reproducible
    if spec.custom_builder is not None:
        return spec.custom_builder(input_shape=input_shape, weights=weights)
    ctor = getattr(keras.applications, spec.keras_name)
    try:
        return ctor(
            input_shape=input_shape,
            include_top=False,
            pooling="avg",
            weights=weights,
            **spec.builder_kwargs,
        )
    except Exception as exc:  # Keras raises bare Exception for failed downloads
        if weights == "imagenet" and ("URL fetch failure" in str(exc) or "Errno" in str(exc)):
            raise WeightsUnavailableError(
                f"could not download the ImageNet weights for {spec.name} (offline?). Put Keras'"
                " weight file in $KERAS_HOME/models (default ~/.keras/models), or pass"
                " --weights PATH to a local weights file"
            ) from exc
        if weights not in (None, "imagenet"):
            raise WeightsUnavailableError(
                f"weights file {weights} does not fit backbone {spec.name} at image size"
                f" {image_size}: {exc}"
            ) from exc
        raise


def weights_sha256(model: Any) -> str:
    """Hash of the loaded weight tensors: identifies the weights whatever file they came from."""
    digest = hashlib.sha256()
    for w in model.weights:
        value = w.numpy()
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def load_finetuned_backbone(head_file: str | Path, sha256: str, layer: str) -> Any:
    """The backbone sub-model of a fine-tuned `.keras` head, refused if the file has changed.

    Loaded with Keras' safe mode (no arbitrary code), and only after its sha256 matches the one
    recorded when the fine-tuned backbone was first used.
    """
    import keras

    path = Path(head_file)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the fine-tuned backbone comes from {path}, which is missing; put that bundle back"
            " or rebuild without --backbone-from"
        )
    actual = file_sha256(path)
    if actual != sha256:
        raise WeightsUnavailableError(
            f"{path} has changed since it was recorded (sha256 {actual[:12]}…, expected"
            f" {sha256[:12]}…); rebuild with --backbone-from to use the new head"
        )
    model = keras.models.load_model(path, compile=False, safe_mode=True)
    try:
        return model.get_layer(layer)
    except ValueError:
        raise WeightsUnavailableError(f"{path} has no backbone layer named {layer!r}") from None
