"""A ready-to-use embedder: backbone spec + loaded model + runtime, and its manifest identity."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.backbones import (
    BackboneSpec,
    build_backbone,
    get_backbone,
    normalise_weights_arg,
    resolve_image_size,
    weights_sha256,
)
from embed.bundle import check_same_backbone
from embed.errors import WeightsUnavailableError
from embed.images import ImageDecodeError, decode_image
from embed.pipeline import embed_batch
from embed.runtimes import Runtime, make_runtime


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
            "runtime": self.runtime.describe(),
            **({"lineage": self.lineage} if self.lineage else {}),
        }

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB (N, size, size, 3) -> unit vectors."""
        from embed.backbones import preprocess

        inputs = preprocess(np.asarray(pixels, np.float32), self.spec.preprocessing)
        return embed_batch(self.runtime, inputs.astype(np.float32))

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


def embedder_for_bundle(manifest: dict[str, Any], runtime: str | None = None) -> Embedder:
    """Rebuild the backbone a bundle was built with, and check it really is the same one."""
    recorded = manifest["backbone"]
    weights = recorded.get("weights")
    if weights not in (None, "random", "imagenet") and not Path(weights).is_file():
        raise WeightsUnavailableError(
            f"the bundle's backbone weights {weights} are missing; put the file back at that"
            " path or rebuild the bundle"
        )
    kind = runtime or os.environ.get("EMBED_DOGS_RUNTIME") or recorded.get("runtime", {}).get(
        "name", "auto"
    )
    embedder = load_embedder(recorded["name"], weights, recorded["image_size"], kind)
    check_same_backbone(recorded, embedder.identity())
    return embedder


def embed_files(embedder: Embedder, paths: Sequence[str | Path]) -> list[np.ndarray | str]:
    """Embed a few files for queries: a vector per file, or the reason it could not be used."""
    out: list[np.ndarray | str] = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
            out.append(embedder.embed_image_bytes(data))
        except OSError as exc:
            out.append(f"cannot read file: {exc.strerror or exc}")
        except ImageDecodeError as exc:
            out.append(str(exc))
    return out
