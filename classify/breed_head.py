"""The one interface every breed head implements, so callers never ask which kind they hold."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from classify.evaluation import top_k_from_probabilities


class BreedHead(Protocol):
    """A loaded breed classifier over one bundle's embeddings.

    `needs_images`: False when stored or query vectors are the head's whole input; True when
    it classifies preprocessed images itself (a fine-tuned head whose backbone was unfrozen),
    so callers must pass `inputs`.
    """

    name: str
    needs_images: bool

    @property
    def classes(self) -> np.ndarray:
        """Breed names, in the order of `predict_proba`'s columns."""
        ...

    def predict_proba(
        self, vectors: np.ndarray, inputs: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, breeds) probabilities for n embeddings (and their preprocessed images)."""
        ...

    def predict_top_k(
        self, vectors: np.ndarray, k: int = 5, inputs: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """Per row, the k most likely breeds with their probabilities, best first."""
        return top_k_from_probabilities(self.predict_proba(vectors, inputs), self.classes, k)
