"""Several uploaded photos at once, without Streamlit: `classify`'s very function
(`ui.queries.classify_images`) writes their CSV, so the app's download and the CLI's file have
the same columns and values; the table the app shows (with thumbnails) is read from it."""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed.sources import ImageListing, Rejected
from ui.core import UPLOAD_TYPES, max_upload_mb, pretty_breed
from ui.queries import classify_images
from ui.thumbnails import data_uri, display_jpeg, file_thumb

BATCH_THUMB = 96  # px, the table's thumbnails


@dataclass
class BatchAnswer:
    """What the app shows for several uploads: the CSV `classify` would write (paths are the
    uploads' file names) and one display row per photo."""

    csv: str
    table: Any  # pandas DataFrame: photo, file, verdict, breed, probability, look-alike, ...


def upload_thumb(data: bytes, size: int = BATCH_THUMB) -> str | None:
    try:
        return data_uri(display_jpeg(data, size))
    except (OSError, ValueError, SyntaxError):
        return None


def refusal(name: str, data: bytes, limit_mb: int) -> str | None:
    """Why an upload is not classified at all (type, size), as the single upload says it."""
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix and suffix not in UPLOAD_TYPES:
        return f"a .{suffix} file; upload photos as {', '.join(UPLOAD_TYPES)}"
    if len(data) > limit_mb * 1024 * 1024:
        return f"{len(data) / 1024 / 1024:.1f} MB; photos up to {limit_mb} MB are accepted"
    return None


def classify_uploads(ctx: Any, uploads: list[tuple[str, bytes]], top_k: int = 5,
                     limit_mb: int | None = None) -> BatchAnswer:
    """Classify uploaded photos (name, bytes) as `embed-dogs classify` does: the files go to a
    private temporary folder, `classify_images` writes the CSV, names replace the paths."""
    import pandas as pd

    limit_mb = limit_mb or max_upload_mb()
    names: dict[str, str] = {}
    thumbs: dict[str, str | None] = {}  # by temporary path: two uploads may share a name
    with tempfile.TemporaryDirectory(prefix="embed-dogs-batch-") as tmp:
        paths, rejected = [], []
        for i, (name, data) in enumerate(uploads):
            why = refusal(name, data, limit_mb)
            if why:
                rejected.append(Rejected(name, why))
                continue
            path = Path(tmp) / f"{i:04d}" / Path(name).name  # two uploads may share a name
            path.parent.mkdir()
            path.write_bytes(data)
            paths.append(path)
            names[str(path)] = name
            thumbs[str(path)] = upload_thumb(data)
        buffer = io.StringIO()
        classify_images(ctx, ImageListing(paths, rejected), buffer, top_k, fmt="csv")
    table = pd.read_csv(io.StringIO(buffer.getvalue()), keep_default_na=False)
    photos = [thumbs.get(p) for p in table["path"].astype(str)]
    table["path"] = [names.get(p, p) for p in table["path"].astype(str)]
    csv = table.to_csv(index=False)  # what classify_images writes, with names for paths
    return BatchAnswer(csv, display_table(table, photos, ctx))


def display_table(table: Any, photos: list[str | None], ctx: Any) -> Any:
    """One row a photo for the app: its thumbnail, the verdict, the breed only where the gate
    names one, its probability, and the nearest look-alike with its thumbnail."""
    import pandas as pd

    sha = {}
    if ctx is not None and len(ctx.index.metadata):
        meta = ctx.index.metadata
        sha = dict(zip(meta["path"].astype(str), meta["sha256"].astype(str), strict=False))
    rows = []
    for photo, (_, row) in zip(photos, table.iterrows(), strict=True):
        verdict = str(row.get("verdict", "") or "")
        names_breed = verdict in ("", "dog") and row.get("breed_1", "") != ""
        look = str(row.get("lookalike_path", "") or "")
        rows.append({
            "photo": photo,
            "file": row["path"],
            "verdict": verdict.replace("_", " ") or ("could not be read" if row["error"]
                                                     else "-"),
            "breed": pretty_breed(row["breed_1"]) if names_breed else "-",
            "probability": f"{float(row['prob_1']):.1%}" if names_breed
            and row.get("prob_1", "") != "" else "-",
            "look-alike": file_thumb(look, sha.get(look, ""), BATCH_THUMB) if look else None,
            "look-alike breed": pretty_breed(row["lookalike_breed"])
            if row.get("lookalike_breed", "") else "-",
            "similarity": f"{float(row['lookalike_score']):.2f}" if look else "-",
            "problem": str(row["error"]) or "",
        })
    return pd.DataFrame(rows)
