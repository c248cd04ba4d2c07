"""The commands' library functions: the composition root of embed, index and classify.

This module and `embed.cli` are the only parts of `embed` that call into `index` and
`classify`, and they import them inside functions, so `embed-dogs --help` stays instant and the
rest of `embed` knows nothing of FAISS or scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed.build import EmbedStats, ProgressCallback, embed_source_into
from embed.bundle import DEFAULT_ROWS_PER_SHARD, Bundle, atomic_path, new_manifest, staged_bundle
from embed.embedder import (
    Embedder,
    embedder_for_bundle,
    finetuned_lineage,
    load_embedder,
    load_finetuned_embedder,
)
from embed.errors import BundleError, SourceError
from embed.sources import DEFAULT_SOURCE, ImageItem, Source, find_images, open_source


@dataclass
class BuildResult:
    bundle: Path
    stats: EmbedStats
    manifest: dict[str, Any]


def build_bundle(
    source: str = DEFAULT_SOURCE,
    out: str | Path = "dogs-bundle",
    backbone: str = "mobilenet_v2",
    weights: str | None = "imagenet",
    image_size: int | None = None,
    batch_size: int = 32,  # measured: as fast as 64 on 2 cores, ~120 MiB less peak memory
    index_kind: str = "auto",
    memory_budget: str = "2G",
    runtime: str = "auto",
    test_fraction: float = 0.2,
    overwrite: bool = False,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    on_source: Callable[[Source], ProgressCallback | None] | None = None,
    backbone_from: str | Path | None = None,
) -> BuildResult:
    """Source -> embeddings -> index -> (if labelled) logistic-regression head and report.

    `backbone_from` embeds with the fine-tuned backbone of another bundle's finetune head
    (backbone, weights and image size then come from there); the manifest records its lineage.
    """
    from classify.heads import train_logreg_head
    from index.lookalikes import build_bundle_index

    src = open_source(source, test_fraction=test_fraction)
    if backbone_from is not None:
        embedder = load_finetuned_embedder(finetuned_lineage(backbone_from), runtime)
    else:
        embedder = load_embedder(backbone, weights, image_size, runtime)
    on_progress = on_source(src) if on_source else None
    with staged_bundle(out, overwrite=overwrite) as bundle:
        bundle.write_manifest(new_manifest(embedder.identity(), src.describe()))
        stats = embed_source_into(bundle, src, embedder, batch_size, rows_per_shard, on_progress)
        bundle.update_manifest(
            backbone=embedder.identity(),  # the runtime now records its parity figures
            counts={"images": len(src.items), "embedded": stats.embedded,
                    "skipped": stats.skipped},
            embeddings={"shards": stats.shards, "rows_per_shard": rows_per_shard,
                        "dtype": "float32", "normalised": "l2",
                        "images_per_second": round(stats.images_per_second, 2)},
        )
        bundle.update_manifest(index=build_bundle_index(bundle, index_kind, memory_budget))
        if src.labelled and stats.embedded:
            train_logreg_head(bundle)
        # the manifest is complete only now; the folder appears under its name after this block
        manifest = bundle.manifest
    return BuildResult(Path(out).expanduser().resolve(), stats, manifest)


@dataclass
class QueryContext:
    """What answering queries on a bundle needs, loaded once (the app caches this)."""

    bundle: Bundle
    embedder: Embedder
    index: Any  # index.lookalikes.LookalikeIndex
    predictor: Any  # classify.heads.BreedPredictor | None


def open_for_queries(
    bundle_dir: str | Path, head: str | None = None, runtime: str | None = None,
    accepts_images: bool = False,
) -> QueryContext:
    """`accepts_images`: the caller ranks with `predict_top_k_batch` (vectors and inputs), so
    the default head may be a fine-tuned one that needs images."""
    from classify.heads import load_predictor
    from index.lookalikes import LookalikeIndex

    bundle = Bundle.open(bundle_dir)
    index = LookalikeIndex(bundle)
    predictor = load_predictor(bundle, head, accepts_images)
    embedder = embedder_for_bundle(bundle.manifest, runtime)
    return QueryContext(bundle, embedder, index, predictor)


@dataclass
class ImageAnswer:
    """What the bundle says about one photo: its look-alikes and (with a head) its breeds."""

    lookalikes: list[dict[str, Any]]
    breeds: list[tuple[str, float]]


def look_up_image(ctx: QueryContext, image: str | Path, k: int = 8,
                  top_breeds: int = 3) -> ImageAnswer:
    """Decode and embed one image file once; its k look-alikes and top breeds."""
    from embed.backbones import preprocess
    from embed.images import read_and_decode

    _, decoded = read_and_decode(str(image), ctx.embedder.image_size)
    pixels = decoded.pixels[None]
    vectors = ctx.embedder.embed_pixels(pixels)
    hits = [vars(n) for n in ctx.index.search(vectors, k)[0]]
    breeds: list[tuple[str, float]] = []
    if ctx.predictor is not None and top_breeds:
        inputs = preprocess(pixels.astype(np.float32), ctx.embedder.spec.preprocessing)
        breeds = ctx.predictor.predict_top_k_batch(vectors, inputs, top_breeds)[0]
    return ImageAnswer(hits, breeds)


def train_head(
    bundle_dir: str | Path,
    head: str = "finetune",
    c: float | None = None,
    params: Any = None,
    on_epoch: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """(Re)train one breed head on the bundle's split, then refresh the head comparison.

    Returns {"record": the head's manifest record, "comparison": the comparison section}.
    """
    from classify.comparison import compare_heads
    from classify.finetune import FinetuneParams, train_finetune_head
    from classify.heads import train_logreg_head
    from classify.logreg import DEFAULT_C

    bundle = Bundle.open(bundle_dir)
    if head == "logreg":
        record = train_logreg_head(bundle, DEFAULT_C if c is None else c)
    elif head == "finetune":
        record = train_finetune_head(bundle, params or FinetuneParams(), on_epoch)
    else:
        raise BundleError(f"unknown head {head!r}; choose logreg or finetune")
    return {"record": record, "comparison": compare_heads(bundle)}


def classify_folder(
    ctx: QueryContext,
    folder: str | Path,
    out_csv: str | Path,
    top_k: int = 5,
    batch_size: int = 32,
    on_start: Callable[[int], ProgressCallback | None] | None = None,
) -> dict[str, Any]:
    """One CSV row per image under folder: top-k breeds, nearest look-alike, or the error."""
    import pandas as pd

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SourceError(f"folder {folder} does not exist")
    paths = list(find_images(folder))
    if not paths:
        raise SourceError(f"no images found under {folder}")
    items = [ImageItem(i, str(p), None, "none") for i, p in enumerate(paths)]
    on_progress = on_start(len(items)) if on_start else None
    rows: list[dict[str, Any]] = []
    for step in ctx.embedder.embedded_batches(items, batch_size):
        b = step.batch
        ranked = ctx.predictor.predict_top_k_batch(
            step.vectors, b.inputs[b.ok], top_k) if (
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
    out_csv = Path(out_csv)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    failed = int((table["error"] != "").sum())
    return {"images": len(rows), "classified": len(rows) - failed, "failed": failed,
            "out": str(out_csv), "head": ctx.predictor.name if ctx.predictor else None}
