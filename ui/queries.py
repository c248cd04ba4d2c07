"""Answering queries on a bundle: loading what they need once (`QueryContext`), one photo's
look-alikes, breeds and verdict (`answer_query`, the one code path the CLI's `search` and the
app share), many photos into a CSV (`classify_images`), and the open-set gate's verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from classify.breed_head import BreedHead
from classify.gate import VERDICTS, Gate
from classify.heads import load_predictor
from embed.atomic import atomic_path
from embed.build import ProgressCallback
from embed.bundle import Bundle
from embed.embedder import Embedder, serving_embedder
from embed.errors import SourceError
from embed.images import read_and_decode
from embed.inputs import resolve_inputs
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.sources import ImageItem, ImageListing
from index.lookalikes import LookalikeIndex


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
    from embed.reading import read_whole

    def load(bundle: Bundle) -> QueryContext:
        index = LookalikeIndex(bundle)
        predictor = load_predictor(bundle, head, accepts_images)
        embedder = serving_embedder(bundle, runtime)
        return QueryContext(bundle, embedder, index, predictor,
                            Gate.from_manifest(bundle.manifest, bundle.root))

    return read_whole(bundle_dir, load)  # one commit, even while another process writes


@dataclass
class ImageAnswer:
    """What the bundle says about one photo: its look-alikes and (with a head) its breeds."""

    lookalikes: list[dict[str, Any]]
    breeds: list[tuple[str, float]]
    verdict: str | None = None  # dog, unknown_breed, not_a_dog; None without a gate
    knn_similarity: float | None = None
    why: str = ""


def embed_photo(embedder: Embedder, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One decoded photo (size x size x 3, uint8) as every query embeds it: (its unit vector,
    shape (1, dim); its preprocessed inputs, shape (1, size, size, 3), for a head that reads
    images)."""
    inputs = embedder.inputs_from_pixels(np.asarray(pixels)[None])
    return embedder.embed_inputs(inputs), inputs


def answer_query(ctx: QueryContext, vectors: np.ndarray, inputs: np.ndarray | None = None,
                 k: int = 8, top_breeds: int = 3) -> ImageAnswer:
    """One query's k look-alikes, top breeds and the gate's verdict: the one code path of the
    CLI's `search` and the app.

    `vectors` is the query's unit vector (1, dim); `inputs` its preprocessed image, which a
    head that reads images needs (without it, such a head names no breed)."""
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    found = ctx.index.search(vectors, max(k, ctx.gate.k if ctx.gate else 1))[0]
    hits = [vars(n) for n in found[:k]]
    breeds: list[tuple[str, float]] = []
    head_runs = ctx.predictor is not None and (inputs is not None
                                               or not ctx.predictor.needs_images)
    if head_runs and (top_breeds or ctx.gate):
        breeds = ctx.predictor.predict_top_k(vectors, max(top_breeds, 1), inputs)[0]
    verdict, knn = gate_verdicts(ctx, [[n.score for n in found]], [breeds])
    why = ctx.gate.explain(verdict[0], knn[0], breeds[0][1] if breeds else None,
                           ctx.predictor.name if ctx.predictor else None) if ctx.gate else ""
    return ImageAnswer(hits, breeds[:top_breeds], verdict[0],
                       None if knn[0] is None else float(knn[0]), why)


def look_up_image(ctx: QueryContext, image: str | Path, k: int = 8,
                  top_breeds: int = 3) -> ImageAnswer:
    """Decode and embed one image file once; its k look-alikes, top breeds and verdict."""
    _, decoded = read_and_decode(str(image), ctx.embedder.image_size)
    vectors, inputs = embed_photo(ctx.embedder, decoded.pixels)
    return answer_query(ctx, vectors, inputs, k, top_breeds)


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
