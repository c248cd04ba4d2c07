"""Near-copies of a bundle's own photos, for calibrating the near-duplicate threshold.

A near-duplicate is the same photo after the edits photos meet on their way into a dataset: a
resize, a re-save at a lower JPEG quality, a light crop. This module makes such copies (PIL,
seeded) and measures how similar the backbone finds each copy to its original, through an
embed function the caller supplies (``Embedder.embed_image_bytes``), so `index` can pick the
threshold from these similarities without ever touching an image.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

# (kind, resize scale, JPEG quality, crop fraction kept per side). Mild edits, the kind a
# re-upload or a thumbnail step makes, alone and combined; a crop keeps 90 % of each side at a
# random offset.
PERTURBATIONS: tuple[tuple[str, float, int, float], ...] = (
    ("resized", 0.5, 90, 1.0),
    ("recompressed", 1.0, 50, 1.0),
    ("cropped", 1.0, 90, 0.9),
    ("resized+recompressed", 0.6, 60, 1.0),
    ("cropped+resized+recompressed", 0.6, 60, 0.9),  # edits come in combinations
)


def _rgb(data: bytes) -> Image.Image:
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    return image.convert("RGB")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def perturb(data: bytes, scale: float = 1.0, quality: int = 90, keep: float = 1.0,
            rng: np.random.Generator | None = None) -> bytes:
    """One edited copy of an encoded image, as JPEG bytes: a crop keeping `keep` of each side
    (at a random offset from `rng`), a resize by `scale`, a re-save at `quality`."""
    image = _rgb(data)
    if keep < 1.0:
        rng = rng or np.random.default_rng(0)
        w, h = image.size
        cw, ch = max(1, round(w * keep)), max(1, round(h * keep))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image.crop((x, y, x + cw, y + ch))
    if scale != 1.0:
        w, h = image.size
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                             Image.Resampling.BILINEAR)
    return _jpeg(image, quality)


def near_copies(data: bytes, seed: int = 0) -> dict[str, bytes]:
    """Every perturbation in PERTURBATIONS of one encoded image, by kind."""
    rng = np.random.default_rng(seed)
    return {kind: perturb(data, scale, quality, keep, rng)
            for kind, scale, quality, keep in PERTURBATIONS}


def embed_copies(data: bytes, embed: Callable[[bytes], np.ndarray], seed: int = 0
                 ) -> dict[str, np.ndarray]:
    """The vectors of one photo's near-copies by kind; a copy too small to embed leaves out
    only itself."""
    vectors = {}
    for kind, copy in near_copies(data, seed).items():
        try:
            vectors[kind] = np.asarray(embed(copy), np.float32)
        except (OSError, ValueError):  # ImageDecodeError is a ValueError
            continue
    return vectors


def copy_similarities(paths: Sequence[str | Path], originals: np.ndarray,
                      embed: Callable[[bytes], np.ndarray], seed: int = 0,
                      hashes: Sequence[str] | None = None, cache: Any = None
                      ) -> tuple[np.ndarray, list[str]]:
    """Cosine similarity of each photo's stored vector (`originals`, L2-normalised, one row per
    path) to the embedding of each of its near-copies; returns (similarities, kinds). Photos
    that cannot be read any more, and copies that cannot be embedded, are left out. With the
    photos' content `hashes` and a `cache` (`embed.copy_cache.CopyVectors`), copies embedded
    by an earlier build are taken from it instead of being made and embedded again."""
    sims: list[float] = []
    kinds: list[str] = []
    for i, path in enumerate(paths):
        remembered = hashes is not None and cache is not None
        vectors = cache.get(hashes[i], seed + i) if remembered else None
        if vectors is None:
            try:
                vectors = embed_copies(Path(path).read_bytes(), embed, seed + i)
            except (OSError, ValueError):
                continue
            if remembered:
                cache.put(hashes[i], seed + i, vectors)
        for kind, vector in vectors.items():
            sims.append(float(vector @ np.asarray(originals[i], np.float32)))
            kinds.append(kind)
    return np.array(sims, np.float64), kinds
