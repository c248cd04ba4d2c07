"""Decoding one image file into RGB pixels, the way a person would expect it to look.

PIL handles every format we accept (including webp and the first frame of a gif), EXIF
rotation, CMYK, greyscale, alpha and 16-bit images. Failures raise :class:`ImageDecodeError`
with a reason that ends up in `skipped.csv`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decompression bombs before they exhaust memory (PIL itself refuses above ~179M).
MAX_PIXELS = 120_000_000
# Smaller inputs are refused: scaled up to the model's size they only invent a confident guess.
MIN_SIDE = 32
_EXIF_ORIENTATION = 0x0112


# Bump whenever decoding changes the pixels it returns (resampling, draft scale, colour
# handling): vectors embedded by another decoder version are not comparable, so bundles record
# it and query-time embedding refuses a mismatch.
DECODER_VERSION = 2  # 1: draft at twice the input size; 2: draft at the input size


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message is the reason recorded for the skip."""


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # uint8 (size, size, 3)
    width: int  # after EXIF rotation, before resizing
    height: int


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as a person sees the image: 16-bit scaled down, alpha over white, CMYK/grey/palette
    converted. Shared by the model's decoder and the app's thumbnails."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode, apply EXIF orientation, convert to RGB and resize to (size, size)."""
    if not data:
        raise ImageDecodeError("empty file")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:  # read from the header, before decoding
            raise ImageDecodeError(
                f"image too large ({img.width}x{img.height} pixels, limit {max_pixels:,})"
            )
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width  # rotated by a quarter turn
        if min(width, height) < MIN_SIDE:
            raise ImageDecodeError(
                f"image too small to judge ({width}x{height} pixels; at least {MIN_SIDE} on"
                " each side)"
            )
        img.seek(0)  # first frame of an animation
        if img.format == "JPEG":
            # Decode at the smallest DCT scale (1/2, 1/4, 1/8) that still covers size x size:
            # that scaling averages blocks, so it does not alias, and it is nearly free, while
            # PIL's antialiased resize of the full image cost more than LiteRT at 160 px.
            img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img)
        img = to_rgb(img)
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        pixels = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    return DecodedImage(pixels=pixels, width=width, height=height)


def read_and_decode(path: str, size: int) -> tuple[bytes, DecodedImage]:
    """Read a file and decode it; unreadable files raise ImageDecodeError too."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file: {exc.strerror or exc}") from None
    return data, decode_image(data, size)
