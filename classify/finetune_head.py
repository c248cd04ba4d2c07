"""The fine-tuned head at query time: loading `heads/finetune.keras` (or only its dense layer)
and predicting from stored vectors or from preprocessed images.

Training lives in `classify.finetune`; this module needs no TensorFlow for a head on a frozen
backbone, so queries stay light.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from classify.breed_head import BreedHead
from embed.backbones import file_sha256
from embed.bundle import Bundle
from embed.errors import BundleError
from embed.manifest import HeadRecord
from embed.vectors import l2_normalise

HEAD = "finetune"
DENSE_FILE = "finetune_dense.npz"  # the dense layer alone, for queries without TensorFlow


class FinetuneHead(BreedHead):
    """A loaded fine-tuned head.

    `needs_images` False: the backbone was frozen, so the bundle's stored and query vectors are
    exactly the head's inputs; it runs in numpy (normalise, dense, softmax) without the
    backbone. True: the backbone was unfrozen and no longer matches the bundle's vectors, so it
    classifies preprocessed images with the whole fine-tuned model; or build a new bundle with
    `--backbone-from` to get vectors from the fine-tuned backbone.
    """

    name = HEAD

    def __init__(self, model: Any, classes: np.ndarray, needs_images: bool,
                 dense: tuple[np.ndarray, np.ndarray] | None = None,
                 load_model: Callable[[], Any] | None = None) -> None:
        self._model = model  # None when only the dense layer was loaded (no TensorFlow)
        self._load_model = load_model
        self._classes = np.asarray(classes)
        self.needs_images = needs_images
        kernel, bias = dense if dense is not None else model.get_layer("breeds").get_weights()
        self._kernel = np.asarray(kernel, np.float32)
        self._bias = np.asarray(bias, np.float32)

    @property
    def classes(self) -> np.ndarray:
        return self._classes

    @property
    def model(self) -> Any:
        """The whole Keras image classifier, loaded on first use when only the dense layer was."""
        if self._model is None and self._load_model is not None:
            self._model = self._load_model()
        return self._model

    def predict_proba(
        self, vectors: np.ndarray, inputs: np.ndarray | None = None
    ) -> np.ndarray:
        if self.needs_images:
            if inputs is None:
                raise BundleError(
                    "this fine-tuned head was trained with an unfrozen backbone, so the bundle's"
                    " stored vectors no longer fit it; classify images instead, or build a"
                    " bundle with `build-index --backbone-from` this bundle"
                )
            return self.predict_proba_images(inputs)
        from scipy.special import softmax

        x = l2_normalise(np.atleast_2d(vectors))
        return softmax(x @ self._kernel + self._bias, axis=1)

    def predict_proba_images(self, inputs: np.ndarray) -> np.ndarray:
        """Preprocessed images (N, size, size, 3) through the whole fine-tuned model."""
        if len(inputs) == 0:
            return np.zeros((0, len(self._classes)), np.float32)
        return np.asarray(self.model.predict_on_batch(np.asarray(inputs, np.float32)))


def load_finetune_head(bundle: Bundle, record: HeadRecord) -> FinetuneHead:
    """Load `heads/finetune.keras` in Keras' safe mode, after checking it is the recorded file.

    A head on a frozen backbone only needs its dense layer: that is read from the `.npz`
    beside it, without TensorFlow, so queries stay light.
    """
    if isinstance(record, dict):
        record = HeadRecord.model_validate(record)
    if record.get("input") == "vectors" and record.get("dense_file"):
        dense_path = bundle.checked_file(record.dense_file)
        if dense_path is not None:
            with np.load(dense_path) as dense:
                return FinetuneHead(None, np.array(record.classes or []), False,
                                    (dense["kernel"], dense["bias"]),
                                    load_model=lambda: _load_keras_head(bundle, record))
    return FinetuneHead(_load_keras_head(bundle, record), np.array(record.classes or []),
                        record.input == "images")


def _load_keras_head(bundle: Bundle, record: HeadRecord) -> Any:
    import keras

    path = bundle.inside(record.file)
    if not path.is_file():
        raise BundleError(
            f"no fine-tuned head at {path}; train one with `embed-dogs train --bundle"
            f" {bundle.root} --head finetune`"
        )
    if record.get("sha256") and file_sha256(path) != record.get("sha256"):
        raise BundleError(
            f"{path} is not the file the manifest recorded (sha256 differs); refusing to load"
            " it. Retrain it with `embed-dogs train --head finetune`"
        )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, OSError, zip errors, ...
        raise BundleError(
            f"cannot load the fine-tuned head {path} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); retrain it with"
            " `embed-dogs train --head finetune`"
        ) from None
    return model
