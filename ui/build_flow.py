"""Building and changing bundles: the steps of `build-index`, `add`, `remove` and `train`.

A build is a short sequence of steps that benchmarks and tests reuse one by one:
`open_build_source` -> `open_build_embedder` -> the engine's `embed_source_into`
(embed.engines: this process, or a Ray cluster) -> `index_bundle` -> `fit_default_head`;
`build_bundle` runs them inside a staged bundle. `add_to_bundle` and `remove_from_bundle`
change a staged copy and refresh what depends on the rows (`refresh_after_change`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any

from classify.comparison import compare_heads
from classify.finetune import FinetuneParams, train_finetune_head
from classify.gate_store import drop_gate, fit_gate
from classify.heads import train_logreg_head
from classify.logreg import DEFAULT_C
from embed.backbones import DEFAULT_BACKBONE, DEFAULT_WEIGHTS
from embed.background import Background
from embed.build import (
    DEFAULT_ROWS_PER_SHARD,
    EmbedStats,
    ProgressCallback,
    kept_choice,
    prepare_runtime,
    remove_rows,
)
from embed.bundle import Bundle, new_manifest
from embed.embedder import (
    Embedder,
    finetuned_lineage,
    load_embedder,
    load_finetuned_embedder,
    save_serving_weights,
    serving_embedder,
)
from embed.engines import DEFAULT_ENGINE, Engine, make_engine
from embed.environment import blas_threads_for, fewer_collections
from embed.errors import BundleError, SourceError
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.runtimes import DEFAULT_RUNTIME
from embed.sources import DEFAULT_SOURCE, DEFAULT_TEST_FRACTION, Source, open_source
from embed.staging import BundleWriter, change_bundle
from index.choice import DEFAULT_INDEX_KIND, DEFAULT_MEMORY_BUDGET, choose_index
from index.lookalikes import build_bundle_index, extend_bundle_index
from index.space_store import drop_bundle_space, fit_bundle_space
from ui.audit_store import refresh_audit
from ui.build_grouping import adopt_split, keep_near_copies_together
from ui.prefetch import prefetch

DEFAULT_OUT = "dogs-bundle"
log = logging.getLogger(__name__)
HEADS = ("logreg", "finetune")


@dataclass(frozen=True)
class BuildConfig:
    """What `build-index` was asked for; the CLI's defaults come from here."""

    source: str = DEFAULT_SOURCE
    out: Path = Path(DEFAULT_OUT)
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = DEFAULT_WEIGHTS  # "imagenet", a weights file, or None/"none"
    image_size: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    index_kind: str = DEFAULT_INDEX_KIND
    memory_budget: str = DEFAULT_MEMORY_BUDGET
    runtime: str = DEFAULT_RUNTIME
    test_fraction: float = DEFAULT_TEST_FRACTION
    overwrite: bool = False
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    backbone_from: Path | None = None  # embed with this bundle's fine-tuned backbone
    split_from: Path | None = None  # take this bundle's split (by path) instead of regrouping
    engine: str = DEFAULT_ENGINE  # "local", or "ray": the embedding stage on a Ray cluster
    ray_address: str | None = None  # ray: None starts a local cluster; "auto" joins one
    workers: int | None = None  # ray: actors (None: one per core of the cluster)


@dataclass
class BuildResult:
    bundle: Path
    stats: EmbedStats
    manifest: dict[str, Any]


def open_build_source(config: BuildConfig) -> Source:
    return open_source(config.source, test_fraction=config.test_fraction)


def open_build_embedder(config: BuildConfig) -> Embedder:
    """The named backbone, or the fine-tuned backbone of `config.backbone_from`'s head."""
    if config.backbone_from is not None:
        return load_finetuned_embedder(finetuned_lineage(config.backbone_from), config.runtime)
    return load_embedder(config.backbone, config.weights, config.image_size, config.runtime)


def index_bundle(
    bundle: Bundle, kind: str = DEFAULT_INDEX_KIND, memory_budget: str = DEFAULT_MEMORY_BUDGET
) -> dict[str, Any]:
    """Build the bundle's FAISS index and record it in the manifest."""
    log.info("building the FAISS index")
    record = {**build_bundle_index(bundle, kind, memory_budget), "requested": kind,
              "memory_budget": str(memory_budget)}
    bundle.update_manifest(index=record)
    bundle.record_files(bundle.index_path)
    return record


def fit_default_head(bundle: Bundle, imports: Thread | None = None) -> dict[str, Any]:
    """The logistic-regression head every labelled build gets, with its test report, the
    evidence gate and the learned look-alike space (both fitted on the train split).

    Ordered for a warm small build (issue 21): the space needs no scikit-learn, so it is
    fitted while `imports` (`ui.prefetch`) may still be loading it; the report's PNG is
    drawn beside the gate's fit, and is on disk when this returns."""
    log.info("fitting the logistic-regression breed head and the open-set gate")
    fit_bundle_space(bundle)
    if imports is not None:
        imports.join()
    with Background() as later:
        record = train_logreg_head(bundle, later=later)
        fit_gate(bundle)
    return record


def fit_answers(bundle: Bundle) -> None:
    """The evidence gate and the learned look-alike space, from the train split's rows (at
    build, and after add/remove/train: they go stale when the rows change)."""
    fit_gate(bundle)
    fit_bundle_space(bundle)


def build_engine(config: BuildConfig) -> Engine:
    """The engine that runs the embedding stage (`ray` refuses at once without Ray)."""
    return make_engine(config.engine, config.ray_address, config.workers)


def source_root(config: BuildConfig) -> Path | None:
    """The folder a build reads photos from (None for tfds): --out must stay clear of it."""
    return None if config.source.startswith("tfds:") else Path(config.source)


def build_bundle(
    config: BuildConfig, on_source: Callable[[Source], ProgressCallback | None] | None = None
) -> BuildResult:
    """Source -> embeddings -> index -> (if labelled) logistic-regression head and report.

    `--out` is checked and locked before anything slow happens. An interrupted build of the
    same source, backbone and settings is continued from its last complete shard.
    `on_source` is called once the source is listed and may return a progress callback.
    """
    engine = build_engine(config)
    with fewer_collections(), BundleWriter(config.out, config.overwrite,
                                           source_root(config)) as writer, engine:
        src = open_build_source(config)
        imports = prefetch() if src.labelled else None  # the head's libraries, meanwhile
        embedder = open_build_embedder(config)
        # an index that cannot fit the budget is said now, not after hours of embedding
        choose_index(config.index_kind, len(src.items), embedder.dim, config.memory_budget)
        on_progress = on_source(src) if on_source else None
        # the runtime's one-time work (and auto's choice) before staging: the choice is part
        # of the resume key, and a resume keeps the choice of the build it continues
        key = engine.resume_key(src, embedder, config.runtime, config.rows_per_shard)
        prepare_runtime(src, embedder, config.batch_size,
                        choice=kept_choice(writer.staged_key(), key))
        bundle, _ = writer.stage(
            engine.resume_key(src, embedder, config.runtime, config.rows_per_shard))
        bundle.write_manifest(new_manifest(embedder.identity(), src.describe()))
        save_serving_weights(embedder, bundle)
        stats = engine.embed_source_into(  # leaves the serving model in the bundle too
            bundle, src, embedder, config.batch_size, config.rows_per_shard, on_progress
        )
        with blas_threads_for(len(src.items)):  # small fits: a second thread only spins
            if config.split_from is not None:  # before the index and head see splits
                adopt_split(bundle, config.split_from)
            else:
                keep_near_copies_together(bundle, embedder)
            index_bundle(bundle, config.index_kind, config.memory_budget)
            if src.labelled and stats.embedded:
                fit_default_head(bundle, imports)
        record_history(bundle, {"op": "build", "source": src.location})
        target = writer.commit()
    return BuildResult(target, stats, Bundle(target).manifest)


def record_history(bundle: Bundle, event: dict[str, Any]) -> None:
    """One entry per committed change: what, when, and which process did it."""
    import os
    import time
    from datetime import datetime, timezone

    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
             "unix_time": round(time.time(), 3), "pid": os.getpid(), **event}
    bundle.update_manifest(history=[*bundle.manifest.history, entry])


def refit_what_is_cheap(bundle: Bundle) -> None:
    """After the rows changed: logistic regression and the gate are refitted; a fine-tuned
    head is left as it is and shows as stale (it is not served until `train` refreshes it);
    the comparison is kept only among heads fitted on these rows. With fewer than 2 breeds
    in the train split there is no head at all: heads, gate, comparison and their reports
    go, and `info` says why."""
    splits = bundle.split_arrays()
    breeds = len(set(splits["train"][1]))
    if breeds < 2:
        log.warning("the bundle now has %s breed%s in its train split: no breed head and no"
                    " gate (they need at least 2)", breeds, "" if breeds == 1 else "s")
        drop_fitted_artifacts(bundle)
        return
    fit_default_head(bundle)
    refresh_comparison(bundle)


def refresh_comparison(bundle: Bundle) -> None:
    fresh = [h for h in bundle.manifest.heads if not bundle.manifest.head_is_stale(h)]
    if fresh:
        compare_heads(bundle)
    elif bundle.manifest.comparison is not None:
        bundle.update_manifest(comparison=None)


def drop_fitted_artifacts(bundle: Bundle) -> None:
    """Remove every head, the gate, the space and the comparison, with their files and
    reports."""
    manifest = bundle.manifest
    relative = [rel for head in manifest.heads.values()
                for rel in (head.file, head.serving_file, head.dense_file,
                            *head.report.values()) if rel]
    if manifest.comparison is not None:
        relative += list(manifest.comparison.files.values())
    for rel in relative:
        bundle.inside(rel).unlink(missing_ok=True)
    bundle.forget_files(*relative)
    drop_gate(bundle)
    drop_bundle_space(bundle)
    bundle.update_manifest(heads={}, comparison=None)


def refresh_after_change(bundle: Bundle, event: dict[str, Any],
                         new_shards: list[dict[str, Any]] | None = None) -> None:
    """After rows were added or removed: the index (extended in place with `new_shards` when
    the ladder keeps its layout, else rebuilt as it was requested), the logistic-regression
    head, its report and the gate when labelled, the comparison, the history."""
    import numpy as np

    index = bundle.manifest.index
    budget = (index.memory_budget if index else None) or DEFAULT_MEMORY_BUDGET
    requested = (index.requested if index else None) or DEFAULT_INDEX_KIND
    if new_shards is not None and index is not None:
        log.info("adding the new rows to the FAISS index")
        vectors = [np.load(bundle.inside(s["file"]), mmap_mode="r", allow_pickle=False)
                   for s in new_shards]
        record = extend_bundle_index(bundle, vectors, budget)
        bundle.update_manifest(index={**record, "requested": requested,
                                      "memory_budget": budget})
        bundle.record_files(bundle.index_path)
    else:
        index_bundle(bundle, requested, budget)
    with blas_threads_for(bundle.manifest.counts.embedded):  # small fits: see build_bundle
        refit_what_is_cheap(bundle)
    refresh_audit(bundle)
    record_history(bundle, event)


def add_to_bundle(
    bundle_dir: str | Path, source: str, batch_size: int = DEFAULT_BATCH_SIZE,
    runtime: str | None = None,
    on_source: Callable[[Source], ProgressCallback | None] | None = None,
    engine: Engine | None = None,
) -> EmbedStats:
    """Embed only the photos of `source` whose content is not in the bundle yet, append them
    as new shards, then refresh index, head and report. The bundle in place is replaced only
    when everything succeeded. `engine` runs the embedding (default: this process)."""
    current = Bundle.open(bundle_dir)
    refuse_bundle_as_source(current.root, source)
    engine = engine or make_engine()
    try:
        return _add(current, source, batch_size, runtime, on_source, engine)
    except _NothingNew as nothing:  # the staged copy is dropped: the bundle stays as it was
        return nothing.stats


class _NothingNew(Exception):
    """Every photo of an `add` was already in the bundle: nothing to commit or refit."""

    def __init__(self, stats: EmbedStats) -> None:
        self.stats = stats


def _add(current: Bundle, source: str, batch_size: int, runtime: str | None,
         on_source: Callable[[Source], ProgressCallback | None] | None,
         engine: Engine) -> EmbedStats:
    with fewer_collections(), change_bundle(current.root, "add") as staged, engine:
        test_fraction = staged.manifest.source.test_fraction
        src = open_source(source, test_fraction=DEFAULT_TEST_FRACTION if test_fraction is None
                          else test_fraction)
        embedder = serving_embedder(staged, runtime)  # the very model the bundle's rows came from
        on_progress = on_source(src) if on_source else None
        old_shards = len(staged.manifest.embeddings.shards)
        stats = engine.append_source(staged, src, embedder, batch_size, on_progress)
        if not stats.embedded and not stats.skipped:
            raise _NothingNew(stats)
        new_breeds = sorted(set(staged.split_arrays()["train"][1]) - set(
            current.split_arrays()["train"][1]))
        if new_breeds:  # debug: the CLI's summary and the app name them once
            log.debug("new breed%s: %s", "" if len(new_breeds) == 1 else "s",
                     ", ".join(new_breeds))
        refresh_after_change(staged, {"op": "add", "source": src.location,
                                      "added": stats.embedded, "skipped": stats.skipped,
                                      "already_there": stats.reused, "new_breeds": new_breeds},
                             new_shards=[s.model_dump() for s in
                                         staged.manifest.embeddings.shards[old_shards:]])
    return stats


def refuse_bundle_as_source(bundle_root: Path, source: str) -> None:
    """`add --source B --bundle B` would embed the bundle's own report images as a breed."""
    if source.startswith("tfds:"):
        return
    folder = Path(source).expanduser().resolve()
    root = bundle_root.resolve()
    if folder == root or folder.is_relative_to(root) or root.is_relative_to(folder):
        raise SourceError(f"--source {source} is or contains the bundle {bundle_root}; add"
                          " photos from a folder outside the bundle")


def matching_positions(bundle: Bundle, patterns: list[str]) -> Any:
    """Metadata positions whose path equals or matches (glob) one of `patterns`: absolute,
    relative to the bundle's source root, or a relative tail such as `samoyed/*.jpg`."""
    import fnmatch

    import numpy as np

    table = bundle.metadata()
    root = bundle.source_root
    wanted = []
    for p in patterns:
        if not any(c in p for c in "*?["):
            p = str(Path(p).expanduser().resolve()) if Path(p).expanduser().exists() else p
        wanted += [p] if p.startswith("/") else [p, f"*/{p}"]  # relative: any folder above
    mask = np.zeros(len(table), bool)
    for i, path in enumerate(table["path"].astype(str)):
        relative = str(Path(path).relative_to(root)) if root and Path(path).is_relative_to(
            root) else path
        mask[i] = any(fnmatch.fnmatchcase(path, w) or fnmatch.fnmatchcase(relative, w)
                      for w in wanted)
    return mask


def matching_paths(bundle_dir: str | Path, patterns: list[str]) -> list[str]:
    """The photos `remove` with these patterns would drop now, as stored (absolute paths);
    read-only, for `remove --dry-run`."""
    bundle = Bundle.open(bundle_dir)
    mask = matching_positions(bundle, patterns)
    return bundle.metadata()["path"].astype(str)[mask].tolist()


def change_effects(bundle_dir: str | Path) -> dict[str, Any]:
    """After `add`/`remove`: the new breeds its last change introduced, what was refitted on
    the new rows (fresh heads, gate, look-alike space, audit) and what is stale (a
    fine-tuned head to retrain)."""
    manifest = Bundle.open(bundle_dir).manifest
    last = manifest.history[-1] if manifest.history else {}
    stale = manifest.stale()
    refitted = [f"head {h}" for h in manifest.heads if not manifest.head_is_stale(h)]
    for section, name in (("gate", "open-set gate"), ("space", "look-alike space"),
                          ("audit", "audit")):
        if getattr(manifest, section) is not None and section not in stale:
            refitted.append(name)
    return {"new_breeds": list(last.get("new_breeds") or []), "refitted": refitted,
            "stale": stale}


def remove_from_bundle(bundle_dir: str | Path, patterns: list[str]) -> list[str]:
    """Drop the rows whose paths match `patterns` (paths or globs); refresh index, head and
    report. Returns the paths that went, as stored, matched under the lock (so a listing
    names exactly what this change removed)."""
    with fewer_collections(), change_bundle(bundle_dir, "remove") as staged:
        drop = matching_positions(staged, patterns)  # under the lock: the rows of now
        if not drop.any():
            raise SourceError(f"no image of {bundle_dir} matches {', '.join(patterns)}")
        if drop.all():
            raise SourceError("that would remove every image; build a new bundle instead")
        gone = staged.metadata()["path"].astype(str)[drop].tolist()
        removed = remove_rows(staged, drop)
        refresh_after_change(staged, {"op": "remove", "patterns": patterns,
                                      "removed": removed})
    return gone


def train_head(
    bundle_dir: str | Path,
    head: str = "finetune",
    c: float | None = None,
    params: FinetuneParams | None = None,
    on_epoch: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """(Re)train one breed head on the bundle's split, then refresh the head comparison and
    re-calibrate the open-set gate.

    Returns {"record": the head's manifest record, "comparison": the comparison section,
    "gate": the gate section}.
    """
    if head not in HEADS:
        raise BundleError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    with change_bundle(bundle_dir, "train") as bundle:
        if len(set(bundle.split_arrays()["train"][1])) < 2:
            raise BundleError(f"bundle {bundle_dir} has fewer than 2 breeds in its train split;"
                              " a breed head needs at least 2. Add photos of another breed")
        if head == "logreg":
            record = train_logreg_head(bundle, DEFAULT_C if c is None else c)
        else:
            record = train_finetune_head(bundle, params or FinetuneParams(), on_epoch)
        refresh_comparison(bundle)
        fit_answers(bundle)
        gate = bundle.manifest.gate.model_dump() if bundle.manifest.gate else None
        refresh_audit(bundle)  # the gate changed: its not-a-dog findings may too
        comparison = bundle.manifest.comparison
        record_history(bundle, {"op": "train", "head": head})
    return {"record": record, "comparison": comparison.model_dump() if comparison else None,
            "gate": gate}
