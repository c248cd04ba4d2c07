"""Every awkward input is either converted correctly or refused with a reason."""

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embed.images import MAX_PIXELS, ImageDecodeError, decode_image, read_and_decode

REPO = Path(__file__).resolve().parent.parent


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _half_red_half_blue(w: int = 64, h: int = 32) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    arr[:, w // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


def test_rgb_jpeg_resized_with_original_size_recorded() -> None:
    out = decode_image(_encode(_half_red_half_blue(), "JPEG", quality=95), 16)
    assert out.pixels.shape == (16, 16, 3) and out.pixels.dtype == np.uint8
    assert (out.width, out.height) == (64, 32)
    assert out.pixels[8, 2, 0] > 200 and out.pixels[8, 13, 2] > 200


def test_exif_rotation_is_applied() -> None:
    # stored landscape (left red, right blue); orientation 6 = rotate 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_half_red_half_blue(), "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data, 16)
    assert (out.width, out.height) == (32, 64)  # portrait after rotation
    top, bottom = out.pixels[2, 8], out.pixels[13, 8]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_greyscale_becomes_three_equal_channels() -> None:
    out = decode_image(_encode(Image.new("L", (32, 32), 77), "PNG"), 8)
    assert out.pixels.shape == (8, 8, 3)
    assert np.all(out.pixels == 77)


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(_encode(img, "JPEG", quality=95), 8)
    r, g, b = out.pixels[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_alpha_is_composited_on_white() -> None:
    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent black
    out = decode_image(_encode(img, "PNG"), 8)
    assert np.all(out.pixels == 255)


def test_sixteen_bit_png_scaled_to_eight_bits() -> None:
    arr = np.full((40, 40), 65535, np.uint16)
    arr[:, :20] = 0
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = decode_image(_encode(img, "PNG"), 10)
    assert out.pixels[5, 1, 0] == 0 and out.pixels[5, 8, 0] == 255


def test_gif_first_frame_webp_and_bmp() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), 4).pixels[1, 1, 0] > 200
    assert decode_image(_encode(Image.new("RGB", (33, 33), (0, 0, 255)), "WEBP"), 4).pixels[
        1, 1, 2] > 200
    assert decode_image(_encode(Image.new("RGB", (33, 33), (0, 255, 0)), "BMP"), 4).pixels[
        1, 1, 1] == 255


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is plain text, not a picture", "not an image"),
        (None, "corrupt or truncated"),  # filled in below: a JPEG cut in half
    ],
)
def test_bad_bytes_raise_with_reason(data: bytes | None, reason: str) -> None:
    if data is None:
        full = _encode(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
        data = full[: len(full) // 2]
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, 8)


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC (PIL checks the CRC)."""
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body)))


def _png_claiming(width: int, height: int) -> bytes:
    """A 40x40 PNG whose header claims `width` x `height`: its pixel data could never fill
    that, so decoding would fail as "corrupt"; only a refusal from the header says "too
    large"."""
    data = _encode(Image.new("RGB", (40, 40), (9, 9, 9)), "PNG")
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + _chunk(b"IHDR", ihdr) + data[33:]


def _pil_size(data: bytes) -> tuple[int, int]:
    """The size PIL reads from a header (its own bomb warning silenced here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data)).size


def _header_claiming(fmt: str, width: int, height: int) -> bytes:
    """A small image of `fmt` with the size fields of its header rewritten."""
    if fmt == "PNG":
        return _png_claiming(width, height)
    if fmt == "GIF":  # the logical screen
        data = bytearray(_encode(Image.new("P", (40, 40)), "GIF"))
        data[6:10] = struct.pack("<HH", width, height)
    elif fmt == "BMP":
        data = bytearray(_encode(Image.new("RGB", (40, 40)), "BMP"))
        data[18:26] = struct.pack("<ii", width, height)
    elif fmt == "WEBP":  # lossy VP8: 14-bit sizes after the key frame's start code
        data = bytearray(_encode(Image.new("RGB", (40, 40)), "WEBP", lossless=False))
        assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
        data[26:30] = struct.pack("<HH", width, height)
    else:  # "JPEG" (libjpeg-turbo's path) or "CMYK" (a JPEG for PIL): the SOF0 segment
        data = bytearray(_encode(Image.new("RGB" if fmt == "JPEG" else "CMYK", (40, 40)),
                                 "JPEG"))
        sof = data.find(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP", "JPEG", "CMYK"])
def test_every_format_is_refused_from_its_header_without_pils_warning(fmt: str) -> None:
    """13000 x 13000 = 169M pixels: over our limit, and between PIL's warning (89M) and its
    error (179M), so PIL would print a DecompressionBombWarning; the refusal is ours, one
    reason, and nothing is printed."""
    data = _header_claiming(fmt, 13_000, 13_000)
    assert _pil_size(data) == (13_000, 13_000)  # PIL reads the size we wrote
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageDecodeError) as refused:
            decode_image(data, 8)
    assert str(refused.value) == "image too large (13000x13000 pixels, limit 120,000,000)"
    assert [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)] == []


def test_pils_own_bomb_error_reads_like_our_refusal() -> None:
    """20000 x 20000 = 400M pixels: PIL refuses it while opening (over twice its 89M limit);
    the reason is worded like ours."""
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(_png_claiming(20_000, 20_000), 8)
    assert str(refused.value) == "image too large (400,000,000 pixels, limit 120,000,000)"


def test_pils_warning_threshold_is_not_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PIL's warning threshold lowered to 1,000 pixels, a 40x40 (1,600) PNG is within
    our limit: decoded, silently; with our limit at 1,500 it is refused by our reason."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = _encode(Image.new("RGB", (40, 40), (0, 0, 255)), "PNG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_image(data, 8).pixels[0, 0, 2] == 255
        with pytest.raises(ImageDecodeError, match=r"^image too large \(40x40 pixels, limit"
                           r" 1,500\)$"):
            decode_image(data, 8, max_pixels=1_500)
    assert caught == []


_PEAK_MEMORY = """
import json, resource, sys
from embed.images import ImageDecodeError, decode_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data, 224)
    reason = None
except ImageDecodeError as exc:
    reason = str(exc)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"reason": reason, "grew_kib": after - before}))
"""


def _zero_png(width: int, height: int) -> bytes:
    """A real RGB PNG of black pixels, compressed row by row: 13000 x 13000 is about 0.5 MB
    on disk and 13000 * 13000 * 3 = 507 MB decoded."""
    rows = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    idat = b"".join([rows.compress(row) for _ in range(height)] + [rows.flush()])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def test_small_png_with_huge_dimensions_is_refused_without_decoding(tmp_path: Path) -> None:
    """The 0.7 MB 13000 x 13000 PNG that once raised the app's memory by 280 MB: refused,
    and the process's peak memory grows by far less than the 507 MB its pixels would take
    (in a fresh process, so the peak is this decode's own)."""
    side = 13_000
    decoded_bytes = side * side * 3
    path = tmp_path / "huge.png"
    path.write_bytes(_zero_png(side, side))
    assert path.stat().st_size < 1_000_000
    assert _pil_size(path.read_bytes()) == (side, side)  # a valid PNG header
    done = subprocess.run([sys.executable, "-c", _PEAK_MEMORY, str(path)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["reason"] == "image too large (13000x13000 pixels, limit 120,000,000)"
    assert result["grew_kib"] * 1024 < decoded_bytes / 20  # under 25 MB
    assert "DecompressionBomb" not in done.stderr  # PIL's warning is not printed raw


def test_small_side_of_a_png_is_judged_after_exif_rotation() -> None:
    """The size is refused before EXIF is read only when it is too large; "too small" still
    names the size as shown."""
    exif = Image.Exif()
    exif[0x0112] = 6  # a 64x31 photo shown as 31x64
    data = _encode(Image.new("RGB", (64, 31), (1, 2, 3)), "PNG", exif=exif.tobytes())
    with pytest.raises(ImageDecodeError, match=r"\(31x64 pixels"):
        decode_image(data, 16)


@pytest.mark.parametrize("size", [(1, 1), (31, 200), (200, 31)])
def test_images_too_small_to_judge_are_refused(size: tuple[int, int]) -> None:
    """Under 32 px on a side a photo is refused with a reason instead of being upscaled into a
    confident guess; exactly 32 is fine."""
    with pytest.raises(ImageDecodeError, match=r"too small to judge \(\d+x\d+ pixels; at least"
                       r" 32 on each side\)"):
        decode_image(_encode(Image.new("RGB", size, (90, 60, 30)), "PNG"), 16)
    assert decode_image(_encode(Image.new("RGB", (32, 32), (90, 60, 30)), "PNG"), 16).width == 32


def test_small_side_is_judged_after_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # a 64x31 photo shown as 31x64: still too small on one side
    data = _encode(Image.new("RGB", (64, 31), (1, 2, 3)), "JPEG", exif=exif.tobytes())
    with pytest.raises(ImageDecodeError, match=r"\(31x64 pixels"):
        decode_image(data, 16)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        read_and_decode(str(tmp_path / "missing.jpg"), 8)


def test_thumbnail_shows_the_pixels_the_model_sees(tmp_path: Path) -> None:
    """The app's thumbnails share the decoder's colour handling: a grey 16-bit PNG of value
    20000 is 20000/65535*255 = 77 for both (the thumbnail once showed it as 255)."""
    from ui.thumbnails import thumbnail

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 40), 20000, np.uint16)).save(path)
    embedded = decode_image(path.read_bytes(), 16).pixels
    thumb = thumbnail(str(path), "grey16", 16, cache_dir=tmp_path / "cache")
    assert thumb is not None
    with Image.open(thumb) as img:
        shown = np.asarray(img.convert("RGB"), np.int16)
    assert int(embedded[0, 0, 0]) == 77
    assert np.abs(shown - 77).max() <= 2  # JPEG rounding only


def _photo(w: int = 400, h: int = 300, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return _encode(Image.fromarray(arr), "JPEG", quality=90)


def test_jpegs_are_decoded_by_libjpeg_turbo_at_reduced_dct_scale(monkeypatch) -> None:
    import simplejpeg

    calls = []
    real = simplejpeg.decode_jpeg

    def spy(data, colorspace="RGB", **kw):
        out = real(data, colorspace, **kw)
        calls.append((kw, out.shape))
        return out

    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    out = decode_image(_photo(400, 300), 100)
    assert out.pixels.shape == (100, 100, 3) and (out.width, out.height) == (400, 300)
    # the smallest M/8 scale keeping both sides >= 100: 3/8 of 400x300 is 150x113
    assert calls == [({"min_height": 100, "min_width": 100}, (113, 150, 3))]


def test_decoder_keeps_pil_for_what_libjpeg_turbo_does_not_convert() -> None:
    from embed.images import _decode_jpeg_turbo

    cmyk = _encode(Image.new("CMYK", (12, 12), (0, 255, 255, 0)), "JPEG")
    assert _decode_jpeg_turbo(cmyk, 8, MAX_PIXELS) is None  # PIL converts CMYK
    assert _decode_jpeg_turbo(_encode(Image.new("RGB", (9, 9)), "PNG"), 8, MAX_PIXELS) is None
    grey = _decode_jpeg_turbo(_encode(Image.new("L", (40, 40), 90), "JPEG"), 8, MAX_PIXELS)
    assert grey is not None and np.abs(grey.pixels.astype(int) - 90).max() <= 2


def test_decoded_pixels_stay_close_to_the_previous_decoder() -> None:
    """Version 4 changes pixels (OpenCV bilinear after DCT scaling) only a little from
    version 3 (PIL's box filter after the same DCT scaling) and version 2 (PIL draft 1/2^k,
    bilinear): mean difference a few levels of 255."""
    import simplejpeg

    from embed.images import DECODER_VERSION

    assert DECODER_VERSION == 4
    y, x = np.mgrid[0:480, 0:640]
    smooth = np.stack([128 + 100 * np.sin(x / 23), 128 + 100 * np.cos(y / 17),
                       128 + 60 * np.sin((x + y) / 41)], axis=-1).astype(np.uint8)
    data = _encode(Image.fromarray(smooth), "JPEG", quality=90)  # a photo-like, smooth image
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (160, 160))
    v2 = np.asarray(img.convert("RGB").resize((160, 160), Image.Resampling.BILINEAR,
                                              reducing_gap=None), np.int16)
    scaled = simplejpeg.decode_jpeg(data, "RGB", min_height=160, min_width=160)
    v3 = np.asarray(Image.fromarray(scaled).resize((160, 160), Image.Resampling.BOX,
                                                   reducing_gap=None), np.int16)
    v4 = decode_image(data, 160).pixels.astype(np.int16)
    assert np.abs(v4 - v3).mean() < 2
    assert np.abs(v4 - v2).mean() < 3


def test_resize_uses_area_averaging_beyond_a_2x_shrink() -> None:
    """Bilinear samples two pixels per output pixel: shrunk 4x, a pattern with one white
    column in four would come out black; area averaging gives its mean, as the eye would."""
    from embed.images import resize_square

    stripes = np.zeros((640, 640, 3), np.uint8)
    stripes[:, ::4] = 255  # one white column in every four
    small = resize_square(stripes, 160)
    assert small.shape == (160, 160, 3) and small.dtype == np.uint8
    assert np.abs(small.astype(int) - 64).max() <= 1
    pairs = np.zeros((320, 320, 3), np.uint8)
    pairs[:, ::2] = 255
    mild = resize_square(pairs, 160)  # 2x: bilinear, which still averages each pair
    assert np.abs(mild.astype(int) - 128).max() <= 1
    same = np.arange(160 * 160 * 3, dtype=np.uint8).reshape(160, 160, 3)
    assert np.array_equal(resize_square(same, 160), same)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_read_without_pil_matches_pil(orientation: int) -> None:
    from PIL import ImageOps

    from embed.images import jpeg_orientation, resize_square

    rng = np.random.default_rng(orientation)
    arr = rng.integers(0, 255, (40, 64, 3), np.uint8)
    arr[:6, :12] = 255  # a corner that shows which way round it is
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(arr), "JPEG", quality=95, exif=exif.tobytes())
    assert jpeg_orientation(data) == orientation
    out = decode_image(data, 64)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    # decoded at full scale: PIL's pixels, turned as PIL turns them, resized the same way
    assert np.array_equal(out.pixels, resize_square(upright, 64))
    assert (out.width, out.height) == ((40, 64) if orientation >= 5 else (64, 40))


def test_orientation_of_a_jpeg_without_exif_is_one() -> None:
    from embed.images import jpeg_orientation

    assert jpeg_orientation(_photo(20, 10)) == 1
    assert jpeg_orientation(b"\xff\xd8\xff\xe1\x00") == 1  # cut short: no crash
