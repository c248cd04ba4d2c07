"""`embed-dogs audit`: find the photos that hurt a dataset, store the findings in the bundle,
and write them as the CSV (or JSON lines) that `remove --from-file` takes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from embed.errors import EmbedDogsError
from ui.cli_common import BundleOpt, clear_errors, console, err, state


def parse_kinds(kinds: str | None) -> tuple[str, ...]:
    from ui.audit_report import KINDS

    if not kinds:
        return KINDS
    asked = tuple(dict.fromkeys(k.strip() for k in kinds.split(",") if k.strip()))
    unknown = [k for k in asked if k not in KINDS]
    if unknown or not asked:
        raise EmbedDogsError(f"unknown kind {', '.join(unknown) or '(none)'}; --kinds takes a"
                             f" comma-separated list of {', '.join(KINDS)}")
    return asked


def audit(
    bundle: BundleOpt,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Write the findings to this CSV file, or - for stdout (default:"
        " store them in the bundle and show the first ones).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Write JSON lines (one object per finding) instead of CSV.")] = False,
    kinds: Annotated[str | None, typer.Option(
        "--kinds", help="Comma-separated kinds to look for (default: all): exact_duplicate,"
        " split_leak, near_duplicate, not_a_dog, label, outlier, low_quality.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
) -> None:
    """Audit a bundle's photos: duplicates, near-copies across the split, wrong breeds,
    non-dogs, outliers and poor photos, most certain first. The findings are stored in the
    bundle (the app shows them; add, remove and train refresh them)."""
    to_stdout = out == "-"
    with clear_errors():
        asked = parse_kinds(kinds)
        if out and not to_stdout and Path(out).exists() and not overwrite:
            raise EmbedDogsError(f"{out} exists; pass --overwrite to replace it")
        from ui.audit_store import planned_stages, run_audit

        stages = planned_stages(asked)
        timings: dict[str, float] = {}
        with Progress(TextColumn("[bold]audit[/] {task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      disable=state["quiet"]) as bar:
            task = bar.add_task(stages[0], total=len(stages))

            def after(stage: str) -> None:
                done = stages.index(stage) + 1 if stage in stages else 0
                bar.update(task, completed=done,
                           description=stages[done] if done < len(stages) else "storing")

            frame, section = run_audit(bundle, asked, timings=timings, after_stage=after)
        if out:
            target = sys.stdout if to_stdout else Path(out)
            if as_json:
                text = frame.to_json(orient="records", lines=True)
                (target.write(text) if to_stdout else target.write_text(text))
            else:
                frame.to_csv(target, index=False)
    summary(section, len(frame), None if to_stdout or not out else out)
    if not out:
        show_first(frame)


def summary(section: object, total: int, written: str | None) -> None:
    """Counts per kind, the threshold and the seconds, on stderr."""
    counts = ", ".join(f"{k} {n}" for k, n in section.counts.items())
    err.print(f"{total} findings: {counts}", highlight=False, soft_wrap=True)
    t = section.threshold
    if t is not None:
        err.print(f"near-duplicate threshold {t.value:.3f} (calibrated on {t.copies} edited"
                  f" copies of this bundle's photos: {t.copy_recall:.0%} of copies above it,"
                  f" {t.neighbour_rate:.1%} of distinct same-breed neighbours)",
                  highlight=False, soft_wrap=True)
    if section.test_with_train_copy is not None:
        err.print(f"test photos with a copy in train: {section.test_with_train_copy}",
                  highlight=False)
    err.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in section.seconds.items()),
              highlight=False, soft_wrap=True)
    err.print("stored in the bundle" + (f"; wrote {written}" if written else ""),
              highlight=False)


def show_first(frame: object, rows: int = 15) -> None:
    table = Table(title=f"the {min(rows, len(frame))} surest findings (--out FILE.csv for all)")
    for col in ("issue", "path", "label", "split", "score", "suggested_label", "related_path"):
        table.add_column(col)
    for _, r in frame.head(rows).iterrows():
        table.add_row(r["issue"], r["path"], str(r["label"]), r["split"], f"{r['score']:.3f}",
                      str(r["suggested_label"]), str(r["related_path"]))
    console.print(table)
