"""Choosing the head that serves, honestly: on a validation slice of the train split.

The test split is what the report shows, so it must not also pick the winner (picking the
best of several heads on test makes the winner's test score optimistic). Both heads score
the same seeded, stratified slice of the train split: the fine-tuned head holds it out for
early stopping, the logistic-regression head is fitted once more without it just to score
it (the head that serves is then fitted on the whole train split).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embed.sources import stratified_hold_out

VALIDATION_FRACTION = 0.15  # the same slice as FinetuneParams' defaults
VALIDATION_SEED = 0
BY_VALIDATION = "validation top1"
BY_TEST = "test top1 (a head has no validation score: retrain it to choose on validation)"


def validation_mask(labels: np.ndarray, fraction: float = VALIDATION_FRACTION,
                    seed: int = VALIDATION_SEED) -> np.ndarray:
    """True for the train rows of the validation slice (per breed, seeded, at least one row
    of each breed stays in the fitting part)."""
    if fraction <= 0 or len(labels) == 0:
        return np.zeros(len(labels), bool)
    marks = stratified_hold_out([str(label) for label in labels], fraction, seed)
    return np.array([m == "test" for m in marks], bool)


def validation_record(top1: float | None, images: int, fraction: float, seed: int,
                      how: str) -> dict[str, Any]:
    """What a head's manifest record says about its validation score."""
    return {"top1": None if top1 is None else round(float(top1), 6), "images": int(images),
            "fraction": fraction, "seed": seed, "how": how}


def logreg_validation(x_train: np.ndarray, y_train: np.ndarray, c: float) -> dict[str, Any]:
    """Fit logistic regression without the validation slice and score it on that slice."""
    from classify.logreg import fit_logreg

    mask = validation_mask(y_train)
    fit_part, val_part = ~mask, mask
    if not val_part.any() or len(np.unique(y_train[fit_part])) < 2:
        return validation_record(None, 0, VALIDATION_FRACTION, VALIDATION_SEED,
                                 "too few train images for a validation slice")
    model = fit_logreg(x_train[fit_part], y_train[fit_part], c)
    top1 = float(np.mean(model.predict(x_train[val_part]) == y_train[val_part]))
    return validation_record(top1, int(val_part.sum()), VALIDATION_FRACTION, VALIDATION_SEED,
                             "fitted without the slice, scored on it")


def history_validation_top1(history: dict[str, dict[str, list[float]]]) -> float | None:
    """Validation accuracy of the epoch Keras kept (the lowest validation loss) in the last
    training phase."""
    for phase in ("fine_tune", "head"):
        logs = history.get(phase) or {}
        losses, accuracies = logs.get("val_loss"), logs.get("val_accuracy")
        if losses and accuracies:
            return float(accuracies[int(np.argmin(losses))])
    return None


def choose_best_head(heads: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    """(best head, what it was chosen by): validation top-1 when every head has one, else
    test top-1 (old records), which the comparison then says."""
    def validation(h: str) -> float | None:
        return (heads[h].get("validation") or {}).get("top1")

    def test(h: str) -> float | None:
        return (heads[h].get("metrics") or {}).get("top1")

    if not heads:
        return None, BY_VALIDATION
    if all(validation(h) is not None for h in heads):
        return max(heads, key=lambda h: validation(h) or 0.0), BY_VALIDATION
    scored = [h for h in heads if test(h) is not None]
    if not scored:
        return next(iter(heads)), BY_TEST
    return max(scored, key=lambda h: test(h) or 0.0), BY_TEST


def finetune_validation(predictor: Any, x_val: np.ndarray, y_val: np.ndarray,
                        history: dict[str, dict[str, list[float]]], fraction: float,
                        seed: int) -> dict[str, Any]:
    """The fine-tuned head's top-1 on its validation slice (`y_val`: class indices): on the
    stored vectors when it reads them, else the accuracy Keras logged for the kept epoch."""
    if not len(y_val):
        return validation_record(None, 0, fraction, seed, "no validation slice")
    if not predictor.needs_images:
        predicted = np.argmax(predictor.predict_proba(x_val), axis=1)
        return validation_record(float(np.mean(predicted == y_val)), len(y_val), fraction,
                                 seed, "held out for early stopping, scored on it")
    return validation_record(history_validation_top1(history), len(y_val), fraction, seed,
                             "Keras' validation accuracy of the kept epoch")
