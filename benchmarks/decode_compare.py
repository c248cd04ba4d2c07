"""Decoding one photo to (size, size, 3) uint8, side by side: CPU milliseconds per image.

On a 2-core machine decoding competes with inference for the same cores, so what counts is
the CPU time a decoder takes, not its wall time: each figure is the thread CPU time per image
(median of --repeats interleaved passes over the same files, already read into memory), which
other processes' load barely changes. Also printed: the mean absolute pixel difference from
the first decoder. With --stages, the reader's CPU time per image is broken down by stage
(read, hash, header, decode, resize, preprocess) as decoder v3 and v4 do it.

    python benchmarks/decode_compare.py --sizes 160 224 --stages
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_FOLDER = REPO.parent / "shared" / "data" / "woof-sample"


def pil_draft(data: bytes, size: int) -> np.ndarray:
    """DECODER_VERSION 2: PIL, draft (1/2, 1/4, 1/8 DCT scale) covering size, antialiased
    bilinear resize."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (size, size))
    img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img)


def simplejpeg_pow2(data: bytes, size: int) -> np.ndarray:
    """libjpeg-turbo through simplejpeg, DCT scale 1/2, 1/4 or 1/8 only (SIMD IDCTs), then
    PIL's antialiased bilinear resize (the pixels of decoder v2, decoded faster)."""
    import simplejpeg
    from PIL import Image

    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    factor = 1
    while factor < 8 and min(h, w) // (factor * 2) >= size:
        factor *= 2
    arr = simplejpeg.decode_jpeg(data, "RGB", min_height=-(-h // factor),
                                 min_width=-(-w // factor))
    img = Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(img)


def simplejpeg_m8_box(data: bytes, size: int) -> np.ndarray:
    """libjpeg-turbo's smallest M/8 DCT scale covering size (non-power-of-two scales have no
    SIMD inverse DCT), then PIL's box filter."""
    import simplejpeg
    from PIL import Image

    arr = simplejpeg.decode_jpeg(data, "RGB", min_height=size, min_width=size)
    img = Image.fromarray(arr).resize((size, size), Image.Resampling.BOX)
    return np.asarray(img)


def current(data: bytes, size: int) -> np.ndarray:
    """The embed.images decoder (DECODER_VERSION 4): libjpeg-turbo at the smallest M/8 DCT
    scale covering size, then OpenCV's bilinear filter (area averaging beyond a 2x shrink)."""
    from embed.images import decode_image

    return decode_image(data, size).pixels


def opencv_decode(data: bytes, size: int) -> np.ndarray:
    """OpenCV's own libjpeg-turbo (IMREAD_REDUCED_COLOR_2/4/8 covering size), then its
    bilinear resize: to see whether another binding of the same library decodes faster."""
    import cv2

    h, w = simplejpeg_header(data)
    flag = cv2.IMREAD_COLOR
    for f, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                       (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if min(h, w) // f >= size:
            flag = reduced
            break
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    return cv2.resize(bgr[:, :, ::-1], (size, size), interpolation=cv2.INTER_LINEAR)


def simplejpeg_header(data: bytes) -> tuple[int, int]:
    import simplejpeg

    h, w, _, _ = simplejpeg.decode_jpeg_header(data)
    return h, w


def tf_ratio(data: bytes, size: int) -> np.ndarray:
    """tf.io.decode_jpeg with `ratio` (1, 2, 4, 8) covering size, tf.image.resize bilinear
    with antialiasing (eager, one image at a time as a reader would call it)."""
    import tensorflow as tf

    shape = tf.io.extract_jpeg_shape(data).numpy()
    ratio = 1
    while ratio < 8 and min(shape[0], shape[1]) // (ratio * 2) >= size:
        ratio *= 2
    img = tf.io.decode_jpeg(data, channels=3, ratio=ratio)
    img = tf.image.resize(img, (size, size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8).numpy()


DECODERS: dict[str, Callable[[bytes, int], np.ndarray]] = {
    "PIL draft + bilinear (decoder v2)": pil_draft,
    "simplejpeg 1/2^k + bilinear": simplejpeg_pow2,
    "simplejpeg M/8 + box (decoder v3)": simplejpeg_m8_box,
    "simplejpeg M/8 + cv2 bilinear (v4)": current,
    "cv2.imdecode 1/2^k + cv2 bilinear": opencv_decode,
    "tf.io.decode_jpeg ratio + tf resize": tf_ratio,
}


def stage_breakdown(files: list[Path], size: int, repeats: int) -> list[tuple[str, float, float]]:
    """The reader's work per image, stage by stage, as decoder v3 and v4 do it: (stage,
    v3 ms, v4 ms) of thread CPU time. Stages both share are timed once and shown in both."""
    import hashlib

    import simplejpeg
    from PIL import Image

    from embed.backbones import preprocess_table
    from embed.images import jpeg_orientation, resize_square
    from embed.litert_model import _lookup_into

    datas = [f.read_bytes() for f in files]
    scaled = [simplejpeg.decode_jpeg(d, "RGB", min_height=size, min_width=size) for d in datas]
    batch = np.zeros((32, size, size, 3), np.uint8)

    def numpy_preprocess(pixels: np.ndarray) -> np.ndarray:  # decoder v3's two passes
        out = np.empty(pixels.shape, np.float32)
        np.divide(pixels, np.float32(127.5), out=out)
        return np.subtract(out, np.float32(1.0), out=out)

    def per_image(fn: Callable[[], object], n: int) -> float:
        best = []
        for _ in range(repeats):
            start = time.thread_time()
            fn()
            best.append((time.thread_time() - start) / n * 1e3)
        return statistics.median(best)

    shared = {
        "read the file": lambda: [f.read_bytes() for f in files],
        "sha256": lambda: [hashlib.sha256(d).hexdigest() for d in datas],
        "header + EXIF orientation": lambda: [(simplejpeg.decode_jpeg_header(d),
                                              jpeg_orientation(d)) for d in datas],
        "libjpeg-turbo, M/8 DCT scale": lambda: [
            simplejpeg.decode_jpeg(d, "RGB", min_height=size, min_width=size) for d in datas],
    }
    rows = [(name, ms, ms) for name, ms in
            ((name, per_image(fn, len(datas))) for name, fn in shared.items())]
    rows.append(("resize (v3 PIL box, v4 OpenCV)",
                 per_image(lambda: [np.asarray(Image.fromarray(x).resize(
                     (size, size), Image.Resampling.BOX, reducing_gap=None)) for x in scaled],
                     len(scaled)),
                 per_image(lambda: [resize_square(x, size) for x in scaled], len(scaled))))
    # v4 as LiteRT runs it: looked up straight into the interpreter's (reused) input buffer
    buffer = np.empty(batch.shape, np.float32)
    table = preprocess_table("tf")
    rows.append(("preprocess (v3 numpy, v4 table lookup)",
                 per_image(lambda: [numpy_preprocess(batch) for _ in range(8)], 8 * 32),
                 per_image(lambda: [_lookup_into(lambda: buffer, batch, table)
                                    for _ in range(8)], 8 * 32)))
    return rows


def thread_ms(fn: Callable[[bytes, int], np.ndarray], datas: list[bytes], size: int) -> float:
    start = time.thread_time()
    for data in datas:
        fn(data, size)
    return (time.thread_time() - start) / len(datas) * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    p.add_argument("--sizes", type=int, nargs="+", default=[160, 224])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--limit", type=int, default=300, help="images (default 300)")
    p.add_argument("--skip", default="", help="comma-separated decoder names to leave out")
    p.add_argument("--stages", action="store_true",
                   help="also break the reader's CPU time per image down by stage, v3 and v4")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    files = sorted(f for f in args.folder.rglob("*") if f.suffix.lower() in (".jpg", ".jpeg"))
    datas = [f.read_bytes() for f in files[: args.limit]]
    decoders = {k: v for k, v in DECODERS.items() if k not in args.skip.split(",")}
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    print(f"{len(datas)} JPEGs from {args.folder}; CPU {cpu}; load {os.getloadavg()[0]:.2f}")
    for size in args.sizes:
        reference = [pil_draft(d, size) for d in datas]
        times: dict[str, list[float]] = {k: [] for k in decoders}
        for fn in decoders.values():
            fn(datas[0], size)  # warm-up (imports, TensorFlow's first op)
        for _ in range(args.repeats):
            for name, fn in decoders.items():
                times[name].append(thread_ms(fn, datas, size))
        base = statistics.median(times[next(iter(decoders))])
        print(f"\n  {size} px             CPU ms/img   vs first   mean |diff| from v2 (0-255)")
        for name, fn in decoders.items():
            ms = statistics.median(times[name])
            diff = np.mean([np.abs(fn(d, size).astype(np.int16) - r).mean()
                            for d, r in zip(datas, reference, strict=True)])
            print(f"  {name:<38} {ms:7.3f}   {ms / base:6.2f}x   {diff:6.2f}")
        if args.stages:
            rows = stage_breakdown(files[: args.limit], size, args.repeats)
            print(f"\n  {size} px, the reader by stage     v3 ms/img   v4 ms/img")
            for name, v3, v4 in rows:
                print(f"  {name:<38} {v3:7.3f}     {v4:7.3f}")
            print(f"  {'total':<38} {sum(r[1] for r in rows):7.3f}     "
                  f"{sum(r[2] for r in rows):7.3f}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
