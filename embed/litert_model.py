"""LiteRT interpreters over one `.tflite` file, and the runtime that serves a bundle's own file.

This module needs neither TensorFlow nor Keras: it is what queries, `add` and the Ray
workers run once a model has been converted and checked (`embed.litert_runtime`,
`embed.int8_runtime` do the conversion and the checks).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embed.environment import cpu_cores, quiet_native_output

# Rows per LiteRT invoke (see TFLiteModel.run): one single-threaded interpreter runs 4 rows
# as fast per image as 8 or 32, with half the arena of 8.
LITERT_MAX_ROWS = 4


def default_num_threads() -> int:
    """Threads per LiteRT interpreter: env EMBED_DOGS_LITERT_THREADS, else 1 (see
    `default_replicas`: one single-threaded interpreter per core)."""
    value = os.environ.get("EMBED_DOGS_LITERT_THREADS")
    return max(1, int(value)) if value else 1


def default_replicas() -> int:
    """Interpreters per model: env EMBED_DOGS_LITERT_REPLICAS, else one per usable core.

    Measured on 2 cores (MobileNetV2 160, benchmarks/embed_throughput.py): one interpreter
    with 2 XNNPACK threads is the fastest on tensors alone, but once decoding shares the
    cores its threads wait for each other at every layer whenever a decode preempts one of
    them; two single-threaded interpreters, each decoding and then embedding its own batch,
    never wait, and ran the whole pipeline 10-20 % faster.
    """
    value = os.environ.get("EMBED_DOGS_LITERT_REPLICAS")
    return max(1, int(value)) if value else cpu_cores()


class _Slot:
    """One interpreter and the batch size its arena is planned for."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        (inp,) = interpreter.get_input_details()
        (out,) = interpreter.get_output_details()
        self.input_index = inp["index"]
        self.output_index = out["index"]
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.dim = int(out["shape"][-1])
        self.input_dtype = np.dtype(inp["dtype"])
        self.batch_size: int | None = None

    def _plan(self, rows: int) -> None:
        if rows != self.batch_size:
            # Re-planning memory is costly: do it only when the batch size changes.
            self.interpreter.resize_tensor_input(self.input_index, [rows, *self.input_shape])
            with quiet_native_output():
                self.interpreter.allocate_tensors()
            self.batch_size = rows

    def invoke(self, rows: np.ndarray) -> np.ndarray:
        self._plan(len(rows))
        self.interpreter.set_tensor(self.input_index, rows)
        self.interpreter.invoke()  # releases the GIL
        return self.interpreter.get_tensor(self.output_index)  # a copy

    def invoke_pixels(self, pixels: np.ndarray, table: np.ndarray, rows: int) -> np.ndarray:
        """Run uint8 `pixels` (at most `rows` of them) preprocessed by `table` straight into
        the interpreter's input buffer, planned for `rows` rows; rows past the pixels keep
        whatever they held (each row's output depends on that row alone)."""
        self._plan(rows)
        _lookup_into(self.interpreter.tensor(self.input_index), pixels, table)
        self.interpreter.invoke()  # releases the GIL
        return self.interpreter.get_tensor(self.output_index)[: len(pixels)]


def _lookup_into(tensor: Callable[[], np.ndarray], pixels: np.ndarray, table: np.ndarray
                 ) -> None:
    """table[pixels] written into the buffer `tensor()` views (OpenCV's SIMD lookup, no
    intermediate array). The view must be gone before the interpreter runs again, so it
    lives only inside this call."""
    from embed.images import opencv

    view = tensor()
    flat = view.reshape(len(view), -1)
    opencv().LUT(np.ascontiguousarray(pixels).reshape(len(pixels), -1), table,
                 dst=flat[: len(pixels)])


class TFLiteModel:
    """LiteRT interpreters over one `.tflite` file (XNNPACK), safe to share between threads.

    An interpreter runs one call at a time, so each call borrows one of ``replicas``
    interpreters (``num_threads`` threads each) and gives it back: concurrent callers (the
    pipeline's workers, app sessions) run side by side on different interpreters, or queue
    when all are busy, and never corrupt each other's tensors. Batches of up to ``max_rows``
    run as they are; larger ones in slices of that size.
    """

    def __init__(self, path: str | os.PathLike[str], num_threads: int | None = None,
                 max_rows: int = LITERT_MAX_ROWS, replicas: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(path)
        self.num_threads = num_threads or default_num_threads()
        self.max_rows = max_rows
        self.replicas = max(1, replicas)
        slots = []
        with quiet_native_output():  # XNNPACK announces itself on stderr
            for _ in range(self.replicas):
                # BUILTIN applies the default delegate, XNNPACK, to every op it supports.
                slots.append(_Slot(Interpreter(
                    model_path=str(self.path),
                    num_threads=self.num_threads,
                    experimental_op_resolver_type=OpResolverType.BUILTIN,
                )))
        self.input_shape = slots[0].input_shape
        self.dim = slots[0].dim
        self._slots = tuple(slots)
        self._free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        for slot in slots:
            self._free.put(slot)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Raw outputs for a float32 batch.

        The interpreter's arena grows with its batch size (MobileNetV2 224: +235 MiB for 32
        rows, +84 MiB for 8) while throughput does not (XNNPACK already fills the cores with
        one image), so large batches run in fixed slices, the last one padded with zeros so the
        arena is planned once.
        """
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        step = self.max_rows
        slot = self._free.get()  # blocks while every interpreter is busy
        try:
            if not step or len(batch) <= step:
                return slot.invoke(batch)
            parts = []
            for i in range(0, len(batch), step):
                rows = batch[i : i + step]
                if len(rows) < step:
                    pad = np.zeros((step - len(rows), *rows.shape[1:]), np.float32)
                    parts.append(slot.invoke(np.concatenate([rows, pad]))[: len(rows)])
                else:
                    parts.append(slot.invoke(rows))
            return np.concatenate(parts)
        finally:
            self._free.put(slot)

    def run_pixels(self, pixels: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Raw outputs for a uint8 batch, preprocessed by `table` (`preprocess_table`) into
        each interpreter's own input buffer: the same numbers as `run` on the preprocessed
        floats, without a float32 copy of the batch (and its page faults) or `set_tensor`'s
        copy. Slices and padding as in `run`."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), np.float32)
        step = self.max_rows
        slot = self._free.get()
        try:
            if slot.input_dtype != np.float32:
                raise ValueError(f"{self.path} takes {slot.input_dtype} input, not float32")
            if not step or len(pixels) <= step:
                return slot.invoke_pixels(pixels, table, len(pixels))
            return np.concatenate([slot.invoke_pixels(pixels[i : i + step], table, step)
                                   for i in range(0, len(pixels), step)])
        finally:
            self._free.put(slot)


def run_pixels(model: TFLiteModel, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
    """uint8 pixels through `model`, by table lookup into its input where the preprocessing
    maps each value on its own, else as preprocessed floats."""
    from embed.backbones import preprocess_pixels, preprocess_table

    table = preprocess_table(preprocessing)
    if table is None:
        return model.run(preprocess_pixels(pixels, preprocessing))
    return model.run_pixels(pixels, table)


class BundledLiteRTRuntime:
    """A `.tflite` run as it is, without TensorFlow or Keras: a bundle's serving model (for
    queries and `add`), or the model a build's driver checked and shipped to Ray workers.

    It was judged where it was made (parity against Keras, and for int8 the task check; the
    figures are in the manifest, and ``parity`` carries them along), and its sha256 is
    checked on loading, so it is trusted as it is: nothing to check, calibrate or fall back
    from. ``name`` is the recorded runtime (``litert`` or ``litert-int8``).
    """

    calibrates = False
    parity_pending = False
    fallback_reason = None

    def __init__(self, path: str | os.PathLike[str], parity: dict[str, Any] | None = None,
                 num_threads: int | None = None, name: str = "litert",
                 replicas: int | None = None, precision: str | None = None) -> None:
        self.model_ = TFLiteModel(path, num_threads, replicas=replicas or default_replicas())
        self.parity = parity
        self.name = name
        self.precision = precision  # as recorded by the build that made the model
        self.requested = name

    @property
    def concurrency(self) -> int:
        return self.model_.replicas

    @property
    def float_runtime(self) -> BundledLiteRTRuntime:
        return self  # a shipped model is final: no float model under it to check

    @property
    def seconds(self) -> dict[str, float]:
        return {}  # loading it is start-up, not a one-time cost of the build

    @property
    def model_file(self) -> Path:
        return self.model_.path

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.model_.run(batch)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        """Raw features for uint8 pixels (see `TFLiteModel.run_pixels`)."""
        return run_pixels(self.model_, pixels, preprocessing)

    def check_parity(self, batch: np.ndarray) -> None:
        return None

    def calibrate(self, *args: Any, **kwargs: Any) -> None:
        return None  # judged where it was made

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "requested": self.name, "precision": self.precision,
                "parity": self.parity,
                "num_threads": self.model_.num_threads, "replicas": self.model_.replicas,
                "model_file": str(self.model_.path)}
