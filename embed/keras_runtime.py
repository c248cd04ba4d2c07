"""The reference runtime: the Keras model's own compiled predict step."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

# Rows per Keras call: the traced graph's activations grow with the rows it is given, and the
# TensorFlow allocator keeps its peak, so large batches are run in slices of this many rows.
KERAS_MAX_ROWS = 16


class KerasRuntime:
    """The reference: the Keras model's compiled predict step, in slices of ``max_rows`` rows.

    ``predict_on_batch`` runs a traced graph: the same numbers as calling the model eagerly,
    about twice as fast and with a fraction of the memory (eager calls keep every activation).
    """

    name = "keras"
    concurrency = 1  # TensorFlow already spreads one call over every core

    def __init__(self, model: Any, max_rows: int = KERAS_MAX_ROWS) -> None:
        self.model = model
        self.max_rows = max_rows
        self._lock = threading.Lock()  # callers from several threads take turns

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

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}
