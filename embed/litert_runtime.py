"""The fast CPU runtime: the Keras backbone exported to LiteRT and run with XNNPACK.

Conversion is slow (seconds), so the ``.tflite`` is cached on disk keyed by backbone, input
size and weights hash, and written atomically. The export is trusted only after it agrees with
Keras on the first real batch; otherwise every batch goes to Keras and the manifest says so.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path
from embed.environment import cache_dir, quiet_native_output, threads_from_env
from embed.keras_runtime import KerasRuntime

log = logging.getLogger(__name__)

# First-batch agreement with Keras (cosine similarity of raw feature rows) needed to trust LiteRT.
MIN_MEAN_COSINE = 0.999
MIN_MIN_COSINE = 0.995
# Rows per Keras call in the parity check (and after a fall-back): the check runs once, and
# small slices keep TensorFlow's activation memory, which it never returns, small.
PARITY_ROWS = 8
# Rows per LiteRT invoke (see LiteRTRuntime._run).
LITERT_MAX_ROWS = 8


def default_cache_dir() -> Path:
    """`$EMBED_DOGS_CACHE/litert`, else `~/.cache/embed-dogs/litert`."""
    return cache_dir("litert")


def default_num_threads() -> int:
    """LiteRT threads: env EMBED_DOGS_LITERT_THREADS, else every core this process may use.

    XNNPACK scales almost linearly here (MobileNetV2 224: 91 img/s on 1 thread, 168 on 2), so
    it gets every core; tf.data's decoding shares them (see `embed.pipeline.pipeline_options`).
    """
    return threads_from_env("EMBED_DOGS_LITERT_THREADS")


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


class TFLiteModel:
    """One LiteRT interpreter over a `.tflite` file (XNNPACK), safe to share between threads.

    An interpreter runs one call at a time, so the set-input / invoke / get-output sequence
    holds a lock: concurrent app sessions queue instead of corrupting each other's tensors.
    Batches of up to ``max_rows`` run as they are; larger ones in slices of that size.
    """

    def __init__(self, path: str | os.PathLike[str], num_threads: int | None = None,
                 max_rows: int = LITERT_MAX_ROWS) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.path = Path(path)
        self.num_threads = num_threads or default_num_threads()
        self.max_rows = max_rows
        with quiet_native_output():  # XNNPACK announces itself on stderr
            # BUILTIN applies the default delegate, XNNPACK, to every op it supports.
            self._interpreter = Interpreter(
                model_path=str(self.path),
                num_threads=self.num_threads,
                experimental_op_resolver_type=OpResolverType.BUILTIN,
            )
        (inp,) = self._interpreter.get_input_details()
        (out,) = self._interpreter.get_output_details()
        self._input_index = inp["index"]
        self._output_index = out["index"]
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.dim = int(out["shape"][-1])
        self._batch_size: int | None = None
        self._lock = threading.Lock()

    def _invoke(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) != self._batch_size:
            # Re-planning memory is costly: do it only when the batch size changes.
            self._interpreter.resize_tensor_input(self._input_index, list(rows.shape))
            with quiet_native_output():
                self._interpreter.allocate_tensors()
            self._batch_size = len(rows)
        self._interpreter.set_tensor(self._input_index, rows)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)  # a copy

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
        with self._lock:
            if not step or len(batch) <= step:
                return self._invoke(batch)
            parts = []
            for i in range(0, len(batch), step):
                rows = batch[i : i + step]
                if len(rows) < step:
                    pad = np.zeros((step - len(rows), *rows.shape[1:]), np.float32)
                    parts.append(self._invoke(np.concatenate([rows, pad]))[: len(rows)])
                else:
                    parts.append(self._invoke(rows))
            return np.concatenate(parts)


class BundledLiteRTRuntime:
    """The serving runtime: the `.tflite` a bundle carries, run without TensorFlow or Keras.

    It was checked against Keras when the bundle was built (its parity figures are in the
    manifest) and its sha256 is checked on loading, so queries trust it as it is.
    """

    name = "litert"

    def __init__(self, path: str | os.PathLike[str], parity: dict[str, Any] | None = None,
                 num_threads: int | None = None) -> None:
        self.model_ = TFLiteModel(path, num_threads)
        self.parity = parity

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self.model_.run(batch)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "requested": "litert", "parity": self.parity,
                "num_threads": self.model_.num_threads, "model_file": str(self.model_.path)}


class LiteRTRuntime:
    """Runs a Keras backbone through LiteRT + XNNPACK, checked against Keras on first use.

    Parameters are stored as given; state learned at run time ends in ``_``:
    ``converted_`` (this instance exported the model), ``parity_`` (first-batch agreement),
    ``fell_back_`` (Keras produces the vectors).

    ``requested`` is what the user asked for (``auto`` or ``litert``), kept for the manifest.
    ``tflite_path`` runs that file instead of the cached export (tests use it to force a
    parity failure); ``min_mean_cosine``/``min_min_cosine`` set the parity bound; ``max_rows``
    is the most rows one invoke runs (larger batches run in slices).
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
    ) -> None:
        self.model = model
        self.requested = requested
        self.name = "litert"  # what actually produces the vectors; "keras" after a fall-back
        self.cache_key = cache_key or model_cache_key(model)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.num_threads = num_threads or default_num_threads()
        self.max_rows = max_rows
        self.min_mean_cosine = min_mean_cosine
        self.min_min_cosine = min_min_cosine
        self.keras_ = KerasRuntime(model, max_rows=PARITY_ROWS)
        self.converted_ = False
        self.parity_: dict[str, Any] | None = None
        self.fell_back_ = False
        self.error_: str | None = None

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

    def _convert(self) -> None:
        log.info("converting the backbone to LiteRT (once per backbone and weights, cached in"
                 " %s; takes 10-40 s)", self.cache_file.parent)
        export_litert(self.model, self.cache_file)
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
        self._model = TFLiteModel(self.cache_file, self.num_threads, self.max_rows)

    def _fall_back(self, reason: str) -> None:
        warnings.warn(f"{reason}; falling back to the Keras runtime", RuntimeWarning, stacklevel=3)
        log.warning("%s; falling back to the Keras runtime", reason)
        self.fell_back_ = True
        self.name = "keras"
        self.error_ = reason

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Raw features for a preprocessed float32 batch; the first batch also checks parity."""
        if self.fell_back_:
            return self.keras_.embed(batch)
        if len(batch) == 0:
            return np.zeros((0, self._model.dim), np.float32)
        out = self._model.run(batch)
        if self.parity_ is None:
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
            if not passed:
                self._fall_back(
                    f"LiteRT output disagrees with Keras on the first batch (cosine mean {mean:.5f}"
                    f" < {self.min_mean_cosine} or min {low:.5f} < {self.min_min_cosine})"
                )
                return reference
        return out

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest: who produced the vectors, and why it was trusted."""
        d: dict[str, Any] = {
            "name": self.name,
            "requested": self.requested,
            "parity": self.parity_,
            "num_threads": self.num_threads,
            "cache_file": str(self.cache_file),
            "cache_key": self.cache_key,
        }
        if self.error_:
            d["fallback_reason"] = self.error_
        return d
