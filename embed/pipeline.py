"""The tf.data input pipeline and the batch embedding loop (reader -> mapper -> writer).

Reader: a tf.data pipeline that reads and decodes images in parallel threads, resizes,
batches and prefetches, so decoding overlaps with inference. Bad files travel through it as
rows marked not-ok with a reason, so one bad file never stops a batch.
Mapper: :func:`embed_batch`, pure: preprocessed batch in, L2-normalised vectors out.
Memory holds a few batches at a time, never the whole collection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embed.backbones import preprocess
from embed.images import ImageDecodeError, decode_image, read_and_decode
from embed.runtimes import Runtime, l2_normalise
from embed.sources import ImageItem

AUTOTUNE = -1


@dataclass
class ImageBatch:
    """One batch from the reader: only rows with ok=True carry usable inputs."""

    row_ids: np.ndarray  # int64 (n,)
    inputs: np.ndarray  # float32 (n, size, size, 3), preprocessed
    ok: np.ndarray  # bool (n,)
    reasons: list[str]  # "" where ok
    sha256: list[str]
    widths: np.ndarray
    heights: np.ndarray


def _decode_result(data: bytes | None, decode: Callable[[], Any], size: int) -> tuple:
    try:
        raw, image = decode()
        digest = hashlib.sha256(raw).hexdigest()
        return (image.pixels, True, b"", digest.encode(), np.int32(image.width),
                np.int32(image.height))
    except ImageDecodeError as exc:
        digest = hashlib.sha256(data).hexdigest() if data else ""
        return (np.zeros((size, size, 3), np.uint8), False, str(exc).encode(), digest.encode(),
                np.int32(0), np.int32(0))


def _decode_path(path: bytes, size: np.int32) -> tuple:
    size = int(size)
    return _decode_result(None, lambda: read_and_decode(path.decode(), size), size)


def _decode_bytes(data: bytes, size: np.int32) -> tuple:
    size = int(size)
    return _decode_result(data, lambda: (data, decode_image(data, size)), size)


def make_image_dataset(
    items: Sequence[ImageItem],
    image_size: int,
    batch_size: int,
    preprocessing: str,
    encoded: Any = None,
    num_parallel_calls: int = AUTOTUNE,
) -> Any:
    """A tf.data.Dataset of batches (row_ids, inputs, ok, reason, sha256, width, height).

    `encoded`, when given, is a tf.data.Dataset of encoded image bytes in item order (tfds);
    otherwise each item's `ref` is a file path read inside the pipeline.
    """
    import tensorflow as tf

    row_ids = np.array([item.row_id for item in items], dtype=np.int64)
    out_types = [tf.uint8, tf.bool, tf.string, tf.string, tf.int32, tf.int32]
    size = np.int32(image_size)

    if encoded is None:
        refs = np.array([item.ref for item in items], dtype=object)
        ds = tf.data.Dataset.from_tensor_slices((row_ids, refs))
        func = _decode_path
    else:
        ds = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(row_ids), encoded))
        func = _decode_bytes

    def decode(row_id: Any, payload: Any) -> tuple:
        pixels, ok, reason, digest, width, height = tf.numpy_function(
            func, [payload, size], out_types, stateful=False
        )
        pixels = tf.ensure_shape(pixels, (image_size, image_size, 3))
        for t in (ok, reason, digest, width, height):
            t.set_shape(())
        return row_id, pixels, ok, reason, digest, width, height

    def to_inputs(row_id: Any, pixels: Any, *rest: Any) -> tuple:
        inputs = preprocess(tf.cast(pixels, tf.float32), preprocessing)
        return (row_id, inputs, *rest)

    ds = ds.map(decode, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.batch(batch_size).map(to_inputs, num_parallel_calls=num_parallel_calls)
    return ds.prefetch(2)


def iter_image_batches(
    items: Sequence[ImageItem],
    image_size: int,
    batch_size: int,
    preprocessing: str,
    encoded: Any = None,
    num_parallel_calls: int = AUTOTUNE,
) -> Iterator[ImageBatch]:
    """The reader as numpy batches."""
    if not items:
        return
    ds = make_image_dataset(
        items, image_size, batch_size, preprocessing, encoded, num_parallel_calls
    )
    for row_ids, inputs, ok, reasons, digests, widths, heights in ds.as_numpy_iterator():
        yield ImageBatch(
            row_ids=row_ids,
            inputs=inputs,
            ok=ok,
            reasons=[r.decode() for r in reasons],
            sha256=[d.decode() for d in digests],
            widths=widths,
            heights=heights,
        )


def embed_batch(runtime: Runtime, inputs: np.ndarray) -> np.ndarray:
    """The mapper: preprocessed inputs to unit-length float32 vectors."""
    return l2_normalise(runtime.embed(inputs))


@dataclass
class EmbeddedBatch:
    batch: ImageBatch
    vectors: np.ndarray  # one row per ok row, in order


def iter_embedded_batches(
    items: Sequence[ImageItem],
    spec_preprocessing: str,
    image_size: int,
    batch_size: int,
    runtime: Runtime,
    encoded: Any = None,
    num_parallel_calls: int = AUTOTUNE,
) -> Iterator[EmbeddedBatch]:
    """Reader + mapper: batches with the vectors of their usable rows."""
    for batch in iter_image_batches(
        items, image_size, batch_size, spec_preprocessing, encoded, num_parallel_calls
    ):
        good = batch.inputs[batch.ok]
        vectors = embed_batch(runtime, good) if len(good) else np.zeros((0, 0), np.float32)
        yield EmbeddedBatch(batch, vectors)
