"""A ready-to-use embedder: backbone spec + loaded model + runtime, and its manifest identity."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path
from embed.backbones import (
    BackboneSpec,
    build_backbone,
    file_sha256,
    get_backbone,
    load_finetuned_backbone,
    normalise_weights_arg,
    preprocess_pixels,
    resolve_image_size,
    weights_sha256,
)
from embed.bundle import SERVING_MODEL, Bundle, check_same_backbone
from embed.errors import BundleError, WeightsUnavailableError, first_line
from embed.images import DECODER_VERSION, MAX_PIXELS, decode_image
from embed.litert_model import BundledLiteRTRuntime
from embed.pipeline import (
    DEFAULT_BATCH_SIZE,
    EmbeddedBatch,
    ReaderConfig,
    embed_batch,
    embed_pixels,
    iter_embedded_batches,
)
from embed.prepared import LazyModel, PreparedBackbone, prepared_key, read_prepared, write_prepared
from embed.runtimes import Runtime, make_runtime
from embed.sources import ImageItem

log = logging.getLogger(__name__)


@dataclass
class Embedder:
    """A backbone ready to embed: its spec, size, weights identity and runtime.

    `model` is the Keras model, or None for a serving embedder that runs the bundle's own
    `.tflite` without TensorFlow (then `dim` comes from the manifest).
    """

    spec: BackboneSpec
    image_size: int
    weights: str | None  # "imagenet", an absolute path, or None (random)
    model: Any
    runtime: Runtime
    weights_hash: str
    lineage: dict[str, Any] = field(default_factory=dict)
    weights_file: str | None = None  # the copy inside the bundle, once saved there
    serving_model: str | None = None  # the bundle's .tflite, once saved there
    dim: int = 0
    load_seconds: float = 0.0  # building the model and its runtime (start-up, conversion)
    prepared_key: str | None = None  # its `embed.prepared` record, when it has one
    prepared: dict[str, float] | None = None  # `embed.build.prepare_runtime`'s costs, once run

    def __post_init__(self) -> None:
        if not self.dim:
            self.dim = int(self.model.output_shape[-1])

    def identity(self) -> dict[str, Any]:
        """The backbone section of the manifest."""
        return {
            "name": self.spec.name,
            "keras_name": self.spec.keras_name,
            "builder_kwargs": dict(self.spec.builder_kwargs),
            "image_size": self.image_size,
            "preprocessing": self.spec.preprocessing,
            "dim": self.dim,
            "weights": self.weights or "random",
            "weights_sha256": self.weights_hash,
            "decoder": DECODER_VERSION,
            "runtime": self.runtime.describe(),
            **({"weights_file": self.weights_file} if self.weights_file else {}),
            **({"serving_model": self.serving_model} if self.serving_model else {}),
            **({"lineage": self.lineage} if self.lineage else {}),
        }

    def reader_config(self, batch_size: int = DEFAULT_BATCH_SIZE) -> ReaderConfig:
        """The reader settings this backbone needs: its input size and preprocessing."""
        return ReaderConfig(self.image_size, self.spec.preprocessing, batch_size)

    def inputs_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, size, size, 3) -> the backbone's preprocessed float32 inputs."""
        return preprocess_pixels(np.asarray(pixels, np.uint8), self.spec.preprocessing)

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed inputs -> unit vectors (the mapper)."""
        return embed_batch(self.runtime, inputs)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, size, size, 3) -> unit vectors."""
        return embed_pixels(self.runtime, pixels, self.spec.preprocessing)

    def embedded_batches(
        self, items: Sequence[ImageItem], batch_size: int = DEFAULT_BATCH_SIZE,
        encoded: Any = None,
    ) -> Iterator[EmbeddedBatch]:
        """Read, decode and embed items with this backbone's size and preprocessing."""
        return iter_embedded_batches(items, self.reader_config(batch_size), self.runtime, encoded)

    def embed_image_bytes(self, data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """One encoded image -> one unit vector (raises ImageDecodeError on bad input, and on
        images over `max_pixels`, judged from the header before decoding)."""
        image = decode_image(data, self.image_size, max_pixels)
        return self.embed_pixels(image.pixels[None])[0]


def load_embedder(
    backbone: str,
    weights: str | None = "imagenet",
    image_size: int | None = None,
    runtime: str = "auto",
) -> Embedder:
    """Build the named backbone; weights `imagenet` (Keras cache), a path, or `none`."""
    start = time.perf_counter()
    spec = get_backbone(backbone)
    weights = normalise_weights_arg(weights)
    size = resolve_image_size(spec, image_size, weights)
    model = LazyModel(lambda: _build_logged(spec, size, weights))
    key = prepared_key(spec, size, weights)
    prepared = read_prepared(key)
    if prepared is None:  # first time with these weights: build Keras to know them
        digest, dim = weights_sha256(model), int(model.output_shape[-1])
        write_prepared(key, digest, dim)
        prepared = PreparedBackbone(digest, dim, None)
    digest = prepared.weights_sha256
    rt = make_runtime(model, runtime, cache_key=f"{spec.name}-{size}-{digest[:16]}",
                      reuse_parity=True)
    return Embedder(spec, size, weights, model, rt, prepared.weights_sha256, dim=prepared.dim,
                    load_seconds=time.perf_counter() - start, prepared_key=key)


def _build_logged(spec: BackboneSpec, size: int, weights: str | None) -> Any:
    log.info("loading backbone %s at %d px (weights: %s)", spec.name, size, weights or "random")
    return build_backbone(spec, size, weights)


def finetuned_lineage(bundle_dir: str | Path) -> dict[str, Any]:
    """Where a fine-tuned backbone comes from: the bundle, its head file and that file's sha256."""
    source = Bundle.open(bundle_dir)
    manifest = source.manifest
    record = manifest.heads.get("finetune")
    if record is None:
        raise BundleError(
            f"bundle {bundle_dir} has no fine-tuned head; run `embed-dogs train --bundle"
            f" {bundle_dir} --head finetune` first"
        )
    head_file = source.inside(record.file)
    base = manifest.backbone
    return {
        "bundle": str(source.root.resolve()),
        "head": "finetune",
        "head_file": str(head_file),
        "head_sha256": file_sha256(head_file),
        "backbone_layer": record.get("backbone_layer"),
        "unfrozen_layers": record.get("unfrozen_layers", 0),
        "base_backbone": {k: base.get(k) for k in (
            "name", "image_size", "preprocessing", "weights", "weights_sha256")},
    }


def save_serving_weights(embedder: Embedder, bundle: Bundle) -> None:
    """Copy the backbone's weights into the bundle, so queries need neither the original
    weights file, nor Keras' cache, nor the bundle a fine-tuned backbone came from."""
    path = bundle.backbone_weights_path
    key = embedder.prepared_key
    prepared = read_prepared(key) if key else None
    built = not isinstance(embedder.model, LazyModel) or embedder.model.built
    with atomic_path(path, suffix=".weights.h5") as tmp:
        if prepared is not None and prepared.weights_copy is not None and not built:
            shutil.copyfile(prepared.weights_copy, tmp)  # Keras saved these once already
        else:
            embedder.model.save_weights(tmp)
    if key and (prepared is None or prepared.weights_copy is None):
        write_prepared(key, embedder.weights_hash, embedder.dim, path)
    bundle.record_files(path)
    embedder.weights_file = bundle.relative(path)


def save_serving_model(embedder: Embedder, bundle: Bundle) -> None:
    """Copy the model that produces the vectors (`Runtime.model_file`: LiteRT's after its
    parity check, the int8 model when it passed its task check) into the bundle, so queries
    and Ray workers embed with exactly it and without TensorFlow. Nothing when Keras
    produces them (the bundle's weights rebuild it)."""
    source = embedder.runtime.model_file
    if source is None:
        return
    path = bundle.root / SERVING_MODEL
    if not (path.is_file() and path.resolve() == Path(source).resolve()):  # not its own yet
        with atomic_path(path, suffix=".tflite") as tmp:
            shutil.copyfile(source, tmp)
    bundle.record_files(path)
    embedder.serving_model = bundle.relative(path)
    bundle.update_manifest(backbone=embedder.identity())


def serving_embedder(bundle: Bundle, runtime: str | None = None) -> Embedder:
    """The embedder for queries: the bundle's own `.tflite` run by LiteRT without TensorFlow
    when the bundle has one and the runtime allows it; otherwise the Keras backbone rebuilt
    from the bundle's weights (`embedder_for_bundle`)."""
    recorded = bundle.manifest.backbone
    kind = runtime or os.environ.get("EMBED_DOGS_RUNTIME") or "auto"
    relative = recorded.serving_model
    if kind not in ("auto", "litert", "litert-int8") or not relative:
        return embedder_for_bundle(bundle, runtime)
    path = bundle.checked_file(relative)
    if path is None:
        raise BundleError(
            f"the bundle's serving model {bundle.inside(relative)} is missing or not the file"
            " that was written;"
            f" run `embed-dogs verify --bundle {bundle.root}` or rebuild the bundle"
        )
    spec = get_backbone(recorded.name)
    built = recorded.runtime
    try:
        rt = BundledLiteRTRuntime(path, parity=built.get("parity"), name=built.name,
                                  precision=built.get("precision"))
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError for a damaged model
        raise BundleError(
            f"the bundle's serving model {path} cannot be loaded ({first_line(exc)}); run"
            f" `embed-dogs verify --bundle {bundle.root}`, or rebuild the bundle") from None
    return Embedder(spec, recorded.image_size, recorded.weights, None, rt,
                    recorded.weights_sha256, dict(recorded.lineage or {}),
                    recorded.weights_file, relative, recorded.dim)


def bundle_backbone(bundle: Bundle) -> tuple[BackboneSpec, Any]:
    """The Keras backbone a bundle's vectors came from, from the weights inside the bundle,
    checked against the recorded weights hash. Shared by query-time embedding and by
    fine-tuning, so both start from the very weights the bundle's vectors came from."""
    recorded = bundle.manifest.backbone
    spec = get_backbone(recorded.name)
    relative = recorded.weights_file
    if not relative:
        raise WeightsUnavailableError(
            f"bundle {bundle.root} carries no backbone weights; rebuild it with this version"
            " of embed-dogs"
        )
    path = bundle.inside(relative)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"the bundle's backbone weights {path} are missing; copy the whole bundle folder"
            " again, or rebuild it"
        )
    model = build_backbone(spec, recorded.image_size, str(path))
    check_same_backbone(recorded, recorded.model_copy(
        update={"weights_sha256": weights_sha256(model)}))
    return spec, model


def load_finetuned_embedder(lineage: dict[str, Any], runtime: str = "auto") -> Embedder:
    """An embedder whose backbone is the fine-tuned one of another bundle's finetune head."""
    start = time.perf_counter()
    base = lineage["base_backbone"]
    spec = get_backbone(base["name"])
    model = load_finetuned_backbone(
        lineage["head_file"], lineage["head_sha256"], lineage["backbone_layer"]
    )
    digest = weights_sha256(model)
    size = int(base["image_size"])
    rt = make_runtime(model, runtime, cache_key=f"{spec.name}-{size}-{digest[:16]}")
    weights = f"finetuned:{lineage['head_file']}"
    return Embedder(spec, size, weights, model, rt, digest, lineage=dict(lineage),
                    load_seconds=time.perf_counter() - start)


def embedder_for_bundle(bundle: Bundle, runtime: str | None = None) -> Embedder:
    """Rebuild the backbone a bundle was built with, from the weights it carries, and check
    it really is the same one."""
    recorded = bundle.manifest.backbone
    kind = runtime or os.environ.get("EMBED_DOGS_RUNTIME") or recorded.runtime.name
    spec, model = bundle_backbone(bundle)
    digest = weights_sha256(model)
    size = recorded.image_size
    rt = make_runtime(model, kind, cache_key=f"{spec.name}-{size}-{digest[:16]}")
    embedder = Embedder(spec, size, recorded.weights, model, rt, digest,
                        lineage=dict(recorded.lineage or {}),
                        weights_file=recorded.weights_file)
    check_same_backbone(recorded, embedder.identity())
    return embedder
