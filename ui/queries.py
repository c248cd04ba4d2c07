"""Answering queries on a bundle: loading what they need once (`QueryContext`), one photo's
look-alikes, breeds and verdict (`answer_query`, the one code path the CLI's `search` and the
app share), many photos into a CSV (`classify_images`), and the evidence gate's verdicts.

Look-alikes come from the learned space when the bundle has a current one (or `--space`
says which); the gate's kNN signal always comes from the raw space, which it was calibrated
in; a breed is sure only when the head and the nearest look-alikes agree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from classify.breed_head import BreedHead
from classify.gate import VERDICTS
from classify.gate_evidence import Answer, EvidenceGate
from classify.gate_store import load_gate
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
from index.space_store import LearnedLookalikes, choose_space


@dataclass
class QueryContext:
    """What answering queries on a bundle needs, loaded once (the app caches this)."""

    bundle: Bundle
    embedder: Embedder
    index: LookalikeIndex
    predictor: BreedHead | None
    gate: EvidenceGate | None = None  # the evidence gate; None: the bundle has none
    space: str = "raw"  # the look-alikes' space: raw or learned
    space_note: str = ""  # why raw serves where learned was wanted or expected

    @property
    def known_breeds(self) -> int:
        return len(self.gate.classes) if self.gate is not None else (
            len(self.predictor.classes) if self.predictor is not None else 0)


def open_for_queries(
    bundle_dir: str | Path, head: str | None = None, runtime: str | None = None,
    accepts_images: bool = False, space: str | None = None,
) -> QueryContext:
    """`accepts_images`: the caller passes preprocessed images along with vectors, so the
    default head may be a fine-tuned one that needs images. `space`: "raw", "learned" or
    None (learned when the bundle has a current learned space)."""
    from embed.reading import read_whole

    def load(bundle: Bundle) -> QueryContext:
        learned, note = choose_space(bundle, space)
        index = LookalikeIndex(bundle) if learned is None else LearnedLookalikes(bundle, learned)
        predictor = load_predictor(bundle, head, accepts_images)
        embedder = serving_embedder(bundle, runtime)
        return QueryContext(bundle, embedder, index, predictor, load_gate(bundle),
                            "raw" if learned is None else "learned", note)

    return read_whole(bundle_dir, load)  # one commit, even while another process writes


@dataclass
class ImageAnswer:
    """What the bundle says about one photo: its look-alikes and (with a head) its breeds."""

    lookalikes: list[dict[str, Any]]
    breeds: list[tuple[str, float]]
    verdict: str | None = None  # dog, unknown_breed, not_a_dog; None without a gate
    knn_similarity: float | None = None
    why: str = ""
    confident: bool = True  # a breed may be shown as the answer (False: "maybe <breed>")


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
    answers, knn = gate_verdicts(ctx, vectors, [breeds], [found])
    if answers[0] is None:
        return ImageAnswer(hits, breeds[:top_breeds])
    a = answers[0]
    return ImageAnswer(hits, breeds[:top_breeds], a.verdict, knn[0], a.why, a.confident)


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
        answers, _ = gate_verdicts(ctx, step.vectors, ranked, nearest) if len(
            step.vectors) else ([], [])
        j = 0
        for i, row_id in enumerate(b.row_ids.tolist()):
            row: dict[str, Any] = {"path": items[row_id].ref}
            if not b.ok[i]:
                row["error"] = b.reasons[i]
                rows.append(row)
                continue
            row["error"] = ""
            row["verdict"] = answers[j].verdict if answers[j] else ""
            row["sure"] = answers[j].confident if answers[j] else ""
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
        check_out_file(out_path, overwrite=True)  # the CLI asked about overwriting already
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


def check_out_file(out: Path, overwrite: bool) -> None:
    """Refuse an --out that cannot be written: a folder, a file in a missing folder, or an
    existing file without `overwrite`. The CLI calls it before any photo is read."""
    if out.is_dir():
        raise SourceError(f"--out {out} is a folder; name a file, e.g."
                          f" {out / 'predictions.csv'}")
    if not out.parent.is_dir():
        raise SourceError(f"--out {out}: folder {out.parent} does not exist; create it first")
    if out.exists() and not overwrite:
        raise SourceError(f"{out} exists; pass --overwrite to replace it, or choose"
                          " another --out")


def classify_folder(ctx: QueryContext, folder: str | Path, out_csv: str | Path,
                    top_k: int = 5, batch_size: int = DEFAULT_BATCH_SIZE,
                    on_start: Callable[[int], ProgressCallback | None] | None = None,
                    ) -> dict[str, Any]:
    """Every photo under a folder into a CSV (the library call behind `classify FOLDER`)."""
    return classify_images(ctx, resolve_inputs([str(folder)]), out_csv, top_k, batch_size,
                           on_start)


# ---- the evidence gate: is it one of the bundle's dogs? -------------------------------------
def gate_verdicts(
    ctx: QueryContext, vectors: np.ndarray, ranked: list[list[tuple[str, float]]],
    nearest: list[list[Any]],
) -> tuple[list[Answer | None], list[float | None]]:
    """Per query: the evidence gate's answer and the raw-space kNN similarity it used, from
    the raw vectors, the head's ranked breeds (may be empty) and the look-alikes found (best
    first, the context's space). (None, None) per query without a gate."""
    n = len(vectors)
    if ctx.gate is None:
        return [None] * n, [None] * n
    from classify.gate import knn_from_neighbours

    knn = knn_from_neighbours(ctx.index.raw_similarities(vectors, ctx.gate.k), ctx.gate.k)
    heads = [r[0][0] for r in ranked] if ranked and all(ranked) else None
    neighbours = [[h.label for h in row] for row in nearest]
    answers = ctx.gate.verdicts(vectors, knn, heads, neighbours if heads else None)
    return list(answers), [float(s) for s in knn]
