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
    """The evidence gate's thresholds and the figures behind them, for the report page."""
    gate = manifest.gate
    if gate is None:
        return [("open-set gate", "none (needs labelled photos of at least 2 breeds)")]
    if gate.signal != "evidence":
        return [("open-set gate", "an older kNN-threshold gate: not served; refit it with"
                                  " `embed-dogs train --head logreg`")]
    t, f = gate.thresholds, gate.figures
    rows = [
        ("not a dog: residual above", f"{t.get('residual_max', 0):.3f} (share of the photo"
         " outside the principal directions of the bundle's dogs)"),
        ("not a dog: kNN below", f"{t.get('knn_min', 0):.3f} (mean similarity to the"
         f" {gate.k} nearest photos, raw space)"),
        *([("not a dog: joint score below", f"{t['joint_min']:.2f} (kNN and residual"
             " together, in spreads of breeds left out)")] if "joint_min" in t else []),
        ("unknown breed: breed similarity below", f"{t.get('breed_similarity_min', 0):.3f}"
         " (cosine to the nearest breed's centre)"),
        ("sure breed", f"the head's breed is the breed of most of the {gate.k} nearest"
                       " look-alikes; otherwise \"maybe <breed>\""),
        ("calibrated on", "the train split only (breeds left out in turn; out-of-fold"
                          " centres); the test split only reports"),
        ("simulated unknown breeds kept as dog",
         percent(f.get("simulated_unknown_kept_as_dog"))),
    ]
    kept = f.get("test_split")
    if kept:
        low, high = kept.get("kept_as_dog_ci95") or (None, None)
        rows.append(("test dogs kept as dog", f"{percent(kept.get('kept_as_dog'))} of"
                     f" {kept.get('test_dogs')} (95% CI {percent(low)}–{percent(high)},"
                     " Wilson)"))
    return rows


def space_facts(manifest: Manifest) -> list[tuple[str, str]]:
    """The learned look-alike space and its raw-vs-learned figures on the test split."""
    space = manifest.space
    if space is None:
        return [("look-alike space", "raw (no learned space: unlabelled or fewer than 2"
                                     " breeds)")]
    stale = " STALE (not served: raw is used)" if "space" in manifest.stale() else ""
    rows = [("look-alike space", f"{space.kind}: raw vector + shrinkage LDA"
             f" ({space.learned_dims} dims), learned weight {space.blend_weight}"
             f"{stale}" if space.kind == "blend" else f"{space.kind}{stale}")]
    test = space.figures.get("test_split")
    if test:
        raw, learned = test["raw"], test["learned"]
        rows.append(("precision@5 raw -> learned", f"{raw['precision@5']:.3f} ->"
                     f" {learned['precision@5']:.3f} ({test['queries']} test photos against"
                     f" {test['base']} train photos)"))
        rows.append(("1-NN raw -> learned", f"{raw['nn1']:.3f} -> {learned['nn1']:.3f}"))
        rows.append(("within-breed overlap@10 with raw",
                     f"{learned.get('within_breed_overlap@10', 0):.3f}"))
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
    if not check or check.get("skipped"):  # auto chose float32: the decision row says why
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
        *([("runtime choice", str(runtime["decision"]))] if runtime.get("decision") else []),
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
    kept = (gate.figures.get("test_split") or {}) if gate else {}
    rows.append(("open-set gate", "none" if gate is None else (
        f"evidence gate; test dogs kept as dog {percent(kept.get('kept_as_dog'))}"
        f"{stale_gate}" if gate.signal == "evidence" else "old kNN gate: not served")))
    rows += space_facts(manifest)
    rows += audit_facts(manifest)
    rows += [
        ("created", manifest.created_at),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())),
    ]
    return rows


def audit_facts(manifest: Any) -> list[tuple[str, str]]:
    """The stored audit in words: its counts (or why there is none), whether it is stale,
    and how many test photos have a copy in train (what inflates the test score)."""
    audit = manifest.audit
    if audit is None:
        return [("audit", "none yet (`embed-dogs audit --bundle B`)")]
    stale = "audit" in manifest.stale()
    counts = ", ".join(f"{k} {n}" for k, n in audit.counts.items() if n) or "nothing found"
    how = "" if audit.refresh == "full" else ", refreshed with the stored threshold"
    rows = [("audit", ("STALE (the rows changed since; run `embed-dogs audit`): " if stale
                       else "") + counts + how)]
    if audit.test_with_train_copy is not None:
        cut = f" (similarity >= {audit.threshold.value:.3f})" if audit.threshold else ""
        rows.append(("test photos with a near-copy in train",
                     f"{audit.test_with_train_copy}{cut}" + (" (stale)" if stale else "")))
    return rows
