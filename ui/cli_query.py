"""The commands that ask a bundle: `classify`, `search` and `evaluate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from embed.errors import EmbedDogsError
from ui.cli_common import (
    BundleOpt,
    HeadOpt,
    RuntimeOpt,
    SpaceOpt,
    clear_errors,
    console,
    err,
    plain,
    progress_bar,
    state,
)
from ui.cli_output import (
    head_title,
    print_gate_evaluation,
    print_honesty,
    print_verdict,
    print_verdict_counts,
    search_json,
)


def classify(
    inputs: Annotated[list[str], typer.Argument(
        help="Photos, folders (searched recursively), text files listing one path a line,"
        " or - to read such a list from stdin.", show_default=False)],
    bundle: BundleOpt,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", metavar="FILE", help="File to write (default, or -: standard output,"
        " with the summary on stderr).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Write JSON lines (one object per image) instead of CSV.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing --out file.")] = False,
    top_k: Annotated[int, typer.Option(min=1, help="Breeds per image.")] = 5,
    head: HeadOpt = None,
    runtime: RuntimeOpt = None,
    space: SpaceOpt = None,
) -> None:
    """Predict the breed of every photo and its nearest look-alike, as CSV (or JSON lines)."""
    to_stdout = out in (None, "-")
    with clear_errors():
        if not to_stdout:
            from ui.queries import check_out_file

            check_out_file(Path(out), overwrite)
    with clear_errors(), progress_bar("classifying", hidden=to_stdout) as start:
        from ui.workflows import classify_images, open_for_queries, resolve_inputs

        photos = resolve_inputs(inputs, stdin=sys.stdin)
        ctx = open_for_queries(bundle, plain(head), plain(runtime), accepts_images=True,
                               space=plain(space))
        target = sys.stdout if to_stdout else Path(out)
        summary = classify_images(ctx, photos, target, top_k, on_start=start,
                                  fmt="jsonl" if as_json else "csv")
    report = err if to_stdout else console
    if state["quiet"]:
        return
    report.print(
        f"{summary['classified']} of {summary['images']} images classified"
        + (f", {summary['failed']} could not be read (see the error column)"
           if summary["failed"] else "")
        + f"; head: {summary['head'] or 'none'}; look-alikes: {ctx.space} space;"
        f" wrote {summary['out']}", highlight=False, soft_wrap=True)
    if ctx.space_note:
        report.print(ctx.space_note, highlight=False, soft_wrap=True)
    print_verdict_counts(summary.get("verdicts"), report)


def search(
    image: Annotated[Path, typer.Argument(help="A photo to find look-alikes of.")],
    bundle: BundleOpt,
    k: Annotated[int, typer.Option("-k", min=1, help="How many look-alikes.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = (
        False
    ),
    runtime: RuntimeOpt = None,
    head: HeadOpt = None,
    space: SpaceOpt = None,
) -> None:
    """The k dataset images most similar to IMAGE, with similarity and breed."""
    with clear_errors():
        from embed.images import ImageDecodeError
        from embed.inputs import refuse_url
        from ui.workflows import look_up_image, open_for_queries

        refuse_url(image)  # `search https://...`: say that URLs are not fetched
        if image.is_dir():
            raise EmbedDogsError(f"{image} is a folder; search takes one photo (classify takes"
                                 " folders)")
        if not image.is_file():
            raise EmbedDogsError(f"image {image} does not exist")
        ctx = open_for_queries(bundle, plain(head), plain(runtime), accepts_images=True,
                               space=plain(space))
        try:
            answer = look_up_image(ctx, image, k, top_breeds=3)
        except ImageDecodeError as exc:
            raise EmbedDogsError(f"cannot use {image}: {exc}") from None
    hits = answer.lookalikes
    if as_json:
        print(json.dumps({**search_json(answer), "space": ctx.space,
                          "space_note": ctx.space_note}, indent=2))
        return
    print_verdict(answer, ctx)
    if ctx.space_note:
        console.print(ctx.space_note, highlight=False, soft_wrap=True)
    from ui.facts import display_path

    root = ctx.bundle.source_root
    console.print(f"look-alikes of {image} ({ctx.space} space)"
                  + (f"; paths under {root}" if root is not None else ""),
                  highlight=False, soft_wrap=True)
    table = Table()
    for col in ("rank", "score", "breed"):
        table.add_column(col)
    table.add_column("path")
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), f"{hit['score']:.4f}", str(hit["label"] or "-"),
                      display_path(hit["path"], root))
    console.print(table)


def evaluate(
    bundle: BundleOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    not_dogs: Annotated[list[Path] | None, typer.Option(
        "--not-dogs", help="A folder of photos without dogs, to measure the open-set gate"
        " (repeatable).")] = None,
    unknown_breeds: Annotated[list[Path] | None, typer.Option(
        "--unknown-breeds", help="A folder of dogs of breeds the bundle does not know, to"
        " measure the gate (repeatable).")] = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Print the stored test metrics of the bundle's breed heads (with 95% intervals), the
    open-set gate's calibration, and with --not-dogs/--unknown-breeds how the gate does on
    those photos (also written to report/gate_dev.json and .csv)."""
    with clear_errors():
        from embed.bundle import Bundle

        b = Bundle.open(bundle)
        heads = b.manifest.heads
        if not heads:
            raise EmbedDogsError(f"bundle {bundle} has no breed head (was its source labelled?)")
        from classify.evaluation import stored_metrics

        gate_dev = None
        if not_dogs or unknown_breeds:
            from ui.workflows import evaluate_gate

            gate_dev = evaluate_gate(b.root, list(not_dogs or []), list(unknown_breeds or []),
                                     runtime=plain(runtime))
        if as_json:
            print(json.dumps({
                "heads": {name: stored_metrics(b.root, record) for name, record in heads.items()},
                "gate": b.manifest.gate.model_dump() if b.manifest.gate else None,
                "stale": b.manifest.stale(),
                "gate_dev": gate_dev.rows if gate_dev is not None else None,
                **({"gate_dev_not_saved": gate_dev.not_saved}
                   if gate_dev is not None and gate_dev.not_saved else {}),
            }, indent=2, default=str))
            return
        for name, record in heads.items():
            metrics = stored_metrics(b.root, record)
            if metrics.get("top1") is None:
                console.print(f"head {name}: no test images to evaluate on")
                continue
            table = Table(title=head_title(name, record, metrics))
            for col in ("breed", "precision", "recall", "support"):
                table.add_column(col)
            for row in metrics.get("per_breed", []):
                table.add_row(row["breed"], f"{row['precision']:.2f}", f"{row['recall']:.2f}",
                              str(row["support"]))
            console.print(table)
            for pair in metrics.get("most_confused", [])[:5]:
                console.print(f"  confused: {pair['true']} -> {pair['predicted']}"
                              f" ({pair['count']})")
        print_honesty(b)
        if gate_dev is not None:
            print_gate_evaluation(gate_dev, b.root)
