"""The photos `space_compare.py` and `gate_compare.py` need beyond a bundle's stored vectors,
embedded once with the bundle's own serving embedder and cached beside the benchmark's output:

- every row's photo flipped left-right (for test-time flip averaging);
- every row's near-copy: the photo resized to half its size and recompressed as JPEG at
  quality 75 (it must find its original first);
- the dev photos (``not-dogs-dev/cat``, ``not-dogs-dev/objects``,
  ``unknown-breed-dev/english_springer``), as they are and flipped.

`extras(bundle_dir, cache_dir)` returns a dict of arrays, in the bundle's metadata order for
the per-row ones.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEV_SETS = {
    "cats": SHARED / "not-dogs-dev" / "cat",
    "objects": SHARED / "not-dogs-dev" / "objects",
    "springers": SHARED / "unknown-breed-dev" / "english_springer",
}
NEAR_COPY = {"scale": 0.5, "jpeg_quality": 75}
BATCH = 32


def near_copy_bytes(data: bytes, scale: float = NEAR_COPY["scale"],
                    quality: int = NEAR_COPY["jpeg_quality"]) -> bytes:
    """A resized, recompressed copy of an encoded photo (what a user re-uploads)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    w, h = img.size
    img = img.resize((max(32, round(w * scale)), max(32, round(h * scale))),
                     Image.Resampling.BICUBIC)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _images(folder: Path) -> list[Path]:
    from embed.sources import IMAGE_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def _embed(embedder, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of the photos and of their mirror images."""
    from embed.images import decode_image

    plain, flipped = [], []
    for start in range(0, len(blobs), BATCH):
        pixels = np.stack([decode_image(b, embedder.image_size).pixels
                           for b in blobs[start:start + BATCH]])
        plain.append(embedder.embed_pixels(pixels))
        flipped.append(embedder.embed_pixels(np.ascontiguousarray(pixels[:, :, ::-1])))
    return np.concatenate(plain), np.concatenate(flipped)


def extras(bundle_dir: str | Path, cache_dir: str | Path) -> dict[str, np.ndarray]:
    """The extra vectors for one bundle (cached as `<cache_dir>/<bundle name>-extras.npz`)."""
    from embed.bundle import Bundle

    bundle = Bundle.open(bundle_dir)
    cache = Path(cache_dir) / f"{Path(bundle_dir).name}-extras.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    from embed.embedder import serving_embedder

    embedder = serving_embedder(bundle)
    table = bundle.metadata()
    root = Path(bundle.manifest.model_dump()["source"]["location"])
    blobs = [(root / p).read_bytes() for p in table["path"]]
    out: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    plain, out["rows_flipped"] = _embed(embedder, blobs)
    out["seconds_rows_plain_and_flipped"] = np.array(time.perf_counter() - start)
    stored = bundle.embeddings()
    out["rows_recomputed_cosine"] = np.sum(plain * stored, axis=1)
    out["near_copies"], _ = _embed(embedder, [near_copy_bytes(b) for b in blobs])
    for name, folder in DEV_SETS.items():
        out[name], out[f"{name}_flipped"] = _embed(
            embedder, [p.read_bytes() for p in _images(folder)])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


if __name__ == "__main__":
    for path in sys.argv[2:]:
        got = extras(path, sys.argv[1])
        print(path, {k: v.shape for k, v in got.items()},
              "stored vs recomputed cosine min", float(got["rows_recomputed_cosine"].min()))
