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
from embed.background import Background
from embed.bundle import Bundle
from embed.errors import BundleError, first_line


def train_logreg_head(bundle: Bundle, c: float = DEFAULT_C, later: Background | None = None
                      ) -> dict[str, Any]:
    """Fit on the train split, evaluate on test, save the head and report; update the manifest.
    With `later`, the report's PNG is drawn in its thread (see `write_report`)."""
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
    files = write_report(bundle.report_dir, "logreg", metrics, later) if len(x_test) else {}
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
        "fitted_on": bundle.current_rows().model_dump(),
    }
    bundle.update_manifest(heads={**bundle.manifest.heads, "logreg": record})
    return record


def load_predictor(
    bundle: Bundle, head: str | None = None, accepts_images: bool = False
) -> BreedHead | None:
    """The requested head, or the best one on validation; None when the bundle has no head.

    A fine-tuned head whose backbone was unfrozen needs images, not stored vectors; the
    default choice skips such heads unless the caller can feed images (`accepts_images`).
    """
    manifest = bundle.manifest
    heads = manifest.heads
    if head is None:  # a stale head is never served by default: it answers for old rows
        usable = [h for h in heads if not manifest.head_is_stale(h)
                  and (accepts_images or heads[h].input == "vectors")]
        if not usable:
            return None
        head, _ = choose_best_head({h: heads[h] for h in usable})
    if head not in heads:
        raise BundleError(
            f"bundle {bundle.root} has no {head!r} head (it has: {', '.join(heads) or 'none'})"
        )
    if manifest.head_is_stale(head):
        raise BundleError(stale_message(bundle, head))
    if head == "logreg":
        return load_logreg(bundle, heads[head])
    if head == "finetune":
        return load_finetune_head(bundle, heads[head])
    raise BundleError(f"head {head!r} cannot be loaded by this version of embed-dogs")


def stale_message(bundle: Bundle, head: str) -> str:
    """Why a head is not served, and the command that refreshes it."""
    fitted = bundle.manifest.heads[head].fitted_on
    now = bundle.manifest.rows
    return (f"the {head} head of {bundle.root} is stale: it was fitted on"
            f" {fitted.rows if fitted else '?'} rows, and the bundle's rows have changed since"
            f" (now {now.rows if now else '?'}); refresh it with `embed-dogs train --head"
            f" {head} --bundle {bundle.root}`")


def load_logreg(bundle: Bundle, record: Any) -> LogregHead:
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


def head_problems(bundle: Bundle) -> list[str]:
    """`verify`: every head loads (types checked, files checksummed) and answers one vector
    with a probability per breed; one line per problem, never an exception."""
    import numpy as np

    problems = []
    dim = bundle.manifest.backbone.dim
    for name in bundle.manifest.heads:
        if bundle.manifest.head_is_stale(name):
            problems.append(f"head {name} is stale (not served): refresh it with `embed-dogs"
                            f" train --head {name} --bundle {bundle.root}`")
            continue
        try:
            head = load_predictor(bundle, name, accepts_images=True)
            if head is not None and not head.needs_images:
                probs = head.predict_proba(np.full((1, dim), dim ** -0.5, np.float32))
                if probs.shape[0] != 1 or not np.isclose(float(probs.sum()), 1.0, atol=1e-3):
                    problems.append(f"head {name} answers with probabilities of shape"
                                    f" {probs.shape}")
        except Exception as exc:  # any failure to load is a finding, said in one line
            problems.append(f"head {name} does not load: {first_line(exc, 300)}")
    return problems

