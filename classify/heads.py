"""A bundle's breed heads: fitting and recording the logistic-regression head, and loading
whichever head a query asks for behind the one `BreedHead` interface."""

from __future__ import annotations

import time
from typing import Any

from classify.breed_head import BreedHead
from classify.evaluation import evaluate_probabilities, write_report
from classify.finetune_head import load_finetune_head
from classify.logreg import (
    DEFAULT_C,
    SERVING_FILE,
    LogregHead,
    fit_logreg,
    load_head,
    load_serving_arrays,
    save_head,
    save_serving_arrays,
)
from classify.selection import choose_best_head, logreg_validation
from embed.bundle import Bundle
from embed.errors import BundleError


def train_logreg_head(bundle: Bundle, c: float = DEFAULT_C) -> dict[str, Any]:
    """Fit on the train split, evaluate on test, save the head and report; update the manifest."""
    splits = bundle.split_arrays()
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    validation = logreg_validation(x_train, y_train, c)  # chooses the serving head, not test
    start = time.perf_counter()
    pipeline = fit_logreg(x_train, y_train, c)
    seconds = time.perf_counter() - start
    save_head(pipeline, bundle.head_path("logreg"))
    serving = bundle.head_path("logreg").with_name(SERVING_FILE)
    if save_serving_arrays(pipeline, serving, x_train):
        bundle.record_files(bundle.head_path("logreg"), serving)
    else:  # never expected; queries then load the pipeline itself
        serving.unlink(missing_ok=True)
        bundle.record_files(bundle.head_path("logreg"))
    classes = pipeline.classes_
    metrics = (
        evaluate_probabilities(pipeline.predict_proba(x_test), classes, y_test)
        if len(x_test) else {"test_images": 0, "top1": None, "top5": None}
    )
    files = write_report(bundle.report_dir, "logreg", metrics) if len(x_test) else {}
    record = {
        "kind": "logreg",
        "file": str(bundle.head_path("logreg").relative_to(bundle.root)),
        **({"serving_file": bundle.relative(serving)} if serving.is_file() else {}),
        "params": {"C": c, "random_state": 0},
        "train_images": int(len(x_train)),
        "breeds": int(len(classes)),
        "train_seconds": round(seconds, 3),
        "validation": validation,
        "metrics": {k: metrics.get(k) for k in ("test_images", "top1", "top5", "top1_ci95",
                                                "top5_ci95")},
        "report": files,
    }
    heads = bundle.manifest.get("heads") or {}
    heads["logreg"] = record
    bundle.update_manifest(heads=heads)
    return record


def load_predictor(
    bundle: Bundle, head: str | None = None, accepts_images: bool = False
) -> BreedHead | None:
    """The requested head, or the best one on validation; None when the bundle has no head.

    A fine-tuned head whose backbone was unfrozen needs images, not stored vectors; the
    default choice skips such heads unless the caller can feed images (`accepts_images`).
    """
    heads = bundle.manifest.get("heads") or {}
    if head is None:
        usable = [h for h in heads
                  if accepts_images or heads[h].get("input", "vectors") == "vectors"]
        if not usable:
            return None
        head, _ = choose_best_head({h: heads[h] for h in usable})
    if head not in heads:
        raise BundleError(
            f"bundle {bundle.root} has no {head!r} head (it has: {', '.join(heads) or 'none'})"
        )
    if head == "logreg":
        return load_logreg(bundle, heads[head])
    if head == "finetune":
        return load_finetune_head(bundle, heads[head])
    raise BundleError(f"head {head!r} cannot be loaded by this version of embed-dogs")


def load_logreg(bundle: Bundle, record: dict[str, Any]) -> LogregHead:
    """The serving arrays when the bundle has them (checked against their recorded sha256),
    else the scikit-learn pipeline from its skops file."""
    relative = record.get("serving_file")
    if relative:
        path = bundle.checked_file(relative)
        if path is None:
            raise BundleError(f"{bundle.inside(relative)} is missing or not the file that was"
                              " written; refit the head with `embed-dogs train --head logreg`")
        try:
            return LogregHead(arrays=load_serving_arrays(path))
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{path} cannot be read ({exc}); refit the head with"
                              " `embed-dogs train --head logreg`") from None
    return LogregHead(load_head(bundle.head_path("logreg")))
