"""The fine-tuned Keras head: a dense softmax layer on the bundle's own backbone, trained on
exactly the logistic-regression head's train split, optionally with the top of the backbone
unfrozen at a low learning rate.

Two training paths; the manifest records which one ran:

- ``stored_embeddings``: backbone frozen and no augmentation. The head only ever sees pooled,
  L2-normalised backbone features, and the bundle already stores exactly those, so it trains on
  them and the backbone is not run again (seconds instead of minutes).
- ``images``: augmentation or unfreezing. Images are streamed from the source with tf.data
  (never all in memory) through augmentation and the backbone.

The saved ``heads/finetune.keras`` is always the whole image classifier::

    inputs (preprocessed) -> [augmentation] -> backbone(training=False)
        -> UnitNormalization ("embedding_norm") -> Dropout -> Dense softmax ("breeds")

so one artifact serves both ways of predicting (see :class:`FinetuneHead`), and its
backbone can be lifted out to embed a new bundle (``build-index --backbone-from``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classify.evaluation import evaluate_probabilities, train_breeds, write_report
from classify.finetune_head import DENSE_FILE, HEAD, FinetuneHead
from classify.finetune_head import load_finetune_head as load_finetune_head  # re-exported
from classify.selection import finetune_validation
from embed.atomic import atomic_path
from embed.backbones import file_sha256
from embed.bundle import Bundle
from embed.errors import SourceError
from embed.sources import ImageItem, stratified_hold_out

PATH_EMBEDDINGS = "stored_embeddings"
PATH_IMAGES = "images"

# phase ("head" or "fine_tune"), epoch (1-based), planned epochs, Keras logs of that epoch
EpochCallback = Callable[[str, int, int, dict[str, float]], None]


@dataclass(frozen=True)
class FinetuneParams:
    """Training settings; stored as given in the manifest so a run can be repeated."""

    epochs: int = 30
    learning_rate: float = 1e-2
    unfreeze: int = 0  # weighted layers (conv/dense) at the top of the backbone to train
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-4
    augment: bool = False
    batch_size: int = 32
    validation_fraction: float = 0.15
    patience: int = 4
    dropout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.fine_tune_epochs < 0 or self.unfreeze < 0:
            raise ValueError("epochs must be >= 1, fine_tune_epochs and unfreeze >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("validation_fraction must be in [0, 1)")


@dataclass
class _TrainRows:
    """The labelled train split, as metadata rows, split again into fit and validation."""

    row_ids: np.ndarray
    labels: np.ndarray  # class index per row
    paths: list[str]
    validation: np.ndarray  # bool per row


# ---- data -------------------------------------------------------------------------------------
def _train_rows(bundle: Bundle, classes: np.ndarray, params: FinetuneParams) -> _TrainRows:
    table = bundle.metadata()
    train = table[table["label"].notna() & (table["split"] == "train")]
    labels = train["label"].astype(str).to_list()
    index = {c: i for i, c in enumerate(classes)}
    if params.validation_fraction > 0:
        marks = stratified_hold_out(labels, params.validation_fraction, params.seed)
        validation = np.array([m == "test" for m in marks])
    else:
        validation = np.zeros(len(labels), bool)
    return _TrainRows(
        row_ids=train["row_id"].to_numpy(np.int64),
        labels=np.array([index[label] for label in labels], np.int64),
        paths=train["path"].astype(str).to_list(),
        validation=validation,
    )


def held_out_paths(bundle: Bundle, params: FinetuneParams) -> set[str]:
    """The train photos the tuning leaves out of fitting (its validation slice, from the
    params' fraction and seed): a tuned backbone is judged on these, photos it never saw,
    without touching the test split, which only reports."""
    _, y_train = bundle.split_arrays()["train"]
    rows = _train_rows(bundle, train_breeds(y_train), params)
    return {p for p, held in zip(rows.paths, rows.validation, strict=True) if held}


def _require_image_files(bundle: Bundle, paths: list[str]) -> None:
    """Training through images re-reads the source: say clearly when it cannot."""
    source = bundle.manifest.source
    if source.kind != "folder":
        raise SourceError(
            f"training through images needs a folder source; this bundle's source is"
            f" {source.location} ({source.kind}). Train the head on the stored"
            " embeddings instead (--no-augment --unfreeze 0), or rebuild from an image folder"
        )
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise SourceError(
            f"{len(missing)} of the bundle's train images are gone (e.g. {missing[0]}); training"
            " through images needs the source folder the bundle was built from"
        )


def _image_dataset(
    row_ids: np.ndarray, labels: np.ndarray, paths: list[str], image_size: int,
    preprocessing: str, batch_size: int, shuffle: bool, seed: int,
) -> Any:
    """tf.data of (inputs, class index): decoded in parallel, a few batches in memory."""
    import tensorflow as tf

    from embed.pipeline import ReaderConfig, make_image_dataset

    order = np.random.default_rng(seed).permutation(len(row_ids)) if shuffle else np.arange(
        len(row_ids))
    items = [ImageItem(int(row_ids[i]), paths[i], None, "train") for i in order]
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(row_ids, tf.int64), tf.constant(labels, tf.int64)
        ),
        default_value=-1,
    )
    config = ReaderConfig(image_size, preprocessing, batch_size)
    ds = make_image_dataset(items, config).unbatch()
    ds = ds.filter(lambda row_id, inputs, ok, *rest: ok)
    ds = ds.map(lambda row_id, inputs, *rest: (inputs, table.lookup(row_id)))
    if shuffle:
        ds = ds.shuffle(4 * batch_size, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(2)


# ---- model ------------------------------------------------------------------------------------
def augmentation_value_range(preprocessing: str) -> tuple[float, float]:
    """The range of preprocessed pixels, so RandomContrast clips where the backbone expects."""
    return {"tf": (-1.0, 1.0), "none": (0.0, 255.0), "caffe": (-123.68, 151.061)}[preprocessing]


def make_augmentation(preprocessing: str, seed: int) -> Any:
    """Flip, small rotation, zoom and contrast: Keras layers, active only in training."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
        keras.layers.RandomContrast(
            0.2, value_range=augmentation_value_range(preprocessing), seed=seed + 3
        ),
    ], name="augmentation")


@dataclass
class _Model:
    full: Any  # images -> probabilities
    head: Any  # stored embeddings -> probabilities (shares the head layers with `full`)
    backbone: Any


def build_model(
    backbone: Any, n_classes: int, image_size: int, preprocessing: str, params: FinetuneParams
) -> _Model:
    """The image classifier and a head-only model sharing its normalisation and dense layers."""
    import keras

    keras.utils.set_random_seed(params.seed)
    norm = keras.layers.UnitNormalization(name="embedding_norm")
    dropout = keras.layers.Dropout(params.dropout, seed=params.seed, name="dropout")
    dense = keras.layers.Dense(n_classes, activation="softmax", name="breeds")

    inputs = keras.Input((image_size, image_size, 3), name="inputs")
    x = make_augmentation(preprocessing, params.seed)(inputs) if params.augment else inputs
    backbone.trainable = False
    # training=False keeps BatchNorm in inference mode even once top layers are unfrozen
    x = backbone(x, training=False)
    full = keras.Model(inputs, dense(dropout(norm(x))), name="finetune")

    vectors = keras.Input((int(backbone.output_shape[-1]),), name="embeddings")
    head = keras.Model(vectors, dense(dropout(norm(vectors))), name="finetune_head")
    return _Model(full, head, backbone)


def unfreeze_top(backbone: Any, n: int) -> int:
    """Make the top n weighted layers trainable; BatchNorm stays frozen. Returns how many."""
    import keras

    weighted = [
        layer for layer in backbone.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    chosen = {id(layer) for layer in weighted[-n:]} if n > 0 else set()
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = id(layer) in chosen
    return len(chosen)


def _fit(
    model: Any, train: Any, validation: Any, epochs: int, learning_rate: float,
    params: FinetuneParams, phase: str, on_epoch: EpochCallback | None,
) -> dict[str, list[float]]:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks: list[Any] = []
    if validation is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=params.patience, restore_best_weights=True
        ))
    if on_epoch is not None:
        class _Progress(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                on_epoch(phase, epoch + 1, epochs, {k: float(v) for k, v in (logs or {}).items()})

        callbacks.append(_Progress())
    if isinstance(train, tuple):  # in-memory stored embeddings
        history = model.fit(
            train[0], train[1], validation_data=validation, epochs=epochs,
            batch_size=params.batch_size, shuffle=True, callbacks=callbacks, verbose=0,
        )
    else:
        with warnings.catch_warnings():
            # a filtered tf.data stream has no known length; Keras warns at each epoch's end
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = model.fit(
                train, validation_data=validation, epochs=epochs, callbacks=callbacks,
                shuffle=False, verbose=0,
            )
    return {k: [round(float(v), 5) for v in values] for k, values in history.history.items()}


def _save_keras(model: Any, path: Path) -> None:
    """Atomic `.keras` save (Keras insists on the suffix, so the temporary name keeps it)."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


# ---- training ---------------------------------------------------------------------------------
def train_finetune_head(
    bundle: Bundle,
    params: FinetuneParams | None = None,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train on the bundle's train split, evaluate on its test split, save and record the head."""
    from embed.embedder import bundle_backbone

    params = params or FinetuneParams()
    manifest = bundle.manifest
    recorded = manifest.backbone
    splits = bundle.split_arrays()
    x_train_all, y_train_all = splits["train"]
    x_test, y_test = splits["test"]
    classes = train_breeds(y_train_all)
    rows = _train_rows(bundle, classes, params)
    through_images = params.augment or params.unfreeze > 0
    head_path = PATH_IMAGES if params.augment else PATH_EMBEDDINGS
    if through_images:
        _require_image_files(bundle, rows.paths)

    spec, backbone = bundle_backbone(bundle)
    size, preprocessing = recorded.image_size, spec.preprocessing
    model = build_model(backbone, len(classes), size, preprocessing, params)
    fit_mask, val_mask = ~rows.validation, rows.validation
    has_val = bool(val_mask.any())

    def images(mask: np.ndarray, shuffle: bool) -> Any:
        return _image_dataset(
            rows.row_ids[mask], rows.labels[mask], [p for p, m in zip(rows.paths, mask,
                                                                      strict=True) if m],
            size, preprocessing, params.batch_size, shuffle, params.seed,
        )

    history: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if head_path == PATH_EMBEDDINGS:
        # Bundle.split_arrays and metadata list the train rows in the same (metadata) order
        train = (x_train_all[fit_mask], rows.labels[fit_mask])
        val = (x_train_all[val_mask], rows.labels[val_mask]) if has_val else None
        history["head"] = _fit(model.head, train, val, params.epochs, params.learning_rate,
                               params, "head", on_epoch)
    else:
        history["head"] = _fit(model.full, images(fit_mask, True),
                               images(val_mask, False) if has_val else None, params.epochs,
                               params.learning_rate, params, "head", on_epoch)
    seconds["head"] = time.perf_counter() - start

    unfrozen = 0
    if params.unfreeze > 0 and params.fine_tune_epochs > 0:
        unfrozen = unfreeze_top(backbone, params.unfreeze)
        start = time.perf_counter()
        history["fine_tune"] = _fit(model.full, images(fit_mask, True),
                                    images(val_mask, False) if has_val else None,
                                    params.fine_tune_epochs, params.fine_tune_learning_rate,
                                    params, "fine_tune", on_epoch)
        seconds["fine_tune"] = time.perf_counter() - start
    backbone.trainable = False

    path = bundle.head_path(HEAD)
    _save_keras(model.full, path)
    dense_path = path.with_name(DENSE_FILE)
    with atomic_path(dense_path, suffix=".npz") as tmp:
        kernel, bias = model.full.get_layer("breeds").get_weights()
        np.savez(tmp, kernel=kernel, bias=bias)
    bundle.record_files(path, dense_path)
    predictor = FinetuneHead(model.full, classes, needs_images=bool(unfrozen))
    metrics = _evaluate(bundle, predictor, x_test, y_test, size, preprocessing, params)
    validation = finetune_validation(predictor, x_train_all[val_mask], rows.labels[val_mask],
                                     history, params.validation_fraction, params.seed)
    files = write_report(bundle.report_dir, HEAD, metrics) if len(y_test) else {}
    record = {
        "kind": "finetune",
        "file": str(path.relative_to(bundle.root)),
        "sha256": file_sha256(path),
        "dense_file": str(dense_path.relative_to(bundle.root)),
        "params": asdict(params),
        "training_path": {"head": head_path,
                          "fine_tune": PATH_IMAGES if unfrozen else None},
        "input": "images" if predictor.needs_images else "vectors",
        "backbone_layer": backbone.name,
        "unfrozen_layers": unfrozen,
        "train_images": int(fit_mask.sum()),
        "validation_images": int(val_mask.sum()),
        "breeds": int(len(classes)),
        "classes": [str(c) for c in classes],
        "train_seconds": round(sum(seconds.values()), 3),
        "phase_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "epochs_run": {k: len(h.get("loss", [])) for k, h in history.items()},
        "history": history,
        "validation": validation,
        "metrics": {k: metrics.get(k) for k in ("test_images", "top1", "top5", "top1_ci95",
                                                "top5_ci95")},
        "report": files,
        "fitted_on": bundle.current_rows().model_dump(),
    }
    bundle.update_manifest(heads={**bundle.manifest.heads, HEAD: record})
    return record


def _evaluate(
    bundle: Bundle, predictor: FinetuneHead, x_test: np.ndarray, y_test: np.ndarray,
    size: int, preprocessing: str, params: FinetuneParams,
) -> dict[str, Any]:
    """Test metrics the same way as the logreg head; through images when the backbone moved."""
    if not len(y_test):
        return {"test_images": 0, "top1": None, "top5": None}
    if not predictor.needs_images:
        probabilities = predictor.predict_proba(x_test)
        return evaluate_probabilities(probabilities, predictor.classes, y_test)
    from embed.pipeline import ReaderConfig, iter_image_batches

    table = bundle.metadata()
    test = table[table["label"].notna() & (table["split"] == "test")]
    _require_image_files(bundle, test["path"].astype(str).to_list())
    items = [ImageItem(int(r), str(p), str(lb), "test")
             for r, p, lb in zip(test["row_id"], test["path"], test["label"], strict=True)]
    label_of = {item.row_id: item.label for item in items}
    probabilities, labels = [], []
    config = ReaderConfig(size, preprocessing, params.batch_size)
    for batch in iter_image_batches(items, config):
        if batch.ok.any():
            probabilities.append(predictor.predict_proba_images(batch.inputs[batch.ok]))
            labels.extend(label_of[int(r)] for r in batch.row_ids[batch.ok])
    return evaluate_probabilities(np.concatenate(probabilities), predictor.classes,
                                  np.array(labels))
