"""Decoding one image file into RGB pixels, the way a person would expect it to look.

JPEGs in YCbCr or greyscale (nearly every photo) go through libjpeg-turbo (simplejpeg), which
decodes straight at the smallest DCT scale M/8 that still covers the input size (the scaled
inverse DCT filters as it shrinks, so it does not alias). Everything else goes through PIL,
which handles every format we accept (including webp and the first frame of a gif), CMYK,
greyscale, alpha and 16-bit images. EXIF rotation is applied either way. What is left of
the resize is OpenCV's SIMD bilinear filter (see `resize_square`). Failures raise
:class:`ImageDecodeError` with a reason that ends up in `skipped.csv`.

Measured with `benchmarks/decode_compare.py` (CPU time per image, woof-sample, Intel Xeon
with AVX-512): decoding is about 0.5 ms at 160 px and 0.8-0.9 ms at 224 px whatever does it
(simplejpeg, OpenCV's own libjpeg-turbo and its fast-DCT options measured the same); the
resize after it cost 0.23 / 1.1 ms with PIL's box filter (decoder v3) and costs 0.12 / 0.28
ms with OpenCV's bilinear one.
"""

from __future__ import annotations

import functools
import io
import re
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Any

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
DECODER_VERSION = 4
# 1: PIL draft at twice the input size; 2: PIL draft (1/2, 1/4, 1/8) at the input size, then
# PIL's antialiased bilinear resize; 3: JPEGs by libjpeg-turbo (simplejpeg) at the smallest
# M/8 DCT scale covering the input size, then PIL's box (area-averaging) filter where both
# sides shrink (antialiased bilinear where a side grows, and for every other image); 4: the
# same decoding, every image resized by OpenCV: bilinear, area averaging where a side
# shrinks more than `MAX_BILINEAR_SHRINK` times.
JPEG_COLOURSPACES = ("YCbCr", "Gray")  # decoded by libjpeg-turbo; others (CMYK, YCCK) by PIL


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


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of a JPEG, read from its APP1 segment without decoding; 1
    when there is none or it cannot be read."""
    try:
        i = 2
        while i + 4 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if marker in (0xD9, 0xDA):  # end of image, start of scan: no EXIF before pixels
                return 1
            if marker == 0xFF or marker == 0x01 or 0xD0 <= marker <= 0xD7:
                i += 1 if marker == 0xFF else 2  # fill byte or marker without a length
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\0\0":
                tiff = i + 10
                order = "<" if data[tiff:tiff + 2] == b"II" else ">"
                (ifd,) = struct.unpack_from(order + "I", data, tiff + 4)
                (count,) = struct.unpack_from(order + "H", data, tiff + ifd)
                for k in range(count):
                    entry = tiff + ifd + 2 + 12 * k
                    tag, kind = struct.unpack_from(order + "HH", data, entry)
                    if tag == _EXIF_ORIENTATION and kind == 3:
                        (value,) = struct.unpack_from(order + "H", data, entry + 8)
                        return value if 1 <= value <= 8 else 1
                return 1
            i += 2 + length
    except (struct.error, IndexError):
        pass
    return 1


def _oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to decoded pixels, as `ImageOps.exif_transpose` does."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, -1)
    if orientation == 7:
        return pixels[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return np.rot90(pixels, 1)
    return pixels


# Bilinear interpolation (half-pixel centres) averages the two pixels around each sample,
# so up to a 2x shrink every input pixel still counts; beyond it, it would skip pixels and
# alias, so those sides get area averaging.
MAX_BILINEAR_SHRINK = 2.0


@functools.cache
def opencv() -> Any:
    """OpenCV, limited to the calling thread (set once per process, on first use): the
    reader already runs one worker per core, and OpenCV's own pool on top would only make
    them wait for each other."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB (h, w, 3) squashed to (size, size, 3) with OpenCV's SIMD filters: bilinear,
    or area averaging where a side shrinks by more than `MAX_BILINEAR_SHRINK`.

    After DCT scaling a side rarely shrinks by more than 1.5x, where bilinear costs a
    quarter of PIL's box filter (0.28 against 1.1 ms at 224 px on woof-sample) and moved no
    accuracy figure of benchmarks/embed_throughput.py by more than noise.
    """
    height, width = pixels.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(pixels)
    cv2 = opencv()
    shrink = max(width, height) / size
    interpolation = cv2.INTER_AREA if shrink > MAX_BILINEAR_SHRINK else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(pixels), (size, size), interpolation=interpolation)


def too_large(width: int, height: int, max_pixels: int) -> ImageDecodeError:
    """The one refusal reason for an image over the pixel limit."""
    return ImageDecodeError(f"image too large ({width}x{height} pixels, limit {max_pixels:,})")


def check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse, from the header and before decoding, images too large to decode safely and
    too small to judge (`width` x `height` as shown, after EXIF rotation)."""
    if width * height > max_pixels:
        raise too_large(width, height, max_pixels)
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(
            f"image too small to judge ({width}x{height} pixels; at least {MIN_SIDE} on"
            " each side)")


# PIL warns (DecompressionBombWarning) from `Image.open` above its own MAX_IMAGE_PIXELS
# (about 89M). Our callers check their own limit against the header before anything decodes,
# so the warning is only noise printed raw across a progress bar; `open_header` silences it.
# `warnings.catch_warnings` swaps process-wide state, so the swaps are serialised; opening
# reads only the header, so the lock is held for microseconds.
_OPEN_LOCK = threading.Lock()


def open_header(data: bytes) -> Image.Image:
    """PIL's lazy open: the format and size from the header, no pixels decoded yet, and no
    DecompressionBombWarning (check the size with `check_size` before loading)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _bomb_reason(exc: Exception, max_pixels: int) -> str:
    """PIL's DecompressionBombError (twice its own limit) worded as our own refusal."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    shown = f"{int(found.group(1)):,} pixels" if found else "over PIL's limit"
    return f"image too large ({shown}, limit {max_pixels:,})"


def _decode_jpeg_turbo(data: bytes, size: int, max_pixels: int) -> DecodedImage | None:
    """libjpeg-turbo at the smallest DCT scale M/8 that covers size x size; None when the
    file is for PIL (not a JPEG, or a colour space libjpeg-turbo does not convert to RGB)."""
    import simplejpeg

    if data[:3] != b"\xff\xd8\xff":
        return None
    try:
        height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # PIL decides what is wrong with it
    if colourspace not in JPEG_COLOURSPACES:
        return None
    orientation = jpeg_orientation(data)
    check_size(*((height, width) if orientation in (5, 6, 7, 8) else (width, height)),
               max_pixels)
    side = min(size, width, height)  # never ask for more than the image has
    try:
        # the smallest scale M/8 (M = 1..8) that keeps both sides at least `side`
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=side, min_width=side)
    except ValueError as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width  # rotated by a quarter turn
    # DCT scaling did the heavy reduction without aliasing; what is left is mostly under 1.5x
    return DecodedImage(resize_square(_oriented(pixels, orientation), size), width, height)


def decode_image(data: bytes, size: int, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode, apply EXIF orientation, convert to RGB and resize to (size, size)."""
    if not data:
        raise ImageDecodeError("empty file")
    fast = _decode_jpeg_turbo(data, size, max_pixels)
    if fast is not None:
        return fast
    try:
        img = open_header(data)
        width, height = img.size
        # The pixel count does not depend on rotation: refuse before `getexif`, which loads
        # (decodes) a whole PNG whose EXIF is not ahead of its pixels.
        if width * height > max_pixels:
            raise too_large(width, height, max_pixels)
        if img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width  # rotated by a quarter turn
        check_size(width, height, max_pixels)
        img.seek(0)  # first frame of an animation
        if img.format == "JPEG":
            # A JPEG libjpeg-turbo left to PIL (CMYK, YCCK): decode at the smallest DCT scale
            # (1/2, 1/4, 1/8) that still covers size x size.
            img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img)
        pixels = resize_square(np.asarray(to_rgb(img), dtype=np.uint8), size)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(_bomb_reason(exc, max_pixels)) from None
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
