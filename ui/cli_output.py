"""How the commands print the open-set gate's verdicts and honest figures (heads with
intervals, the serving head, the leakage warning, the gate's calibration and evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ui.cli_common import console

# ---- the open-set gate and honest figures in the output ----------------------------------------
VERDICT_TEXT = {
    "dog": "one of the bundle's breeds",
    "unknown_breed": "a dog, but not one of the breeds this bundle knows",
    "not_a_dog": "this doesn't look like a dog",
}


def print_verdict_counts(counts: dict[str, int] | None, out: Console = console) -> None:
    if counts is None:
        out.print("no open-set gate in this bundle (unlabelled, or built before gates): the"
                      " verdict column is empty; `embed-dogs train --head logreg` calibrates one")
        return
    out.print("verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()))


def search_json(answer: Any) -> dict[str, Any]:
    """`search --json`: the verdict first, the breeds (for reference), the look-alikes."""
    return {
        "verdict": answer.verdict,
        "knn_similarity": answer.knn_similarity,
        "why": answer.why,
        "sure": answer.confident,
        "breeds": [{"breed": b, "probability": p} for b, p in answer.breeds],
        "lookalikes": answer.lookalikes,
    }


def verdict_line(answer: Any) -> str:
    """The verdict in words; a known-breed dog whose head and look-alikes disagree is
    "maybe <breed>", never a sure breed."""
    if answer.verdict == "dog" and not answer.confident and answer.breeds:
        return (f"verdict: [bold yellow]maybe {answer.breeds[0][0]}[/] (not sure: the breed"
                f" head and the look-alikes disagree). {answer.why}")
    return f"verdict: [bold]{answer.verdict}[/] ({VERDICT_TEXT[answer.verdict]}). {answer.why}"


def print_verdict(answer: Any, ctx: Any) -> None:
    """The verdict, and the breed only where the gate says it is one of the bundle's."""
    if answer.verdict is not None:
        console.print(verdict_line(answer), highlight=False)
    if answer.breeds and ctx.predictor is not None:
        label = ("breed" if answer.verdict in (None, "dog") and answer.confident
                 else "closest breeds, for reference")
        console.print(f"{label} ({ctx.predictor.name} head): " + ", ".join(
            f"{breed} {prob:.0%}" for breed, prob in answer.breeds))


def head_title(name: str, record: dict[str, Any], metrics: dict[str, Any]) -> str:
    from classify.intervals import accuracy_interval, format_interval

    validation = (record.get("validation") or {}).get("top1")
    return (f"head {name}: test top-1 {metrics['top1']:.1%}"
            f" ({format_interval(accuracy_interval(metrics, 'top1'))}), top-5"
            f" {metrics['top5']:.1%} ({format_interval(accuracy_interval(metrics, 'top5'))}),"
            f" {metrics['test_images']} images"
            + (f"; validation top-1 {validation:.1%}" if validation is not None else ""))


def print_honesty(bundle: Any) -> None:
    """Which head serves and why, the leakage warning, the gate's calibration."""
    from classify.leakage import leakage_warning
    from classify.selection import choose_best_head

    manifest = bundle.manifest
    best, by = choose_best_head({name: head for name, head in manifest.heads.items()
                                 if not manifest.head_is_stale(name)})
    if best:
        console.print(f"serving head: {best} (best {by})")
    warning = leakage_warning(bundle)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    for name in manifest.heads:
        if manifest.head_is_stale(name):
            console.print(f"[bold yellow]stale:[/] the {name} head was fitted before the"
                          " bundle's rows changed and is not served; refresh it with"
                          f" `embed-dogs train --head {name} --bundle {bundle.root}`",
                          highlight=False, soft_wrap=True)
    from ui.facts import audit_facts, gate_facts, space_facts

    for name, value in audit_facts(manifest):
        if name != "audit":
            console.print(f"{name}: {value}", highlight=False, soft_wrap=True)
    for name, value in (*gate_facts(manifest), *space_facts(manifest)):
        console.print(f"{name}: {value}", highlight=False, soft_wrap=True)


def print_gate_evaluation(result: Any, root: Path) -> None:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    # two narrow tables instead of one wide one: each stays readable at 80 columns
    scores = Table(title=f"open-set gate on photo sets (head {result.head or 'none'}): AUROC,"
                   " and false-positive rate at 95% recall of the held-out test dogs")
    for col in ("set", "images", "kNN AUROC", "kNN FPR@95", "head AUROC", "head FPR@95"):
        scores.add_column(col, justify="left" if col == "set" else "right",
                          no_wrap=col == "set")
    verdicts = Table(title="verdicts on each set (share of its photos; in brackets: dogs"
                     " shown as a sure breed, head and look-alikes agreeing)")
    for col in ("set", "should be", "dog (sure)", "unknown", "not a dog"):
        verdicts.add_column(col, justify="left" if col in ("set", "should be") else "right",
                            no_wrap=col in ("set", "should be"))
    sources = []
    for row in result.rows:
        kind = str(row["kind"]).replace("_", " ")
        name, _, where = str(row["set"]).partition(" (")
        if where and "/" in where:  # a folder given on the command line: named below
            sources.append(f"{name}: {where.rstrip(')')}")
        else:
            name = str(row["set"])
        scores.add_row(name, str(row["images"]), number(row["knn_auroc"]),
                       share(row["knn_fpr_at_95"]), number(row["head_auroc"]),
                       share(row["head_fpr_at_95"]))
        sure = row.get("sure_breed")
        verdicts.add_row(name, kind, share(row["dog"]) + ("" if sure is None
                                                          else f" ({share(sure)})"),
                         share(row["unknown_breed"]), share(row["not_a_dog"]))
    console.print(scores)
    console.print(verdicts)
    for line in sources:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    for row in result.rows:  # the interval of each set's dog share (Wilson, 95 %)
        if row.get("dog_ci95"):
            low, high = row["dog_ci95"]
            console.print(f"  {row['set']}: dog {share(row['dog'])}, 95% CI {low:.1%}–{high:.1%}",
                          highlight=False, soft_wrap=True)
    if result.files:
        console.print("written: " + ", ".join(str(root / f) for f in result.files.values()))
    else:
        console.print(f"not saved: {result.not_saved}", highlight=False, soft_wrap=True)
