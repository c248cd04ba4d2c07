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
from embed.environment import threads_from_env
from embed.images import ImageDecodeError, decode_image, read_and_decode
from embed.runtimes import Runtime, l2_normalise
from embed.sources import ImageItem

PREFETCH = 2  # batches decoded ahead of the one being embedded
DEFAULT_BATCH_SIZE = 32  # measured: as fast as 64 on 2 cores, ~120 MiB less peak memory


def decode_threads() -> int:
    """Threads tf.data decodes with: env EMBED_DOGS_DECODE_THREADS, else the usable cores."""
    return threads_from_env("EMBED_DOGS_DECODE_THREADS")


def pipeline_options(threads: int) -> Any:
    """tf.data options with the thread counts set deliberately, measured on 2 cores.

    - A private pool of `threads` threads, and one thread per op inside it, so decoding never
      spreads over TensorFlow's global pools and takes at most `threads` cores.
    - Autotuning off: parallelism is fixed here anyway, and its background model makes every
      iterator's teardown wait (about 1.5 s per pass; 600 images ran at 116 instead of 177/s).
    - Deterministic order: row ids travel with the data, but callers and tests expect order.

    Decoding (PIL, GIL released) then overlaps LiteRT, which also uses every core: decoding
    costs about a sixth of LiteRT's CPU time, so sharing the cores costs less than the idle
    time a smaller split would leave (1 decode thread measured slightly slower than 2).
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    options.deterministic = True
    return options


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


@dataclass(frozen=True)
class ReaderConfig:
    """How the reader turns items into model inputs: the backbone's size and preprocessing,
    the batch size and the decode threads (None: `decode_threads()`)."""

    image_size: int
    preprocessing: str
    batch_size: int = DEFAULT_BATCH_SIZE
    threads: int | None = None


def make_image_dataset(
    items: Sequence[ImageItem], config: ReaderConfig, encoded: Any = None
) -> Any:
    """A tf.data.Dataset of batches (row_ids, inputs, ok, reason, sha256, width, height).

    `encoded`, when given, is a tf.data.Dataset of encoded image bytes in item order (tfds);
    otherwise each item's `ref` is a file path read inside the pipeline.
    """
    import tensorflow as tf

    image_size = config.image_size
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
        inputs = preprocess(tf.cast(pixels, tf.float32), config.preprocessing)
        return (row_id, inputs, *rest)

    threads = config.threads or decode_threads()
    ds = ds.with_options(pipeline_options(threads))
    ds = ds.map(decode, num_parallel_calls=threads, deterministic=True)
    ds = ds.batch(config.batch_size).map(to_inputs, num_parallel_calls=1)
    return ds.prefetch(PREFETCH)


def iter_image_batches(
    items: Sequence[ImageItem], config: ReaderConfig, encoded: Any = None
) -> Iterator[ImageBatch]:
    """The reader as numpy batches."""
    if not items:
        return
    ds = make_image_dataset(items, config, encoded)
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


def iter_image_batches_threads(
    items: Sequence[ImageItem], config: ReaderConfig
) -> Iterator[ImageBatch]:
    """The same reader without TensorFlow: PIL decodes in a thread pool (it releases the GIL),
    a few batches ahead, for query commands that must not pay TensorFlow's import (6 s)."""
    from concurrent.futures import ThreadPoolExecutor

    size = np.int32(config.image_size)
    step = config.batch_size

    def decode_batch(start: int) -> list[tuple]:
        return [_decode_path(item.ref.encode(), size) for item in items[start:start + step]]

    threads = config.threads or decode_threads()
    with ThreadPoolExecutor(threads) as pool:
        starts = range(0, len(items), step)
        # each batch is one task; map keeps order and runs up to `threads` batches ahead
        for start, decoded in zip(starts, pool.map(decode_batch, starts), strict=True):
            pixels, ok, reasons, digests, widths, heights = zip(*decoded, strict=True)
            inputs = preprocess(np.stack(pixels).astype(np.float32), config.preprocessing)
            yield ImageBatch(
                row_ids=np.array([item.row_id for item in items[start:start + step]], np.int64),
                inputs=np.asarray(inputs, np.float32),
                ok=np.array(ok, bool),
                reasons=[r.decode() for r in reasons],
                sha256=[d.decode() for d in digests],
                widths=np.array(widths, np.int32),
                heights=np.array(heights, np.int32),
            )


def embed_batch(runtime: Runtime, inputs: np.ndarray) -> np.ndarray:
    """The mapper: preprocessed inputs to unit-length float32 vectors."""
    return l2_normalise(runtime.embed(inputs))


@dataclass
class EmbeddedBatch:
    batch: ImageBatch
    vectors: np.ndarray  # one row per ok row, in order


def iter_embedded_batches(
    items: Sequence[ImageItem], config: ReaderConfig, runtime: Runtime, encoded: Any = None,
    tensorflow: bool = True,
) -> Iterator[EmbeddedBatch]:
    """Reader + mapper: batches with the vectors of their usable rows. `tensorflow=False`
    reads with a thread pool instead of tf.data (files only, no tfds `encoded`)."""
    batches = (iter_image_batches(items, config, encoded) if tensorflow
               else iter_image_batches_threads(items, config))
    for batch in batches:
        good = batch.inputs if batch.ok.all() else batch.inputs[batch.ok]
        vectors = embed_batch(runtime, good) if len(good) else np.zeros((0, 0), np.float32)
        yield EmbeddedBatch(batch, vectors)
