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
from classify.gate import VERDICTS, Gate, fit_gate
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
from index.choice import DEFAULT_INDEX_KIND, DEFAULT_MEMORY_BUDGET, choose_index
from index.lookalikes import LookalikeIndex, build_bundle_index, extend_bundle_index

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
    """The logistic-regression head every labelled build gets, with its test report, and the
    open-set gate calibrated for it."""
    log.info("fitting the logistic-regression breed head and the open-set gate")
    record = train_logreg_head(bundle)
    fit_gate(bundle)
    return record


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
        # an index that cannot fit the budget is said now, not after hours of embedding
        choose_index(config.index_kind, len(src.items), embedder.dim, config.memory_budget)
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


def refresh_after_change(bundle: Bundle, event: dict[str, Any],
                         new_shards: list[dict[str, Any]] | None = None) -> None:
    """After rows were added or removed: the index (extended in place with `new_shards` when
    the ladder keeps its layout, else rebuilt as it was requested), the logistic-regression
    head, its report and the gate when labelled, the comparison, the history."""
    import time

    import numpy as np

    index = bundle.manifest.get("index") or {}
    budget = index.get("memory_budget", DEFAULT_MEMORY_BUDGET)
    if new_shards is not None:
        log.info("adding the new rows to the FAISS index")
        vectors = [np.load(bundle.inside(s["file"]), mmap_mode="r") for s in new_shards]
        record = extend_bundle_index(bundle, vectors, budget)
        bundle.update_manifest(index={**record, "requested": index.get("requested"),
                                      "memory_budget": budget})
        bundle.record_files(bundle.index_path)
    else:
        index_bundle(bundle, index.get("requested", DEFAULT_INDEX_KIND), budget)
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
        old_shards = len(staged.manifest["embeddings"]["shards"])
        stats = engine.append_source(staged, src, embedder, batch_size, on_progress)
        refresh_after_change(staged, {"op": "add", "source": src.location,
                                      "added": stats.embedded, "skipped": stats.skipped,
                                      "already_there": stats.reused},
                             new_shards=staged.manifest["embeddings"]["shards"][old_shards:])
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
    gate: Gate | None = None  # the open-set gate; None: the bundle has none calibrated


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
    return QueryContext(bundle, embedder, index, predictor, Gate.from_manifest(bundle.manifest))


@dataclass
class ImageAnswer:
    """What the bundle says about one photo: its look-alikes and (with a head) its breeds."""

    lookalikes: list[dict[str, Any]]
    breeds: list[tuple[str, float]]
    verdict: str | None = None  # dog, unknown_breed, not_a_dog; None without a gate
    knn_similarity: float | None = None
    why: str = ""


def look_up_image(ctx: QueryContext, image: str | Path, k: int = 8,
                  top_breeds: int = 3) -> ImageAnswer:
    """Decode and embed one image file once; its k look-alikes and top breeds."""
    _, decoded = read_and_decode(str(image), ctx.embedder.image_size)
    inputs = ctx.embedder.inputs_from_pixels(decoded.pixels[None])
    vectors = ctx.embedder.embed_inputs(inputs)
    found = ctx.index.search(vectors, max(k, ctx.gate.k if ctx.gate else 1))[0]
    hits = [vars(n) for n in found[:k]]
    breeds: list[tuple[str, float]] = []
    if ctx.predictor is not None and (top_breeds or ctx.gate):
        breeds = ctx.predictor.predict_top_k(vectors, max(top_breeds, 1), inputs)[0]
    verdict, knn = gate_verdicts(ctx, [[n.score for n in found]], [breeds])
    why = ctx.gate.explain(verdict[0], knn[0], breeds[0][1] if breeds else None,
                           ctx.predictor.name if ctx.predictor else None) if ctx.gate else ""
    return ImageAnswer(hits, breeds[:top_breeds], verdict[0],
                       None if knn[0] is None else float(knn[0]), why)


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
    bundle = Bundle.open(bundle_dir)
    if head == "logreg":
        record = train_logreg_head(bundle, DEFAULT_C if c is None else c)
    elif head == "finetune":
        record = train_finetune_head(bundle, params or FinetuneParams(), on_epoch)
    else:
        raise BundleError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    comparison = compare_heads(bundle)
    return {"record": record, "comparison": comparison, "gate": fit_gate(bundle)}


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
    """One row per photo: the gate's verdict, top-k breeds, nearest look-alike, or the error;
    written as CSV or JSON lines to a file (atomically) or to an open text stream (stdout)."""
    import pandas as pd

    items = [ImageItem(i, str(p), None, "none") for i, p in enumerate(photos.paths)]
    on_progress = on_start(len(items)) if on_start else None
    rows: list[dict[str, Any]] = [{"path": r.path, "error": r.reason} for r in photos.rejected]
    for step in ctx.embedder.embedded_batches(items, batch_size):
        b = step.batch
        ranked = ctx.predictor.predict_top_k(step.vectors, top_k, b.inputs[b.ok]) if (
            ctx.predictor is not None and len(step.vectors)) else []
        nearest = ctx.index.search(step.vectors, ctx.gate.k if ctx.gate else 1) if len(
            step.vectors) else []
        verdicts, _ = gate_verdicts(ctx, [[n.score for n in hits] for hits in nearest], ranked)
        j = 0
        for i, row_id in enumerate(b.row_ids.tolist()):
            row: dict[str, Any] = {"path": items[row_id].ref}
            if not b.ok[i]:
                row["error"] = b.reasons[i]
                rows.append(row)
                continue
            row["error"] = ""
            row["verdict"] = verdicts[j] or ""
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
    verdicts = table["verdict"] if "verdict" in table else pd.Series([], dtype=str)
    return {"images": len(rows), "classified": len(rows) - failed, "failed": failed,
            "out": shown, "head": ctx.predictor.name if ctx.predictor else None,
            "verdicts": {v: int((verdicts == v).sum()) for v in VERDICTS} if ctx.gate else None}


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


# ---- the open-set gate: is it one of the bundle's dogs? --------------------------------------
def gate_verdicts(
    ctx: QueryContext, neighbour_scores: list[list[float]],
    ranked: list[list[tuple[str, float]]],
) -> tuple[list[str | None], list[float | None]]:
    """Per query: the gate's verdict and kNN similarity, from its index neighbours' scores
    (best first) and the head's ranked breeds (may be empty). (None, None) without a gate."""
    if ctx.gate is None:
        return [None] * len(neighbour_scores), [None] * len(neighbour_scores)
    from classify.gate import knn_from_neighbours

    knn = knn_from_neighbours(neighbour_scores, ctx.gate.k)
    top = [r[0][1] if r else None for r in ranked] if ranked else [None] * len(knn)
    head = ctx.predictor.name if ctx.predictor else None
    verdicts = [ctx.gate.verdict(float(s), p, head) for s, p in zip(knn, top, strict=True)]
    return verdicts, [float(s) for s in knn]


@dataclass
class GateEvaluation:
    """`evaluate --not-dogs/--unknown-breeds`: one row per photo set, and the files written."""

    rows: list[dict[str, Any]]
    files: dict[str, str]
    head: str | None


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
    for step in ctx.embedder.embedded_batches(items, batch_size):
        if not len(step.vectors):
            continue
        hits = ctx.index.search(step.vectors, ctx.gate.k if ctx.gate else 1)
        ranked = ctx.predictor.predict_top_k(step.vectors, 1) if ctx.predictor else []
        v, s = gate_verdicts(ctx, [[n.score for n in row] for row in hits], ranked)
        verdicts += [x or "" for x in v]
        knn += [float("nan") if x is None else x for x in s]
        top += [r[0][1] for r in ranked]
    return Scored(np.array(knn), np.array(top) if ctx.predictor else None, verdicts)


def evaluate_gate(
    bundle_dir: str | Path, not_dogs: list[Path], unknown_breeds: list[Path],
    batch_size: int = DEFAULT_BATCH_SIZE, runtime: str | None = None,
) -> GateEvaluation:
    """Score folders of photos that are no dogs and dogs of breeds the bundle does not know
    against its held-out test dogs: AUROC and false-positive rate at 95 % dog recall of each
    signal, and the gate's verdict shares. Writes report/gate_dev.{json,csv}. The folders
    only measure the gate; its thresholds come from the bundle's own rows."""
    import json

    import pandas as pd

    from classify.gate import Scored, dev_report, held_out_scores, top_probability
    from embed.atomic import atomic_write_text

    ctx = open_for_queries(bundle_dir, runtime=runtime)
    if ctx.gate is None:
        raise BundleError(
            f"bundle {bundle_dir} has no calibrated open-set gate (it needs labelled train and"
            " test rows); rebuild it, or run `embed-dogs train --head logreg` to calibrate one"
        )
    held = held_out_scores(ctx.bundle, ctx.gate.k)
    assert held is not None  # a gate was calibrated on these rows
    dog_top = (top_probability(ctx.predictor.predict_proba(held.vectors))
               if ctx.predictor is not None else None)
    head = ctx.predictor.name if ctx.predictor else None
    dogs = Scored(held.knn, dog_top, ctx.gate.verdicts(held.knn, dog_top, head))
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
    report = ctx.bundle.report_dir
    report.mkdir(parents=True, exist_ok=True)
    files = {"json": report / "gate_dev.json", "csv": report / "gate_dev.csv"}
    gate = ctx.bundle.manifest.get("gate") or {}
    atomic_write_text(files["json"], json.dumps({
        "head": head, "sets": rows,
        "thresholds": {k: gate.get(k) for k in ("k", "dog_threshold", "not_dog_threshold")},
        "top_probability_floor": (gate.get("heads") or {}).get(head or "", {}).get(
            "top_probability_floor"),
        "note": "thresholds were calibrated on the bundle's own rows; these photo sets only"
                " measure the gate. Test dogs are scored against all other rows (themselves"
                " left out).",
    }, indent=2, default=float))
    with atomic_path(files["csv"]) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return GateEvaluation(rows, {k: str(v.relative_to(ctx.bundle.root)) for k, v in
                                 files.items()}, head)
