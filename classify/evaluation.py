"""Evaluation of a head on the test split: top-1/top-5, per breed, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from classify.intervals import wilson_interval
from embed.atomic import atomic_path, atomic_write_text
from embed.background import Background
from embed.errors import BundleError

MOST_CONFUSED = 10


def train_breeds(labels: np.ndarray) -> np.ndarray:
    """The sorted breeds of the train split; a classifier needs at least two."""
    breeds = np.unique(labels)
    if len(breeds) < 2:
        raise BundleError(
            f"a breed classifier needs at least two breeds in the train split, found {len(breeds)}"
        )
    return breeds


def stored_metrics(bundle_root: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """A head's full test metrics: its report's metrics file, else the manifest's summary."""
    import json

    metrics_file = (record.get("report") or {}).get("metrics")
    root = Path(bundle_root).resolve()
    path = (root / metrics_file).resolve() if metrics_file else None
    if path is not None and path.is_relative_to(root) and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    return dict(record.get("metrics") or {})


def top_k_from_probabilities(
    probabilities: np.ndarray, classes: np.ndarray, k: int
) -> list[list[tuple[str, float]]]:
    """Per row, the k most likely classes with their probabilities, best first."""
    k = min(k, len(classes))
    order = np.argsort(-probabilities, axis=1)[:, :k]
    return [
        [(str(classes[j]), float(probabilities[i, j])) for j in row]
        for i, row in enumerate(order)
    ]


def evaluate_probabilities(
    probabilities: np.ndarray, classes: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Metrics of predicted probabilities (columns = classes) against true labels."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = np.asarray(classes)
    labels = np.asarray(labels)
    class_set = set(classes.tolist())
    known = np.array([label in class_set for label in labels.tolist()], dtype=bool)
    predicted = classes[np.argmax(probabilities, axis=1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    matrix = confusion_matrix(labels, predicted, labels=classes)
    pairs = [
        {"true": str(classes[i]), "predicted": str(classes[j]), "count": int(matrix[i, j])}
        for i, j in zip(*np.nonzero(matrix), strict=True)
        if i != j
    ]
    pairs.sort(key=lambda p: (-p["count"], p["true"], p["predicted"]))
    n = len(labels)
    hits = {k: _top_k_hits(probabilities, classes, labels, known, k) for k in (1, 5)}
    return {
        "test_images": int(n),
        "top1": hits[1] / n if n else 0.0,
        "top5": hits[5] / n if n else 0.0,
        # 95 % Wilson intervals, as lists (what JSON gives back)
        **{f"top{k}_ci95": list(wilson_interval(hits[k], n) or []) or None for k in (1, 5)},
        "unseen_breeds_in_test": int((~known).sum()),
        "per_breed": [
            {"breed": str(c), "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        ],
        "most_confused": pairs[:MOST_CONFUSED],
        "classes": [str(c) for c in classes],
        "confusion_matrix": matrix.tolist(),
    }


def _top_k_hits(probabilities: np.ndarray, classes: np.ndarray, labels: np.ndarray,
                known: np.ndarray, k: int) -> int:
    """Test rows whose label is among their k most likely classes; unseen labels are misses."""
    from sklearn.metrics import top_k_accuracy_score

    n_known = int(known.sum())
    if n_known == 0:
        return 0
    if k >= len(classes):  # every class is in the top k (sklearn would warn it is meaningless)
        return n_known
    order = np.argsort(classes)  # sklearn wants the labels sorted, the columns in that order
    scores = probabilities[known][:, order]
    if len(classes) == 2:  # the binary case takes the second class's score only
        scores = scores[:, 1]
    return int(top_k_accuracy_score(labels[known], scores, k=k, labels=classes[order],
                                    normalize=False))


def write_report(report_dir: str | Path, head: str, metrics: dict[str, Any],
                 later: Background | None = None) -> dict[str, str]:
    """metrics JSON, per-breed CSV and a confusion-matrix PNG; returns the files written.

    With `later`, the PNG (matplotlib's import and drawing, ~0.4 s of a warm 40-photo
    build) is drawn in its thread beside the caller's next steps; it is on disk when the
    caller's `Background` block ends."""
    import json

    import pandas as pd

    report_dir = Path(report_dir)
    files = {
        "metrics": report_dir / f"{head}_metrics.json",
        "per_breed": report_dir / f"{head}_per_breed.csv",
        "confusion": report_dir / f"{head}_confusion.png",
    }
    atomic_write_text(files["metrics"], json.dumps(metrics, indent=2))
    with atomic_path(files["per_breed"]) as tmp:
        pd.DataFrame(metrics["per_breed"]).to_csv(tmp, index=False)
    draw = (later.submit if later is not None else _call)
    draw(write_confusion, metrics, files["confusion"], f"{head}: top-1 {metrics['top1']:.1%}")
    return {k: str(v.relative_to(report_dir.parent)) for k, v in files.items()}


def _call(fn: Any, *args: Any) -> None:
    fn(*args)


def write_confusion(metrics: dict[str, Any], path: Path, title: str) -> None:
    with atomic_path(path) as tmp:
        plot_confusion(metrics, tmp, title=title)


def plot_confusion(metrics: dict[str, Any], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    classes = metrics["classes"]
    size = max(6.0, 0.35 * len(classes) + 3)
    fig, ax = plt.subplots(figsize=(size, size))
    display = ConfusionMatrixDisplay(np.array(metrics["confusion_matrix"]), display_labels=classes)
    display.plot(ax=ax, xticks_rotation=90, colorbar=False, include_values=len(classes) <= 30)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
