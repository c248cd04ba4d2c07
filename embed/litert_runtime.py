"""The fast CPU runtime: the Keras backbone exported to LiteRT and run with XNNPACK.

Conversion is slow (seconds), so the ``.tflite`` is cached on disk keyed by backbone, input
size and weights hash, and written atomically. The export is trusted only after it agrees with
Keras on the first real batch; otherwise every batch goes to Keras and the manifest says so.
The interpreters themselves live in `embed.litert_model`; int8 in `embed.int8_runtime`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path, atomic_write_text, file_sha256
from embed.environment import cache_dir
from embed.keras_runtime import KerasRuntime
from embed.litert_model import (
    LITERT_MAX_ROWS,
    TFLiteModel,
    default_num_threads,
    default_replicas,
    run_pixels,
)

log = logging.getLogger(__name__)

# First-batch agreement with Keras (cosine similarity of raw feature rows) needed to trust LiteRT.
MIN_MEAN_COSINE = 0.999
MIN_MIN_COSINE = 0.995
# Rows per Keras call in the parity check (and after a fall-back): the check runs once, and
# small slices keep TensorFlow's activation memory, which it never returns, small.
PARITY_ROWS = 8


def default_cache_dir() -> Path:
    """`$EMBED_DOGS_CACHE/litert`, else `~/.cache/embed-dogs/litert`."""
    return cache_dir("litert")


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


def parity_path(model_file: Path) -> Path:
    return model_file.with_name(f"{model_file.stem}.parity.json")


def cached_parity(model_file: Path, bounds: list[float]) -> dict[str, Any] | None:
    """A passed parity verdict kept beside `model_file` for these bounds, if that file is
    still the one it judged (its sha256); then Keras need not be built to check it again."""
    try:
        record = json.loads(parity_path(model_file).read_text())
        if record["bounds"] != bounds or record["sha256"] != file_sha256(model_file):
            return None
        return {**record["parity"], "cached": True} if record["parity"]["passed"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_parity(model_file: Path, bounds: list[float], parity: dict[str, Any]) -> None:
    """Keep a passed verdict beside the model it judged (see `cached_parity`)."""
    record = {"bounds": bounds, "sha256": file_sha256(model_file), "parity": parity}
    atomic_write_text(parity_path(model_file), json.dumps(record))


class LiteRTRuntime:
    """Runs a Keras backbone through LiteRT + XNNPACK, checked against Keras on first use.

    Parameters are stored as given; state learned at run time ends in ``_``:
    ``converted_`` (this instance exported the model), ``parity_`` (first-batch agreement),
    ``fell_back_`` (Keras produces the vectors), ``seconds_`` (one-time costs: conversion,
    parity check).

    ``requested`` is what the user asked for (``auto`` or ``litert``), kept for the manifest.
    ``reuse_parity`` reads a passed verdict kept beside the cached export (and keeps one
    after a check), so a warm build never builds Keras. ``tflite_path`` runs that file
    instead of the cached export (tests use it to force a
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
        reuse_parity: bool = False,
    ) -> None:
        self.model = model
        self.reuse_parity = reuse_parity
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
        else:
            if reuse_parity and tflite_path is None:
                self.parity_ = cached_parity(self.cache_file, self._bounds())

    def _bounds(self) -> list[float]:
        return [self.min_mean_cosine, self.min_min_cosine]

    @property
    def concurrency(self) -> int:
        """How many embed calls run side by side (the pipeline runs that many workers)."""
        return 1 if self.fell_back_ else self.replicas

    @property
    def parity(self) -> dict[str, Any] | None:
        return self.parity_

    @property
    def parity_pending(self) -> bool:
        """True until the first batch has been checked against Keras (or LiteRT failed)."""
        return self.parity_ is None and not self.fell_back_

    @property
    def fallback_reason(self) -> str | None:
        return self.error_

    @property
    def seconds(self) -> dict[str, float]:
        return dict(self.seconds_)

    @property
    def float_runtime(self) -> LiteRTRuntime:
        return self

    calibrates = False  # float32: nothing to calibrate

    @property
    def model_file(self) -> Path | None:
        """The `.tflite` once it passed its parity check; None before, and after a
        fall-back (Keras produces the vectors)."""
        passed = self.parity_ is not None and self.parity_["passed"]
        return self.cache_file if passed and not self.fell_back_ else None

    @property
    def bare_model(self) -> TFLiteModel:
        """The interpreters over the export, for timing them bare (`embed.int8_choice`)."""
        return self._model

    def check_parity(self, batch: np.ndarray) -> None:
        """Run the parity check on `batch` now (a no-op once it ran, or on an empty batch)."""
        if self.parity_pending and len(batch):
            self.embed(batch)

    def calibrate(self, *args: Any, **kwargs: Any) -> None:
        return None  # float32: nothing to calibrate

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
        if passed and self.reuse_parity and self.tflite_path is None:
            keep_parity(self.cache_file, self._bounds(), self.parity_)
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
        return run_pixels(self._model, pixels, preprocessing)

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


