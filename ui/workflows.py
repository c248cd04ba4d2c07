"""The commands' library functions: the composition root that wires embed, index and classify.

It sits in `ui/` beside the two interfaces that call it (the CLI and the Streamlit app), so
every package below it stays ignorant of the others: `classify` and `index` build on `embed`,
and nothing points up (the import contracts in pyproject.toml keep it so).

A build is a short sequence of steps that benchmarks and tests reuse one by one:
`open_build_source` -> `open_build_embedder` -> the engine's `embed_source_into`
(embed.engines: this process, or a Ray cluster) -> `index_bundle` -> `fit_default_head`;
`build_bundle` runs them inside a staged bundle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from classify.breed_head import BreedHead
from classify.comparison import compare_heads
from classify.finetune import FinetuneParams, train_finetune_head
from classify.heads import load_predictor, train_logreg_head
from classify.logreg import DEFAULT_C
from embed.atomic import atomic_path
from embed.backbones import DEFAULT_BACKBONE, DEFAULT_WEIGHTS
from embed.build import (
    DEFAULT_ROWS_PER_SHARD,
    EmbedStats,
    ProgressCallback,
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
from embed.errors import BundleError, SourceError
from embed.images import read_and_decode
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.runtimes import DEFAULT_RUNTIME
from embed.sources import (
    DEFAULT_SOURCE,
    DEFAULT_TEST_FRACTION,
    IMAGE_EXTENSIONS,
    ImageItem,
    ImageListing,
    Rejected,
    Source,
    list_images,
    open_source,
)
from embed.staging import BundleWriter
from index.choice import DEFAULT_INDEX_KIND, DEFAULT_MEMORY_BUDGET
from index.lookalikes import LookalikeIndex, build_bundle_index

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


def fit_default_head(bundle: Bundle) -> dict[str, Any]:
    """The logistic-regression head every labelled build gets, with its test report."""
    log.info("fitting the logistic-regression breed head")
    return train_logreg_head(bundle)


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
    with BundleWriter(config.out, config.overwrite, source_root(config)) as writer, engine:
        src = open_build_source(config)
        embedder = open_build_embedder(config)
        on_progress = on_source(src) if on_source else None
        bundle, _ = writer.stage(
            engine.resume_key(src, embedder, config.runtime, config.rows_per_shard))
        bundle.write_manifest(new_manifest(embedder.identity(), src.describe()))
        save_serving_weights(embedder, bundle)
        stats = engine.embed_source_into(  # leaves the serving model in the bundle too
            bundle, src, embedder, config.batch_size, config.rows_per_shard, on_progress
        )
        index_bundle(bundle, config.index_kind, config.memory_budget)
        if src.labelled and stats.embedded:
            fit_default_head(bundle)
        manifest = bundle.manifest  # complete only now; the folder gets its name below
        target = writer.commit()
    return BuildResult(target, stats, manifest)


def refresh_after_change(bundle: Bundle, event: dict[str, Any]) -> None:
    """After rows were added or removed: the index again (as it was requested), the
    logistic-regression head and its report when labelled, the comparison, the history."""
    import time

    index = bundle.manifest.get("index") or {}
    index_bundle(bundle, index.get("requested", DEFAULT_INDEX_KIND),
                 index.get("memory_budget", DEFAULT_MEMORY_BUDGET))
    splits = bundle.split_arrays()
    if len(set(splits["train"][1])) >= 2:
        fit_default_head(bundle)
        if len(bundle.manifest.get("heads") or {}) > 1:
            compare_heads(bundle)
    history = list(bundle.manifest.get("history") or [])
    history.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event})
    bundle.update_manifest(history=history)


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
    engine = engine or make_engine()
    with BundleWriter(current.root, overwrite=True) as writer, engine:
        staged = writer.stage_copy()
        test_fraction = (staged.manifest.get("source") or {}).get("test_fraction",
                                                                  DEFAULT_TEST_FRACTION)
        src = open_source(source, test_fraction=test_fraction)
        embedder = serving_embedder(staged, runtime)  # the very model the bundle's rows came from
        on_progress = on_source(src) if on_source else None
        stats = engine.append_source(staged, src, embedder, batch_size, on_progress)
        refresh_after_change(staged, {"op": "add", "source": src.location,
                                      "added": stats.embedded, "skipped": stats.skipped,
                                      "already_there": stats.reused})
        writer.commit()
    return stats


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


def remove_from_bundle(bundle_dir: str | Path, patterns: list[str]) -> int:
    """Drop the rows whose paths match `patterns` (paths or globs); refresh index, head and
    report. Returns how many rows went."""
    current = Bundle.open(bundle_dir)
    drop = matching_positions(current, patterns)
    if not drop.any():
        raise SourceError(f"no image of {bundle_dir} matches {', '.join(patterns)}")
    if drop.all():
        raise SourceError("that would remove every image; build a new bundle instead")
    with BundleWriter(current.root, overwrite=True) as writer:
        staged = writer.stage_copy()
        removed = remove_rows(staged, drop)
        refresh_after_change(staged, {"op": "remove", "patterns": patterns,
                                      "removed": removed})
        writer.commit()
    return removed


@dataclass
class QueryContext:
    """What answering queries on a bundle needs, loaded once (the app caches this)."""

    bundle: Bundle
    embedder: Embedder
    index: LookalikeIndex
    predictor: BreedHead | None


def open_for_queries(
    bundle_dir: str | Path, head: str | None = None, runtime: str | None = None,
    accepts_images: bool = False,
) -> QueryContext:
    """`accepts_images`: the caller passes preprocessed images along with vectors, so the
    default head may be a fine-tuned one that needs images."""
    bundle = Bundle.open(bundle_dir)
    index = LookalikeIndex(bundle)
    predictor = load_predictor(bundle, head, accepts_images)
    embedder = serving_embedder(bundle, runtime)
    return QueryContext(bundle, embedder, index, predictor)


@dataclass
class ImageAnswer:
    """What the bundle says about one photo: its look-alikes and (with a head) its breeds."""

    lookalikes: list[dict[str, Any]]
    breeds: list[tuple[str, float]]


def look_up_image(ctx: QueryContext, image: str | Path, k: int = 8,
                  top_breeds: int = 3) -> ImageAnswer:
    """Decode and embed one image file once; its k look-alikes and top breeds."""
    _, decoded = read_and_decode(str(image), ctx.embedder.image_size)
    inputs = ctx.embedder.inputs_from_pixels(decoded.pixels[None])
    vectors = ctx.embedder.embed_inputs(inputs)
    hits = [vars(n) for n in ctx.index.search(vectors, k)[0]]
    breeds: list[tuple[str, float]] = []
    if ctx.predictor is not None and top_breeds:
        breeds = ctx.predictor.predict_top_k(vectors, top_breeds, inputs)[0]
    return ImageAnswer(hits, breeds)


def train_head(
    bundle_dir: str | Path,
    head: str = "finetune",
    c: float | None = None,
    params: FinetuneParams | None = None,
    on_epoch: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """(Re)train one breed head on the bundle's split, then refresh the head comparison.

    Returns {"record": the head's manifest record, "comparison": the comparison section}.
    """
    bundle = Bundle.open(bundle_dir)
    if head == "logreg":
        record = train_logreg_head(bundle, DEFAULT_C if c is None else c)
    elif head == "finetune":
        record = train_finetune_head(bundle, params or FinetuneParams(), on_epoch)
    else:
        raise BundleError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    return {"record": record, "comparison": compare_heads(bundle)}


def resolve_inputs(inputs: list[str], stdin: Any = None) -> ImageListing:
    """Photos to classify from files, folders (recursive), text files listing one path a line,
    and `-` (such a list on `stdin`). Entries that are no usable image become rejected rows."""
    paths: list[Path] = []
    rejected: list[Rejected] = []

    def add(entry: str) -> None:
        path = Path(entry).expanduser()
        if path.is_dir():
            listing = list_images(path)
            paths.extend(listing.paths)
            rejected.extend(listing.rejected)
        elif path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            paths.append(path)
        elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            for line in path.read_text().splitlines():
                if line.strip():
                    add(line.strip())
        else:
            rejected.append(Rejected(str(path), "no such file or folder" if not path.exists()
                                     else f"unsupported format {path.suffix or '(none)'}"))

    for entry in inputs:
        if entry == "-":
            for line in (stdin.read() if stdin is not None else "").splitlines():
                if line.strip():
                    add(line.strip())
        else:
            if len(inputs) == 1 and not Path(entry).expanduser().exists():
                raise SourceError(f"{entry} does not exist")
            add(entry)
    if not paths:
        raise SourceError(f"no images found in {', '.join(inputs)}")
    return ImageListing(paths, rejected)


def classify_images(
    ctx: QueryContext,
    photos: ImageListing,
    out: str | Path | TextIO,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_start: Callable[[int], ProgressCallback | None] | None = None,
    fmt: str = "csv",
) -> dict[str, Any]:
    """One row per photo: top-k breeds, nearest look-alike, or the error; written as CSV or
    JSON lines to a file (atomically) or to an open text stream (stdout)."""
    import pandas as pd

    items = [ImageItem(i, str(p), None, "none") for i, p in enumerate(photos.paths)]
    on_progress = on_start(len(items)) if on_start else None
    rows: list[dict[str, Any]] = [{"path": r.path, "error": r.reason} for r in photos.rejected]
    for step in ctx.embedder.embedded_batches(items, batch_size):
        b = step.batch
        ranked = ctx.predictor.predict_top_k(step.vectors, top_k, b.inputs[b.ok]) if (
            ctx.predictor is not None and len(step.vectors)) else []
        nearest = ctx.index.search(step.vectors, 1) if len(step.vectors) else []
        j = 0
        for i, row_id in enumerate(b.row_ids.tolist()):
            row: dict[str, Any] = {"path": items[row_id].ref}
            if not b.ok[i]:
                row["error"] = b.reasons[i]
                rows.append(row)
                continue
            row["error"] = ""
            for rank, (breed, prob) in enumerate(ranked[j] if ranked else [], start=1):
                row[f"breed_{rank}"] = breed
                row[f"prob_{rank}"] = round(prob, 6)
            if nearest and nearest[j]:
                hit = nearest[j][0]
                row["lookalike_path"] = hit.path
                row["lookalike_breed"] = hit.label
                row["lookalike_score"] = round(hit.score, 6)
            rows.append(row)
            j += 1
        if on_progress:
            on_progress(len(b.row_ids))
    table = pd.DataFrame(rows)

    def write(target: Any) -> None:
        if fmt == "jsonl":
            table.to_json(target, orient="records", lines=True)
        else:
            table.to_csv(target, index=False)

    if isinstance(out, (str, Path)):
        out_path = Path(out)
        if out_path.is_dir():
            raise SourceError(f"--out {out_path} is a folder; name a file, e.g."
                              f" {out_path / 'predictions.csv'}")
        with atomic_path(out_path) as tmp:
            write(tmp)
        shown = str(out_path)
    else:
        write(out)
        out.flush()
        shown = "stdout"
    failed = int((table["error"] != "").sum())
    return {"images": len(rows), "classified": len(rows) - failed, "failed": failed,
            "out": shown, "head": ctx.predictor.name if ctx.predictor else None}


def classify_folder(ctx: QueryContext, folder: str | Path, out_csv: str | Path,
                    top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE,
                    on_start: Callable[[int], ProgressCallback | None] | None = None,
                    ) -> dict[str, Any]:
    """Every photo under a folder into a CSV (the library call behind `classify FOLDER`)."""
    return classify_images(ctx, resolve_inputs([str(folder)]), out_csv, top_k, batch_size,
                           on_start)


@dataclass
class VerifyReport:
    problems: list[str]
    files: int
    bytes: int
    rows: int


def verify_bundle(bundle_dir: str | Path) -> VerifyReport:
    """Every checksum, and that shards, metadata, index and heads agree (`embed-dogs verify`)."""
    bundle = Bundle(bundle_dir)
    if not bundle.manifest_path.is_file():
        Bundle.open(bundle_dir)  # raises the usual "does not exist / not a bundle" message
    problems = bundle.check(full=True)
    files = bundle.manifest.get("files") or {}
    rows = int((bundle.manifest.get("counts") or {}).get("embedded") or 0)
    if not problems:
        for step in (lambda: LookalikeIndex(bundle),
                     *[lambda h=h: load_predictor(bundle, h, accepts_images=True)
                       for h in (bundle.manifest.get("heads") or {})]):
            try:
                step()
            except BundleError as exc:
                problems.append(str(exc))
    return VerifyReport(problems, len(files), sum(int(r.get("bytes", 0))
                                                   for r in files.values()), rows)
