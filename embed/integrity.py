"""What `verify` checks beyond checksums on the embed side: the serving model really loads and
answers with the recorded shape. A garbage `.tflite` re-checksummed into the manifest passes
every byte check; only loading it finds it."""

from __future__ import annotations

import numpy as np

from embed.bundle import Bundle
from embed.errors import first_line


def serving_model_problems(bundle: Bundle) -> list[str]:
    """One line per problem with the bundle's `.tflite` (none when it has no such model)."""
    from embed.embedder import serving_embedder

    backbone = bundle.manifest.backbone
    if not backbone.serving_model:
        return []
    try:
        embedder = serving_embedder(bundle, "litert")
        size = backbone.image_size
        vectors = embedder.embed_pixels(np.zeros((1, size, size, 3), np.uint8))
    except Exception as exc:  # LiteRT raises RuntimeError/ValueError for bad models
        return [f"the serving model {backbone.serving_model} does not load or run:"
                f" {first_line(exc)}"]
    if vectors.shape != (1, backbone.dim) or not np.isfinite(vectors).all():
        return [f"the serving model {backbone.serving_model} answers with shape"
                f" {vectors.shape}, the manifest records dim {backbone.dim}"]
    return []
