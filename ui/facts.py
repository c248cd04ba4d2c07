"""The manifest in words: the one formatter of its facts that the CLI (`info`, the build
summary) and the app (report page, sidebar) both show, and the gate's and heads' figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embed.manifest import Manifest


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def head_summary(metrics: dict[str, Any]) -> str:
    """'top-1 / top-5 on N test images', or why there is none."""
    if metrics.get("top1") is None:
        return "no test images"
    return (f"{percent(metrics['top1'])} / {percent(metrics.get('top5'))} on"
            f" {metrics.get('test_images')} test images")


def interval_caption(metrics: dict[str, Any], key: str) -> str:
    """'95% CI 89.5%–97.7% (Wilson)' for a stored top-1/top-5, or ''."""
    from classify.intervals import accuracy_interval, format_interval

    shown = format_interval(accuracy_interval(metrics, key))
    return f"{shown} (Wilson)" if shown else ""


def gate_facts(manifest: Manifest) -> list[tuple[str, str]]:
    """The open-set gate's thresholds and the figures behind them, for the report page."""
    gate = manifest.gate
    if gate is None:
        return [("open-set gate", "none (needs labelled train and test rows)")]
    figures = gate.figures
    rows = [
        ("signal", f"kNN similarity: mean cosine similarity to the {gate.k} nearest"
                   " photos of the bundle"),
        ("dog: at least", f"{gate.dog_threshold:.3f} (keeps"
                          f" {percent(figures.get('test_dogs_above_dog_threshold'))} of"
                          f" {figures.get('test_dogs')} held-out test dogs)"),
        ("not a dog: below", f"{gate.not_dog_threshold:.3f} (each breed left out in"
                             " turn: 95% of those dogs stay above)"),
    ]
    for head, record in gate.heads.items():
        floor = record.top_probability_floor
        rows.append((f"{head} head: top probability floor",
                     "-" if floor is None else f"{floor:.1%} (below: unknown breed)"))
    rows.append(("simulated unknown breeds not called dog",
                 percent(figures.get("simulated_unknown_breeds_not_called_dog"))))
    return rows


def engine_facts(manifest: Manifest) -> list[tuple[str, str]]:
    """The engine that wrote the shards, when a Ray cluster did: its size and speed."""
    engine = manifest.embeddings.get("engine") or {}
    if engine.get("name") != "ray":
        return []
    workers = engine.get("per_worker") or []
    rates = ", ".join(f"{w.get('images_per_second')}" for w in workers)
    steady = engine.get("steady_images_per_second")
    n = engine.get("workers")
    return [("engine", f"ray at {engine.get('address')}: {n} worker{'' if n == 1 else 's'} on"
                       f" {engine.get('nodes')} node(s), {engine.get('cluster_cpus')} CPUs;"
                       f" {engine.get('images_per_second')} images/s with start-up"
                       + (f", {steady} once running" if steady else "")
                       + (f" (per worker: {rates})" if rates else ""))]


def int8_summary(runtime: dict[str, Any]) -> str:
    """The int8 task check in words, when int8 was asked for."""
    check = runtime.get("int8")
    if not check:
        return ""
    if check.get("passed"):
        drop = check.get("top1_drop_points")
        top1 = f"top-1 {-drop:+.1f} points, " if drop is not None else ""
        return (f"; int8 task check passed: {top1}neighbour overlap@10"
                f" {check.get('overlap_at_10')} on {check.get('rows')} images")
    return f"; int8 not used: {check.get('reason')}"


def display_path(path: str, root: Path | None = None) -> str:
    """A photo's path as a person reads it: relative to the bundle's source root, else to the
    current folder, else as stored (`--json` output keeps paths absolute)."""
    for base in (root, Path.cwd()):
        if base is not None and Path(path).is_relative_to(base):
            return str(Path(path).relative_to(base))
    return path


def breed_counts(metadata: Any) -> list[tuple[str, int]]:
    """(breed, photos) for every breed the bundle knows, most photos first, then by name;
    unlabelled rows last as "(unlabelled)"."""
    labels = metadata["label"]
    known = labels[labels.notna()].astype(str).value_counts()
    rows = sorted(((str(b), int(n)) for b, n in known.items()), key=lambda r: (-r[1], r[0]))
    unlabelled = int(labels.isna().sum())
    return rows + ([("(unlabelled)", unlabelled)] if unlabelled else [])


def manifest_facts(manifest: Manifest) -> list[tuple[str, str]]:
    """The manifest as (name, value) rows a person can read: the one formatter that `info`,
    `build-index`'s summary and the app's report and sidebar all show."""
    bb = manifest.backbone
    src = manifest.source
    idx = manifest.index
    counts = manifest.counts
    runtime = bb.runtime.model_dump()
    rows = [
        ("backbone", f"{bb.name} @ {bb.image_size} px, dim {bb.dim},"
                     f" preprocessing {bb.preprocessing}"),
    ]
    if bb.lineage:
        rows.append(("fine-tuned from", str(bb.lineage.get("head_file"))))
    parity = runtime.get("parity") or {}
    rows += [
        ("weights", str(bb.weights)),
        ("weights sha256", str(bb.weights_sha256)[:16] + "…"),
        ("runtime", str(runtime.get("name", "-")) + (
            f" (parity with Keras: mean cosine {parity['mean_cosine']:.5f})"
            if parity.get("mean_cosine") is not None else "") + int8_summary(runtime)),
        *engine_facts(manifest),
        ("source", f"{src.kind} {src.location}"),
        ("splits", ", ".join(f"{k} {v}" for k, v in src.splits.items()) or "-"),
        ("images", f"{counts.images} found, {counts.embedded} embedded,"
                   f" {counts.skipped} skipped"),
        ("index", f"{idx.kind} ({idx.factory}), metric {idx.metric}" if idx else "none"),
        ("recall@10 vs exact search", str(idx.get("recall@10") if idx else None)),
    ]
    fixed = manifest.embeddings.get("fixed_seconds") or {}
    if fixed:
        rows.append(("one-time costs", ", ".join(f"{k} {v:.1f} s" for k, v in fixed.items())
                     + f" (total {sum(fixed.values()):.1f} s, not in images/s)"))
    for name, head in manifest.heads.items():
        if manifest.head_is_stale(name):
            fitted = head.fitted_on.rows if head.fitted_on else "?"
            now = manifest.rows.rows if manifest.rows else "?"
            rows.append((f"head {name}", f"STALE, not served: fitted on {fitted} rows, the"
                         f" bundle now has {now}; refresh with `embed-dogs train --head"
                         f" {name}`"))
        else:
            rows.append((f"head {name}: test top-1 / top-5", head_summary(head.metrics)))
    if not manifest.heads and src.kind:
        rows.append(("breed head", "none (needs labelled photos of at least 2 breeds)"))
    comparison = manifest.comparison
    if comparison is not None and comparison.best:
        rows.append(("best head", f"{comparison.best} (by {comparison.get('by', 'test top1')})"))
    gate = manifest.gate
    stale_gate = " (stale)" if "gate" in manifest.stale() else ""
    rows.append(("open-set gate", f"kNN >= {gate.dog_threshold:.3f} dog, <"
                 f" {gate.not_dog_threshold:.3f} not a dog{stale_gate}" if gate else "none"))
    rows += [
        ("created", manifest.created_at),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())),
    ]
    return rows
