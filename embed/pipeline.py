"""The reader, the mapper and the batch embedding loop (reader -> mapper -> writer).

Reader: :func:`read_batch` reads, hashes, decodes and resizes one batch of images into uint8
pixels, in a worker thread (reading, hashing, decoding and resizing release the GIL). Bad
files travel through it as rows marked not-ok with a reason, so one bad file never stops a
batch. Mapper: :func:`embed_image_batch`, pure: a batch in, L2-normalised vectors out
(LiteRT preprocesses the pixels straight into its input buffer; other runtimes take
preprocessed floats, :func:`embed_batch`). :func:`iter_embedded_batches` runs them: one
worker per interpreter of a runtime that serves concurrent calls (each core decodes and then
embeds its own batch, and never waits for another), or a decoding thread pool ahead of one
embedding thread. Memory holds a few batches at a time, never the whole collection.

The tf.data reader (:func:`make_image_dataset`) remains for fine-tuning, whose augmentation
and training loop are TensorFlow's.

Where the time goes, MobileNetV2 on 2 cores (benchmarks/embed_throughput.py, CPU ms per
image): the bare float32 model 3.4-4.7 at 160 px and 8-9.4 at 224 px (the cores' speed
drifts); the reader 0.7-0.8 and 1.3-1.8 (decoder v3 needed 1.3 and 2.5), of which
libjpeg-turbo's decoding is 0.5 and 0.9, and resizing, preprocessing, reading and hashing
the rest. With every core busy, the pipeline reaches invoke / (invoke + reader) of the bare
model: about 0.85.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embed.backbones import preprocess, preprocess_pixels
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
    """One batch from the reader: only rows with ok=True carry usable inputs.

    The threaded reader hands over the decoded uint8 `pixels` and leaves preprocessing to
    whoever needs floats: LiteRT preprocesses straight into its interpreter's input (see
    `TFLiteModel.run_pixels`), everything else reads `inputs`, made on first use. The tf.data
    reader hands over float inputs already preprocessed.
    """

    row_ids: np.ndarray  # int64 (n,)
    ok: np.ndarray  # bool (n,)
    reasons: list[str]  # "" where ok
    sha256: list[str]
    widths: np.ndarray
    heights: np.ndarray
    pixels: np.ndarray | None = None  # uint8 (n, size, size, 3), as decoded
    preprocessing: str = "none"  # how `pixels` become `inputs`
    preprocessed: np.ndarray | None = None  # float32 (n, size, size, 3)

    @property
    def inputs(self) -> np.ndarray:
        """float32 model inputs (n, size, size, 3), preprocessed."""
        if self.preprocessed is None:
            if self.pixels is None:
                raise ValueError("an ImageBatch needs pixels or preprocessed inputs")
            self.preprocessed = preprocess_pixels(self.pixels, self.preprocessing)
        return self.preprocessed


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
            preprocessed=inputs,
            ok=ok,
            reasons=[r.decode() for r in reasons],
            sha256=[d.decode() for d in digests],
            widths=widths,
            heights=heights,
        )


Payload = str | bytes  # a file path, or encoded image bytes (tfds)


def read_batch(row_ids: Sequence[int], payloads: Sequence[Payload], config: ReaderConfig
               ) -> ImageBatch:
    """The reader's work for one batch: read and decode every image (bad ones become not-ok
    rows with a reason) into one uint8 array; `ImageBatch.inputs` preprocesses it when asked.
    Runs in a worker thread: file reads, hashing, decoding and resizing release the GIL."""
    size = config.image_size
    n = len(payloads)
    pixels = np.zeros((n, size, size, 3), np.uint8)
    ok = np.zeros(n, bool)
    reasons, digests = [""] * n, [""] * n
    widths, heights = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i, payload in enumerate(payloads):
        data: bytes | None = payload if isinstance(payload, bytes) else None
        try:
            if data is None:
                data, image = read_and_decode(str(payload), size)
            else:
                image = decode_image(data, size)
        except ImageDecodeError as exc:
            reasons[i] = str(exc)
            digests[i] = hashlib.sha256(data).hexdigest() if data else ""
            continue
        digests[i] = hashlib.sha256(data).hexdigest()
        pixels[i] = image.pixels
        ok[i] = True
        widths[i], heights[i] = image.width, image.height
    return ImageBatch(
        row_ids=np.asarray(row_ids, np.int64), ok=ok, reasons=reasons, sha256=digests,
        widths=widths, heights=heights, pixels=pixels, preprocessing=config.preprocessing,
    )


def _chunks(items: Sequence[ImageItem], step: int, encoded: Any
            ) -> Iterator[tuple[list[int], list[Payload]]]:
    """(row ids, payloads) per batch: file paths, or the next encoded images of `encoded`."""
    stream = encoded.as_numpy_iterator() if encoded is not None else None
    for start in range(0, len(items), step):
        chunk = items[start:start + step]
        if stream is None:
            payloads: list[Payload] = [item.ref for item in chunk]
        else:
            payloads = [bytes(next(stream)) for _ in chunk]
        yield [item.row_id for item in chunk], payloads


def _ordered(pool: Any, work: Callable[[Any], Any], tasks: Iterator[Any], ahead: int
             ) -> Iterator[Any]:
    """`work` over `tasks` in the pool, results in task order, at most `ahead` in flight (so
    memory holds a few batches, never the whole collection)."""
    from collections import deque

    pending: deque = deque()
    for task in tasks:
        pending.append(pool.submit(work, task))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def iter_image_batches_threads(
    items: Sequence[ImageItem], config: ReaderConfig, encoded: Any = None
) -> Iterator[ImageBatch]:
    """The reader without TensorFlow's pipeline: batches decoded in a thread pool (decoding
    releases the GIL), a few batches ahead, in order."""
    return iter_read_batches(_chunks(items, config.batch_size, encoded), config)


def iter_payload_batches(row_ids: Sequence[int], payloads: Sequence[Payload],
                         config: ReaderConfig) -> Iterator[ImageBatch]:
    """The threaded reader over payloads already at hand (paths or encoded bytes)."""
    step = config.batch_size
    return iter_read_batches(((list(row_ids[i:i + step]), list(payloads[i:i + step]))
                              for i in range(0, len(payloads), step)), config)


def iter_read_batches(chunks: Iterator[tuple[list[int], list[Payload]]], config: ReaderConfig
                      ) -> Iterator[ImageBatch]:
    from concurrent.futures import ThreadPoolExecutor

    threads = config.threads or decode_threads()
    with ThreadPoolExecutor(threads) as pool:
        yield from _ordered(pool, lambda chunk: read_batch(*chunk, config), chunks,
                            threads + PREFETCH)


def embed_batch(runtime: Runtime, inputs: np.ndarray) -> np.ndarray:
    """The mapper: preprocessed inputs to unit-length float32 vectors."""
    return l2_normalise(runtime.embed(inputs))


def embed_pixels(runtime: Runtime, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
    """uint8 RGB (N, size, size, 3) to unit-length vectors; the runtime preprocesses them
    (LiteRT straight into its input buffers, which saves a float32 copy of the batch)."""
    return l2_normalise(runtime.embed_pixels(np.asarray(pixels, np.uint8), preprocessing))


def embed_image_batch(runtime: Runtime, batch: ImageBatch) -> np.ndarray:
    """The mapper for a reader's batch: unit-length vectors of its usable rows, from its
    uint8 pixels (see `embed_pixels`), or from its floats when the reader made them
    (tf.data)."""
    if not batch.ok.any():
        return np.zeros((0, 0), np.float32)
    if batch.preprocessed is None and batch.pixels is not None:
        pixels = batch.pixels if batch.ok.all() else batch.pixels[batch.ok]
        return embed_pixels(runtime, pixels, batch.preprocessing)
    inputs = batch.inputs if batch.ok.all() else batch.inputs[batch.ok]
    return embed_batch(runtime, inputs)


@dataclass
class EmbeddedBatch:
    batch: ImageBatch
    vectors: np.ndarray  # one row per ok row, in order


def iter_embedded_batches(
    items: Sequence[ImageItem], config: ReaderConfig, runtime: Runtime, encoded: Any = None,
) -> Iterator[EmbeddedBatch]:
    """Reader + mapper, in order: batches with the vectors of their usable rows.

    A runtime that serves concurrent calls (``runtime.concurrency`` > 1: LiteRT with one
    interpreter per core) gets that many workers, each reading, decoding and embedding whole
    batches: every core runs decode then invoke on its own batch, with nothing to wait for in
    between. Otherwise (Keras) a thread pool decodes ahead while this thread embeds.
    `encoded` (tfds) is a tf.data.Dataset of encoded images in item order; files are read in
    the workers.
    """
    if not items:
        return
    workers = max(1, runtime.concurrency)
    chunks = _chunks(items, config.batch_size, encoded)

    def mapped(batch: ImageBatch) -> EmbeddedBatch:
        return EmbeddedBatch(batch, embed_image_batch(runtime, batch))

    if workers == 1:
        for batch in iter_image_batches_threads(items, config, encoded):
            yield mapped(batch)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        yield from _ordered(pool, lambda chunk: mapped(read_batch(*chunk, config)), chunks,
                            workers + 1)
