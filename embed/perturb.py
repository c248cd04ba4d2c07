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


def copy_similarities(paths: Sequence[str | Path], originals: np.ndarray,
                      embed: Callable[[bytes], np.ndarray], seed: int = 0
                      ) -> tuple[np.ndarray, list[str]]:
    """Cosine similarity of each photo's stored vector (`originals`, L2-normalised, one row per
    path) to the embedding of each of its near-copies; returns (similarities, kinds). Photos
    that cannot be read any more, and copies that cannot be embedded, are left out."""
    sims: list[float] = []
    kinds: list[str] = []
    for i, path in enumerate(paths):
        try:
            copies = near_copies(Path(path).read_bytes(), seed + i)
        except (OSError, ValueError):
            continue
        vectors = {}
        for kind, copy in copies.items():  # a copy too small to embed leaves out only itself
            try:
                vectors[kind] = np.asarray(embed(copy), np.float32)
            except (OSError, ValueError):  # ImageDecodeError is a ValueError
                continue
        for kind, vector in vectors.items():
            sims.append(float(vector @ np.asarray(originals[i], np.float32)))
            kinds.append(kind)
    return np.array(sims, np.float64), kinds
