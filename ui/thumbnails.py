"""Thumbnails made once per image content and kept on disk; a placeholder when there is no file.

Thumbnails live in a cache folder keyed by the image's content hash (the bundle's `sha256`
column) and size, not inside the bundle, so a read-only or shared bundle works and two bundles
over the same photos share them. Each file is written atomically.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from embed.atomic import atomic_path
from embed.environment import cache_dir
from embed.images import to_rgb

THUMB_SIZE = 224  # gallery and grid cells
PREVIEW_SIZE = 512  # the query photo


def thumbnail_cache_dir() -> Path:
    """`$EMBED_DOGS_CACHE/thumbnails`, else `~/.cache/embed-dogs/thumbnails`."""
    return cache_dir("thumbnails")


def has_file(path: str) -> bool:
    """Whether a metadata path names a local file (tfds references such as `tfds:...` do not)."""
    return bool(path) and not path.startswith("tfds:") and os.path.isfile(path)


def _shrink(img: Image.Image, size: int) -> Image.Image:
    img.draft("RGB", (size, size))  # JPEG: decode at reduced scale
    img = to_rgb(ImageOps.exif_transpose(img))
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


def thumbnail(path: str, sha256: str, size: int = THUMB_SIZE, cache_dir: Path | None = None,
              square: bool = True) -> Path | None:
    """A JPEG `size` px square (centre crop), or at most `size` px on its longer side when not
    `square`; None when the image has no readable file."""
    if not has_file(path):
        return None
    key = sha256 or "p" + hashlib.sha1(path.encode()).hexdigest()
    folder = f"{size}sq" if square else str(size)
    out = (cache_dir or thumbnail_cache_dir()) / folder / key[:2] / f"{key}.jpg"
    if out.is_file():
        return out
    try:
        with Image.open(path) as img:
            small = _shrink(img, size * 2 if square else size)
            if square:
                small = ImageOps.fit(small, (size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    with atomic_path(out) as tmp:
        small.save(tmp, format="JPEG", quality=85)
    return out


def data_uri(jpeg: bytes) -> str:
    """A small JPEG as a data: URI: what Streamlit's image columns and the map's hover show."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def file_thumb(path: str, sha256: str = "", size: int = 96) -> str | None:
    """A dataset photo's cached square thumbnail as a data URI (None without a file)."""
    thumb = thumbnail(path, sha256, size) if path else None
    return data_uri(thumb.read_bytes()) if thumb else None


def display_jpeg(data: bytes, size: int = PREVIEW_SIZE) -> bytes:
    """An uploaded photo, upright and downscaled, as JPEG bytes for display."""
    with Image.open(io.BytesIO(data)) as img:
        small = _shrink(img, size)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@lru_cache(maxsize=4)
def placeholder(size: int = THUMB_SIZE, text: str = "no image file") -> bytes:
    """A grey PNG for rows without a local file (tfds sources, moved files)."""
    img = Image.new("RGB", (size, size), (225, 225, 225))
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((0, 0), text)
    draw.text(((size - box[2]) / 2, (size - box[3]) / 2), text, fill=(90, 90, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
