"""The reference runtime: the Keras model's own compiled predict step."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

# Rows per Keras call: the traced graph's activations grow with the rows it is given, and the
# TensorFlow allocator keeps its peak, so large batches are run in slices of this many rows.
KERAS_MAX_ROWS = 16


class KerasRuntime:
    """The reference: the Keras model's compiled predict step, in slices of ``max_rows`` rows.

    ``predict_on_batch`` runs a traced graph: the same numbers as calling the model eagerly,
    about twice as fast and with a fraction of the memory (eager calls keep every activation).
    Being the reference, it has nothing to check, calibrate or fall back from, and no model
    file: a bundle built with it serves by rebuilding the backbone from its weights.
    """

    name = "keras"
    concurrency = 1  # TensorFlow already spreads one call over every core
    parity: dict[str, Any] | None = None  # it is what others are checked against
    parity_pending = False
    fallback_reason: str | None = None
    calibrates = False
    model_file: Path | None = None

    def __init__(self, model: Any, max_rows: int = KERAS_MAX_ROWS,
                 requested: str = "keras") -> None:
        self.model = model
        self.max_rows = max_rows
        self.requested = requested
        self._lock = threading.Lock()  # callers from several threads take turns

    @property
    def seconds(self) -> dict[str, float]:
        return {}

    @property
    def float_runtime(self) -> KerasRuntime:
        return self

    def embed(self, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.model.output_shape[-1]), np.float32)
        batch = np.asarray(batch, dtype=np.float32)
        step = self.max_rows or len(batch)
        with self._lock:
            parts = [
                np.asarray(self.model.predict_on_batch(batch[i : i + step]), dtype=np.float32)
                for i in range(0, len(batch), step)
            ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        """uint8 pixels, preprocessed into a float copy (Keras takes no other input)."""
        from embed.backbones import preprocess_pixels

        return self.embed(preprocess_pixels(np.asarray(pixels, np.uint8), preprocessing))

    def check_parity(self, batch: np.ndarray) -> None:
        return None

    def calibrate(self, *args: Any, **kwargs: Any) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
