"""`evaluate --not-dogs/--unknown-breeds`: how the open-set gate does on photo sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed.atomic import atomic_path
from embed.errors import BundleError, BundleNotWritableError, SourceError
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.sources import ImageItem, list_images
from embed.staging import change_bundle
from ui.queries import QueryContext, gate_verdicts, open_for_queries


@dataclass
class GateEvaluation:
    """`evaluate --not-dogs/--unknown-breeds`: one row per photo set, and the files written."""

    rows: list[dict[str, Any]]
    files: dict[str, str]
    head: str | None
    not_saved: str = ""  # why the report files could not be written (a read-only bundle)


def _score_folder(ctx: QueryContext, folder: Path, batch_size: int) -> Any:
    """Photos of a folder scored as queries are: kNN over the index, the head's top
    probability, the verdict."""
    import numpy as np

    from classify.gate import Scored

    listing = list_images(folder)
    if not listing.paths:
        raise SourceError(f"no images found under {folder}")
    items = [ImageItem(i, str(p), None, "none") for i, p in enumerate(listing.paths)]
    knn: list[float] = []
    top: list[float] = []
    verdicts: list[str] = []
    sure: list[bool] = []
    for step in ctx.embedder.embedded_batches(items, batch_size):
        if not len(step.vectors):
            continue
        hits = ctx.index.search(step.vectors, ctx.gate.k if ctx.gate else 1)
        vector_head = ctx.predictor is not None and not ctx.predictor.needs_images
        ranked = ctx.predictor.predict_top_k(step.vectors, 1) if vector_head else []
        answers, s = gate_verdicts(ctx, step.vectors, ranked, hits)
        verdicts += [a.verdict if a else "" for a in answers]
        sure += [bool(a and a.verdict == "dog" and a.confident) for a in answers]
        knn += [float("nan") if x is None else x for x in s]
        top += [r[0][1] for r in ranked]
    return Scored(np.array(knn), np.array(top) if top else None, verdicts, sure)


def evaluate_gate(
    bundle_dir: str | Path, not_dogs: list[Path], unknown_breeds: list[Path],
    batch_size: int = DEFAULT_BATCH_SIZE, runtime: str | None = None,
) -> GateEvaluation:
    """Score folders of photos that are no dogs and dogs of breeds the bundle does not know
    against its held-out test dogs: AUROC and false-positive rate at 95 % dog recall of each
    signal, and the gate's verdict shares. Writes report/gate_dev.{json,csv}, or says why
    not (a read-only bundle still gets its figures). The folders only measure the gate; its
    thresholds come from the bundle's own rows."""
    from classify.gate import Scored, dev_report, held_out_scores, top_probability

    ctx = open_for_queries(bundle_dir, runtime=runtime)
    if ctx.gate is None:
        raise BundleError(
            f"bundle {bundle_dir} has no calibrated open-set gate (it needs labelled train and"
            " test rows); rebuild it, or run `embed-dogs train --head logreg` to calibrate one"
        )
    held = held_out_scores(ctx.bundle, ctx.gate.k)
    if held is None:
        raise BundleError(f"bundle {bundle_dir} has no labelled test split to measure on")
    vector_head = ctx.predictor is not None and not ctx.predictor.needs_images
    dog_top = (top_probability(ctx.predictor.predict_proba(held.vectors))
               if vector_head else None)
    head = ctx.predictor.name if ctx.predictor else None
    answers = ctx.gate.verdicts(held.vectors, held.knn)
    dogs = Scored(held.knn, dog_top, [a.verdict for a in answers],
                  [a.verdict == "dog" for a in answers])
    sets: dict[str, tuple[str, Scored]] = {}
    for kind, folders in (("not_a_dog", not_dogs), ("unknown_breed", unknown_breeds)):
        for folder in folders:
            folder = Path(folder).expanduser()
            if not folder.is_dir():
                raise SourceError(f"folder {folder} does not exist")
            name = f"{folder.name} ({folder})"
            name += f" as {kind}" if name in sets else ""
            sets[name] = (kind, _score_folder(ctx, folder, batch_size))
    rows = dev_report(dogs, sets)
    try:
        shown = _save_report(ctx, bundle_dir, rows, head)
    except BundleNotWritableError as exc:  # the figures are still worth showing
        return GateEvaluation(rows, {}, head, not_saved=str(exc))
    return GateEvaluation(rows, shown, head)


def _save_report(ctx: QueryContext, bundle_dir: str | Path, rows: list[dict[str, Any]],
                 head: str | None) -> dict[str, str]:
    """report/gate_dev.{json,csv}, written like every other change: through a transaction."""
    import json

    import pandas as pd

    from embed.atomic import atomic_write_text

    gate = ctx.bundle.manifest.gate
    assert gate is not None  # evaluate_gate checked it: ctx.gate exists
    commit = ctx.bundle.manifest.commit
    with change_bundle(ctx.bundle.root, "evaluate") as staged:
        if staged.manifest.commit != commit:
            raise BundleError(f"{bundle_dir} changed while its gate was being evaluated; run"
                              " `embed-dogs evaluate` again")
        report = staged.report_dir
        report.mkdir(parents=True, exist_ok=True)
        files = {"json": report / "gate_dev.json", "csv": report / "gate_dev.csv"}
        atomic_write_text(files["json"], json.dumps({
            "head": head, "sets": rows, "space": ctx.space,
            "thresholds": {"k": gate.k, **gate.thresholds},
            "note": "thresholds were calibrated on the train split only; the test split and"
                    " these photo sets only measure the gate. Test dogs are scored against"
                    " all other rows (themselves left out).",
        }, indent=2, default=float))
        with atomic_path(files["csv"]) as tmp:
            pd.DataFrame(rows).to_csv(tmp, index=False)
        shown = {k: str(v.relative_to(staged.root)) for k, v in files.items()}
    return shown
