"""A ready-to-use embedder: backbone spec + loaded model + runtime, and its manifest identity."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.backbones import (
    BackboneSpec,
    build_backbone,
    file_sha256,
    get_backbone,
    load_finetuned_backbone,
    normalise_weights_arg,
    preprocess,
    resolve_image_size,
    weights_sha256,
)
from embed.bundle import Bundle, check_same_backbone
from embed.errors import BundleError, WeightsUnavailableError
from embed.images import DECODER_VERSION, decode_image
from embed.pipeline import (
    DEFAULT_BATCH_SIZE,
    EmbeddedBatch,
    ReaderConfig,
    embed_batch,
    iter_embedded_batches,
)
from embed.runtimes import Runtime, make_runtime
from embed.sources import ImageItem


@dataclass
class Embedder:
    spec: BackboneSpec
    image_size: int
    weights: str | None  # "imagenet", an absolute path, or None (random)
    model: Any
    runtime: Runtime
    weights_hash: str
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.model.output_shape[-1])

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
            **({"lineage": self.lineage} if self.lineage else {}),
        }

    def reader_config(self, batch_size: int = DEFAULT_BATCH_SIZE) -> ReaderConfig:
        """The reader settings this backbone needs: its input size and preprocessing."""
        return ReaderConfig(self.image_size, self.spec.preprocessing, batch_size)

    def inputs_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, size, size, 3) -> the backbone's preprocessed float32 inputs."""
        return preprocess(np.asarray(pixels, np.float32), self.spec.preprocessing).astype(
            np.float32)

    def embed_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed inputs -> unit vectors (the mapper)."""
        return embed_batch(self.runtime, inputs)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, size, size, 3) -> unit vectors."""
        return self.embed_inputs(self.inputs_from_pixels(pixels))

    def embedded_batches(
        self, items: Sequence[ImageItem], batch_size: int = DEFAULT_BATCH_SIZE,
        encoded: Any = None,
    ) -> Iterator[EmbeddedBatch]:
        """Read, decode and embed items with this backbone's size and preprocessing."""
        return iter_embedded_batches(items, self.reader_config(batch_size), self.runtime, encoded)

    def embed_image_bytes(self, data: bytes) -> np.ndarray:
        """One encoded image -> one unit vector (raises ImageDecodeError on bad input)."""
        image = decode_image(data, self.image_size)
        return self.embed_pixels(image.pixels[None])[0]


def load_embedder(
    backbone: str,
    weights: str | None = "imagenet",
    image_size: int | None = None,
    runtime: str = "auto",
) -> Embedder:
    """Build the named backbone; weights `imagenet` (Keras cache), a path, or `none`."""
    spec = get_backbone(backbone)
    weights = normalise_weights_arg(weights)
    size = resolve_image_size(spec, image_size, weights)
    model = build_backbone(spec, size, weights)
    digest = weights_sha256(model)
    rt = make_runtime(
        model, runtime, cache_key=f"{spec.name}-{size}-{digest[:16]}"
    )
    return Embedder(spec, size, weights, model, rt, digest)


def require_weights_file(weights: str | None) -> None:
    """A bundle's recorded weights file must still be there to rebuild its backbone."""
    if weights not in (None, "random", "imagenet") and not Path(weights).is_file():
        raise WeightsUnavailableError(
            f"the bundle's backbone weights {weights} are missing; put the file back at that"
            " path or rebuild the bundle"
        )


def finetuned_lineage(bundle_dir: str | Path) -> dict[str, Any]:
    """Where a fine-tuned backbone comes from: the bundle, its head file and that file's sha256."""
    source = Bundle.open(bundle_dir)
    manifest = source.manifest
    record = (manifest.get("heads") or {}).get("finetune")
    if not record:
        raise BundleError(
            f"bundle {bundle_dir} has no fine-tuned head; run `embed-dogs train --bundle"
            f" {bundle_dir} --head finetune` first"
        )
    head_file = (source.root / record["file"]).resolve()
    base = manifest["backbone"]
    return {
        "bundle": str(source.root.resolve()),
        "head": "finetune",
        "head_file": str(head_file),
        "head_sha256": file_sha256(head_file),
        "backbone_layer": record["backbone_layer"],
        "unfrozen_layers": record.get("unfrozen_layers", 0),
        "base_backbone": {k: base.get(k) for k in (
            "name", "image_size", "preprocessing", "weights", "weights_sha256")},
    }


def keras_backbone_for_manifest(recorded: dict[str, Any]) -> tuple[BackboneSpec, Any]:
    """The Keras backbone of a manifest's `backbone` section, fine-tuned or not, checked.

    Shared by query-time embedding and by fine-tuning, so both start from the very weights
    the bundle's vectors came from.
    """
    spec = get_backbone(recorded["name"])
    lineage = recorded.get("lineage")
    if lineage:
        model = load_finetuned_backbone(
            lineage["head_file"], lineage["head_sha256"], lineage["backbone_layer"]
        )
    else:
        weights = recorded.get("weights")
        require_weights_file(weights)
        weights = None if weights in (None, "random") else weights
        model = build_backbone(spec, recorded["image_size"], weights)
    expected = recorded.get("weights_sha256")
    if expected:
        check_same_backbone(recorded, {**recorded, "weights_sha256": weights_sha256(model)})
    return spec, model


def load_finetuned_embedder(lineage: dict[str, Any], runtime: str = "auto") -> Embedder:
    """An embedder whose backbone is the fine-tuned one of another bundle's finetune head."""
    base = lineage["base_backbone"]
    recorded = {"name": base["name"], "image_size": base["image_size"], "lineage": lineage}
    spec, model = keras_backbone_for_manifest(recorded)
    digest = weights_sha256(model)
    size = int(base["image_size"])
    rt = make_runtime(model, runtime, cache_key=f"{spec.name}-{size}-ft-{digest[:16]}")
    weights = f"finetuned:{lineage['head_file']}"
    return Embedder(spec, size, weights, model, rt, digest, lineage=dict(lineage))


def embedder_for_bundle(manifest: dict[str, Any], runtime: str | None = None) -> Embedder:
    """Rebuild the backbone a bundle was built with, and check it really is the same one."""
    recorded = manifest["backbone"]
    weights = recorded.get("weights")
    kind = runtime or os.environ.get("EMBED_DOGS_RUNTIME") or recorded.get("runtime", {}).get(
        "name", "auto"
    )
    if recorded.get("lineage"):
        embedder = load_finetuned_embedder(recorded["lineage"], kind)
        check_same_backbone(recorded, embedder.identity())
        return embedder
    require_weights_file(weights)
    embedder = load_embedder(recorded["name"], weights, recorded["image_size"], kind)
    check_same_backbone(recorded, embedder.identity())
    return embedder
