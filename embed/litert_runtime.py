"""The fast CPU runtime: the Keras backbone exported to LiteRT and run with XNNPACK.

Conversion is slow (seconds), so the ``.tflite`` is cached on disk keyed by backbone, input
size and weights hash, and written atomically. The export is trusted only after it agrees with
Keras on the first real batch; otherwise every batch goes to Keras and the manifest says so.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embed import quantise
from embed.atomic import atomic_path, atomic_write_text
from embed.environment import cache_dir, cpu_cores, quiet_native_output
from embed.keras_runtime import KerasRuntime
from embed.quantise import export_int8, task_check

log = logging.getLogger(__name__)

# First-batch agreement with Keras (cosine similarity of raw feature rows) needed to trust LiteRT.
MIN_MEAN_COSINE = 0.999
MIN_MIN_COSINE = 0.995
# Rows per Keras call in the parity check (and after a fall-back): the check runs once, and
# small slices keep TensorFlow's activation memory, which it never returns, small.
PARITY_ROWS = 8
# Rows per LiteRT invoke (see TFLiteModel.run): one single-threaded interpreter runs 4 rows
# as fast per image as 8 or 32, with half the arena of 8.
LITERT_MAX_ROWS = 4


def default_cache_dir() -> Path:
    """`$EMBED_DOGS_CACHE/litert`, else `~/.cache/embed-dogs/litert`."""
    return cache_dir("litert")


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


def model_cache_key(model: Any) -> str:
    """Key for a model when the caller has none: name, input shape and weights hash."""
    from embed.backbones import weights_sha256

    shape = "x".join(str(d) for d in model.input_shape[1:])
    return f"{model.name}-{shape}-{weights_sha256(model)}"


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows; two all-zero rows count as identical."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-30)
    return np.where((na < 1e-12) & (nb < 1e-12), 1.0, cos)


def export_litert(model: Any, path: Path) -> Path:
    """Export `model` to `path` (float32, no quantisation) via Keras' own LiteRT exporter.

    Written to a temporary name in the same folder and renamed, so a crash or a concurrent
    worker never leaves a half-written file under the cached name.
    """
    with atomic_path(path, suffix=".tflite") as tmp:
        model.export(str(tmp), format="litert", verbose=False)
    return path


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


class BundledLiteRTRuntime:
    """The serving runtime: the `.tflite` a bundle carries, run without TensorFlow or Keras.

    It was checked when the bundle was built (against Keras, and for int8 on the task; the
    figures are in the manifest) and its sha256 is checked on loading, so queries trust it
    as it is. ``name`` is the recorded runtime (``litert`` or ``litert-int8``).
    """

    def __init__(self, path: str | os.PathLike[str], parity: dict[str, Any] | None = None,
                 num_threads: int | None = None, name: str = "litert",
                 replicas: int | None = None) -> None:
        self.model_ = TFLiteModel(path, num_threads, replicas=replicas or default_replicas())
        self.parity = parity
        self.name = name

    @property
    def concurrency(self) -> int:
        return self.model_.replicas

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.model_.run(batch)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        """Raw features for uint8 pixels (see `TFLiteModel.run_pixels`)."""
        return _run_pixels(self.model_, pixels, preprocessing)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "requested": self.name, "parity": self.parity,
                "num_threads": self.model_.num_threads, "replicas": self.model_.replicas,
                "model_file": str(self.model_.path)}


class LiteRTRuntime:
    """Runs a Keras backbone through LiteRT + XNNPACK, checked against Keras on first use.

    Parameters are stored as given; state learned at run time ends in ``_``:
    ``converted_`` (this instance exported the model), ``parity_`` (first-batch agreement),
    ``fell_back_`` (Keras produces the vectors), ``seconds_`` (one-time costs: conversion,
    parity check).

    ``requested`` is what the user asked for (``auto`` or ``litert``), kept for the manifest.
    ``tflite_path`` runs that file instead of the cached export (tests use it to force a
    parity failure); ``min_mean_cosine``/``min_min_cosine`` set the parity bound; ``max_rows``
    is the most rows one invoke runs (larger batches run in slices); ``replicas`` interpreters
    of ``num_threads`` threads each serve concurrent calls (see `default_replicas`).
    """

    def __init__(
        self,
        model: Any,
        *,
        cache_key: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
        tflite_path: str | os.PathLike[str] | None = None,
        min_mean_cosine: float = MIN_MEAN_COSINE,
        min_min_cosine: float = MIN_MIN_COSINE,
        requested: str = "litert",
        max_rows: int = LITERT_MAX_ROWS,
        replicas: int | None = None,
    ) -> None:
        self.model = model
        self.requested = requested
        self.name = "litert"  # what actually produces the vectors; "keras" after a fall-back
        self.cache_key = cache_key or model_cache_key(model)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.num_threads = num_threads or default_num_threads()
        self.replicas = replicas or default_replicas()
        self.max_rows = max_rows
        self.min_mean_cosine = min_mean_cosine
        self.min_min_cosine = min_min_cosine
        self.keras_ = KerasRuntime(model, max_rows=PARITY_ROWS)
        self.converted_ = False
        self.parity_: dict[str, Any] | None = None
        self.fell_back_ = False
        self.error_: str | None = None
        self.seconds_: dict[str, float] = {}
        self._parity_lock = threading.Lock()

        self.tflite_path = tflite_path
        if tflite_path is not None:
            self.cache_file = Path(tflite_path)
        else:
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.cache_key)
            self.cache_file = self.cache_dir / f"{safe}.tflite"
        try:
            self._load()
        except Exception as exc:  # conversion or loading failed: Keras still works
            self._fall_back(f"LiteRT unavailable for {self.cache_key}: {exc}")

    @property
    def concurrency(self) -> int:
        """How many embed calls run side by side (the pipeline runs that many workers)."""
        return 1 if self.fell_back_ else self.replicas

    def _convert(self) -> None:
        log.info("converting the backbone to LiteRT (once per backbone and weights, cached in"
                 " %s; takes 10-40 s)", self.cache_file.parent)
        start = time.perf_counter()
        export_litert(self.model, self.cache_file)
        self.seconds_["conversion"] = self.seconds_.get("conversion", 0.0) + (
            time.perf_counter() - start)
        self.converted_ = True

    def _load(self) -> None:
        """Open the cached export, converting first if absent, or again if it will not load."""
        if not self.cache_file.is_file():
            self._convert()
        try:
            self._open()
        except Exception as exc:
            if self.converted_ or self.tflite_path is not None:
                raise
            log.warning("cached %s does not load (%s); converting again", self.cache_file, exc)
            self._convert()
            self._open()

    def _open(self) -> None:
        self._model = TFLiteModel(self.cache_file, self.num_threads, self.max_rows,
                                  self.replicas)

    def _fall_back(self, reason: str) -> None:
        warnings.warn(f"{reason}; falling back to the Keras runtime", RuntimeWarning, stacklevel=3)
        log.warning("%s; falling back to the Keras runtime", reason)
        self.fell_back_ = True
        self.name = "keras"
        self.error_ = reason

    def _check(self, batch: np.ndarray) -> np.ndarray:
        """The first batch: run both engines, record the agreement, fall back if it fails."""
        start = time.perf_counter()
        out = self._model.run(batch)
        reference = self.keras_.embed(batch)
        cos = row_cosines(out, reference)
        mean, low = float(cos.mean()), float(cos.min())
        passed = mean >= self.min_mean_cosine and low >= self.min_min_cosine
        self.parity_ = {
            "mean_cosine": mean,
            "min_cosine": low,
            "passed": passed,
            "rows": len(cos),
        }
        self.seconds_["parity"] = time.perf_counter() - start
        if not passed:
            self._fall_back(
                f"LiteRT output disagrees with Keras on the first batch (cosine mean {mean:.5f}"
                f" < {self.min_mean_cosine} or min {low:.5f} < {self.min_min_cosine})"
            )
            return reference
        return out

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Raw features for a preprocessed float32 batch; the first batch also checks parity
        (concurrent callers wait for that check)."""
        if self.parity_ is None and not self.fell_back_ and len(batch):
            with self._parity_lock:
                if self.parity_ is None and not self.fell_back_:
                    return self._check(batch)
        if self.fell_back_:
            return self.keras_.embed(batch)
        if len(batch) == 0:
            return np.zeros((0, self._model.dim), np.float32)
        return self._model.run(batch)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        """Raw features for uint8 pixels: preprocessed into LiteRT's input buffer once the
        parity check has passed; the first batch, and every batch after a fall-back, goes
        through `embed` as floats."""
        if self.parity_ is None or self.fell_back_:
            from embed.backbones import preprocess_pixels

            return self.embed(preprocess_pixels(pixels, preprocessing))
        return _run_pixels(self._model, pixels, preprocessing)

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest: who produced the vectors, and why it was trusted."""
        d: dict[str, Any] = {
            "name": self.name,
            "requested": self.requested,
            "precision": "float32",
            "parity": self.parity_,
            "num_threads": self.num_threads,
            "replicas": self.replicas,
            "cache_file": str(self.cache_file),
            "cache_key": self.cache_key,
        }
        if self.error_:
            d["fallback_reason"] = self.error_
        return d


class LiteRTInt8Runtime:
    """A full-integer (int8) LiteRT model, calibrated on the build's own images and trusted
    only after it passes the task check against float32 (see `embed.quantise`).

    Until `calibrate` has run, and whenever the check fails, the float32 LiteRT runtime
    (``float_``, itself checked against Keras) produces the vectors. ``max_top1_drop`` and
    ``min_overlap`` are the task bounds (default: `embed.quantise`'s). State learned at run
    time: ``int8_`` (the figures of the task check, None before `calibrate`),
    ``use_int8_``, ``seconds_`` (one-time costs).
    """

    def __init__(
        self,
        model: Any,
        *,
        cache_key: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        num_threads: int | None = None,
        replicas: int | None = None,
        requested: str = "litert-int8",
        max_rows: int = LITERT_MAX_ROWS,
        max_top1_drop: float | None = None,
        min_overlap: float | None = None,
    ) -> None:
        self.model = model
        self.requested = requested
        # None: the bounds of embed.quantise, read now (tests loosen or tighten them there)
        self.max_top1_drop = quantise.MAX_TOP1_DROP if max_top1_drop is None else max_top1_drop
        self.min_overlap = quantise.MIN_OVERLAP if min_overlap is None else min_overlap
        self.float_ = LiteRTRuntime(model, cache_key=cache_key, cache_dir=cache_dir,
                                    num_threads=num_threads, requested=requested,
                                    max_rows=max_rows, replicas=replicas)
        self.int8_: dict[str, Any] | None = None
        self.use_int8_ = False
        self.seconds_: dict[str, float] = {}
        self._int8_model: TFLiteModel | None = None
        self._parity_before = 0.0
        self.int8_file: Path | None = None

    @property
    def name(self) -> str:
        return "litert-int8" if self.use_int8_ else self.float_.name

    @property
    def concurrency(self) -> int:
        return self.float_.replicas if self.use_int8_ else self.float_.concurrency

    @property
    def cache_file(self) -> Path:
        """The `.tflite` that produces the vectors (the bundle's serving model)."""
        return self.int8_file if self.use_int8_ and self.int8_file else self.float_.cache_file

    def int8_path(self, calibration_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.float_.cache_key)
        return self.float_.cache_dir / f"{safe}-int8-{calibration_id[:16]}.tflite"

    def calibrate(
        self,
        calibration: Callable[[], Iterator[np.ndarray]],
        calibration_id: str,
        check: Iterable[tuple[np.ndarray, Sequence[str | None]]],
        calibration_rows: int | None = None,
        check_id: str | None = None,
    ) -> dict[str, Any]:
        """Quantise (or reuse the cached int8 model for this calibration sample), embed the
        check batches with both models, judge int8 on the task and choose.

        `calibration()` yields preprocessed input batches; `calibration_id` names them
        (`embed.quantise.sample_identity`); `check` yields (inputs, labels) batches, and
        `check_id`, when given, names them so that the verdict is cached beside the int8
        model (the same model judged on the same sample needs no second look).
        Returns the figures that go into the manifest under ``int8``.
        """
        start = time.perf_counter()
        self._parity_before = self.float_.seconds_.get("parity", 0.0)
        figures: dict[str, Any] = {"calibration": {"sha256": calibration_id,
                                                   "rows": calibration_rows}}
        try:
            path = self.int8_path(calibration_id)
            figures["cache_file"] = str(path)
            if not path.is_file():
                log.info("quantising the backbone to int8 (once per backbone, weights and"
                         " calibration sample, cached in %s)", path.parent)
                converting = time.perf_counter()
                export_int8(self.model, path, calibration)
                self.seconds_["int8 conversion"] = time.perf_counter() - converting
                figures["converted"] = True
            self._int8_model = TFLiteModel(path, self.float_.num_threads, self.float_.max_rows,
                                           self.float_.replicas)
            self.int8_file = path
        except Exception as exc:  # conversion failed: float32 still works
            figures.update(passed=False, reason=f"int8 conversion failed: {exc}")
            return self._decide(figures, start)
        bounds = f"{self.max_top1_drop}-{self.min_overlap}"
        verdict = (path.with_name(f"{path.stem}.check-{check_id[:16]}-{bounds}.json")
                   if check_id else None)
        if verdict is not None and verdict.is_file() and not self.float_.fell_back_:
            try:
                figures.update(json.loads(verdict.read_text())["figures"], check_cached=True)
                return self._decide(figures, start)
            except (OSError, ValueError, KeyError):
                pass  # judge again
        reference, candidate, labels = [], [], []
        for inputs, batch_labels in check:
            if not len(inputs):
                continue
            reference.append(l2_rows(self.float_.embed(inputs)))
            candidate.append(l2_rows(self._int8_model.run(inputs)))
            labels.extend(batch_labels)
        if self.float_.fell_back_:
            figures.update(passed=False, reason="the float32 LiteRT model failed its parity"
                           " check against Keras, so int8 was not judged")
        elif not reference:
            figures.update(passed=False, reason="no readable image to judge int8 on")
        else:
            judged = task_check(np.concatenate(reference), np.concatenate(candidate), labels,
                                self.max_top1_drop, self.min_overlap)
            figures.update(judged)
            if verdict is not None:
                atomic_write_text(verdict, json.dumps({"figures": judged}))
        return self._decide(figures, start)

    def _decide(self, figures: dict[str, Any], start: float) -> dict[str, Any]:
        self.use_int8_ = bool(figures.get("passed"))
        self.int8_ = figures
        # what the check itself took: not the conversion, not the float model's parity check
        self.seconds_["int8 check"] = (time.perf_counter() - start
                                       - self.seconds_.get("int8 conversion", 0.0)
                                       - self.float_.seconds_.get("parity", 0.0)
                                       + self._parity_before)
        if not self.use_int8_:
            # one line wherever it shows (no source line under it, no second copy in the log)
            warnings.warn_explicit(
                f"int8 model not used ({figures.get('reason')}); embedding with float32",
                RuntimeWarning, "embed-dogs", 0)
        return figures

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if self.use_int8_ and self._int8_model is not None:
            return self._int8_model.run(batch)
        return self.float_.embed(batch)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        if self.use_int8_ and self._int8_model is not None:
            return _run_pixels(self._int8_model, pixels, preprocessing)
        return self.float_.embed_pixels(pixels, preprocessing)

    def describe(self) -> dict[str, Any]:
        d = self.float_.describe()
        d.update(name=self.name, requested=self.requested,
                 precision="int8" if self.use_int8_ else "float32",
                 cache_file=str(self.cache_file),
                 int8=self.int8_ or {"passed": None, "reason": "not calibrated"})
        return d


def _run_pixels(model: TFLiteModel, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
    """uint8 pixels through `model`, by table lookup into its input where the preprocessing
    maps each value on its own, else as preprocessed floats."""
    from embed.backbones import preprocess_pixels, preprocess_table

    table = preprocess_table(preprocessing)
    if table is None:
        return model.run(preprocess_pixels(pixels, preprocessing))
    return model.run_pixels(pixels, table)


def l2_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
