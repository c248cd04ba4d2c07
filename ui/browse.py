"""The tables the app's pages lay out, without Streamlit: breed groups and paging, the 2-D
map, the heads' reports, and the map's click selection."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classify.evaluation import stored_metrics
from embed.bundle import Bundle
from ui.core import UNLABELLED, file_name, pretty_breed


# ---- browsing --------------------------------------------------------------------------------
def breed_positions(metadata: Any) -> dict[str, np.ndarray]:
    """Breed -> its rows (bundle positions) in order; unlabelled rows under "(unlabelled)"."""
    labels = metadata["label"].where(metadata["label"].notna(), UNLABELLED).astype(str)
    groups = {
        str(breed): np.asarray(idx, np.int64)
        for breed, idx in labels.groupby(labels, sort=True).indices.items()
    }
    return dict(sorted(groups.items()))


def page_slice(positions: np.ndarray, page: int, per_page: int) -> tuple[np.ndarray, int]:
    """Rows on page `page` (1-based, clamped) and the number of pages."""
    pages = max(1, -(-len(positions) // per_page))
    page = min(max(1, page), pages)
    return positions[(page - 1) * per_page: page * per_page], pages


# ---- map -------------------------------------------------------------------------------------
UMAP_MIN_ROWS = 50  # below this UMAP's neighbour graph says little: PCA is shown instead
# 30 colours in six hue families, dark and light: neighbouring breeds on the map stay apart
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#393b79", "#dbdb8d", "#9edae5", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363", "#000000",
)
HOVER_THUMBS_MAX_ROWS = 3000  # above this the map's hover shows no photo (too heavy a chart)
HOVER_THUMB = 64


def projection_methods() -> list[str]:
    """UMAP first (a declared dependency), PCA always; PCA alone if umap-learn is missing.
    Asks whether it is installed without importing it (see `import_umap`)."""
    from importlib.util import find_spec

    return ["UMAP", "PCA"] if find_spec("umap") is not None else ["PCA"]


def import_umap() -> Any:
    """umap-learn without TensorFlow. Its package `__init__` imports the optional
    ParametricUMAP, which imports TensorFlow when it is installed (as here): 5 s and several
    hundred MB in an app that otherwise serves through LiteRT without it. Marking that one
    submodule absent makes umap take its own "TensorFlow not installed" path; UMAP itself
    does not use it."""
    import sys

    if "umap" not in sys.modules:
        sys.modules.setdefault("umap.parametric_umap", None)  # type: ignore[arg-type]
    import umap

    return umap


def projection_for(method: str, rows: int) -> tuple[str, str]:
    """(the method actually used, why it differs from the one asked for, or "")."""
    if method == "UMAP" and rows < UMAP_MIN_ROWS:
        return "PCA", (f"UMAP needs at least {UMAP_MIN_ROWS} photos to say something; this"
                       f" bundle has {rows}, so PCA is shown")
    return method, ""


def hover_thumbnails(metadata: Any, size: int = HOVER_THUMB) -> list[str | None] | None:
    """Small data-URI thumbnails per row for the map's hover, or None for big bundles."""
    from ui.thumbnails import file_thumb

    if len(metadata) > HOVER_THUMBS_MAX_ROWS:
        return None
    return [file_thumb(str(p), str(h), size) for p, h in
            zip(metadata["path"].astype(str), metadata["sha256"].astype(str), strict=True)]


def query_point(table: Any, query: Any, neighbours: list[int]) -> tuple[float, float] | None:
    """Where the query sits on the map: its own point for a dataset photo, else the middle of
    its nearest photos (a projection of a new photo would need the fitted UMAP)."""
    if query is None:
        return None
    if query.position is not None:
        row = table.iloc[int(query.position)]
        return float(row["x"]), float(row["y"])
    if not neighbours:
        return None
    near = table.iloc[neighbours]
    return float(near["x"].mean()), float(near["y"].mean())


PCA_FIT_ROWS = 5000  # PCA is fitted on a sample this big, then applied to every row


def project_2d(vectors: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the embeddings (PCA, or UMAP with cosine distance)."""
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) < 3:
        return np.zeros((len(vectors), 2), np.float32)
    if method == "UMAP" and len(vectors) >= UMAP_MIN_ROWS:
        umap = import_umap()
        return np.asarray(umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                                    n_jobs=1).fit_transform(vectors), np.float32)
    from sklearn.decomposition import PCA

    sample = vectors
    if len(vectors) > PCA_FIT_ROWS:
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(len(vectors), PCA_FIT_ROWS, replace=False))]
    pca = PCA(n_components=2, random_state=seed).fit(sample)
    return pca.transform(vectors).astype(np.float32)


def map_table(bundle: Bundle, method: str = "PCA", thumbs: bool = False) -> Any:
    """One row per image: position, x, y, breed, file (and `image`, a hover thumbnail, with
    `thumbs` on bundles small enough); for the map page."""
    metadata = bundle.metadata()
    xy = project_2d(bundle.embeddings(), projection_for(method, len(metadata))[0])
    table = metadata[["path"]].copy()
    table.insert(0, "position", np.arange(len(metadata)))
    table["x"], table["y"] = xy[:, 0], xy[:, 1]
    table["breed"] = [pretty_breed(b) if b != UNLABELLED else b for b in
                      metadata["label"].where(metadata["label"].notna(), UNLABELLED).astype(str)]
    table["file"] = [file_name(p) for p in metadata["path"].astype(str)]
    images = hover_thumbnails(metadata) if thumbs else None
    if images is not None:
        table["image"] = images
    return table.drop(columns=["path"])


# ---- report ----------------------------------------------------------------------------------
@dataclass
class HeadReport:
    """A breed head's stored test metrics and report files."""

    name: str
    metrics: dict[str, Any]
    per_breed: Any  # pandas DataFrame
    confusion_png: Path | None


def head_reports(bundle: Bundle) -> list[HeadReport]:
    """Every head the manifest records, with its metrics JSON, per-breed table and plot."""
    import pandas as pd

    reports = []
    for name, record in bundle.manifest.heads.items():
        files = record.get("report") or {}
        metrics = stored_metrics(bundle.root, record)
        per_breed = pd.DataFrame(metrics.get("per_breed") or [])
        if "breed" in per_breed:
            per_breed["breed"] = per_breed["breed"].map(pretty_breed)
        png = bundle.root / files["confusion"] if files.get("confusion") else None
        reports.append(HeadReport(name, metrics, per_breed,
                                  png if png is not None and png.is_file() else None))
    return reports


def gate_dev_table(bundle: Bundle) -> Any:
    """report/gate_dev.csv (from `evaluate --not-dogs/--unknown-breeds`), or None."""
    import pandas as pd

    path = bundle.report_dir / "gate_dev.csv"
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def leakage_note(bundle: Bundle) -> str | None:
    from classify.leakage import leakage_warning

    return leakage_warning(bundle)


def selected_position(event: Any, param: str = "dog") -> int | None:
    """The bundle position of the point clicked on the map (Streamlit's chart selection state),
    or None when nothing is selected."""
    try:
        points = event["selection"][param]
    except (KeyError, TypeError, AttributeError):
        return None
    if isinstance(points, Mapping):  # some versions nest fields: {"position": [12]}
        values = points.get("position")
        points = [{"position": v} for v in values] if isinstance(values, list) else [points]
    for point in points or []:
        if isinstance(point, Mapping) and point.get("position") is not None:
            return int(point["position"])
    return None


# ---- the report's tables in words --------------------------------------------------------------
PER_BREED_COLUMNS = {"breed": "Breed", "precision": "Precision", "recall": "Recall",
                     "f1": "F1", "support": "Test photos"}
CONFUSED_COLUMNS = {"true": "True breed", "predicted": "Predicted as", "count": "Photos"}
GATE_DEV_COLUMNS = {
    "set": "Photo set", "kind": "Should be", "images": "Photos", "knn_auroc": "kNN AUROC",
    "knn_fpr_at_95": "kNN false positives at 95% dog recall", "head_auroc": "Head AUROC",
    "head_fpr_at_95": "Head false positives at 95% dog recall", "dog": "Called a known breed",
    "unknown_breed": "Called an unknown breed", "not_a_dog": "Called not a dog",
}
SHARES = ("knn_fpr_at_95", "head_fpr_at_95", "dog", "unknown_breed", "not_a_dog")
SCORES = ("knn_auroc", "head_auroc")
MISSING = "–"


def human_gate_dev(table: Any) -> Any:
    """report/gate_dev.csv for people: named columns, shares as percentages, "–" where a
    figure does not apply (the held-out dogs have no AUROC against themselves)."""
    import pandas as pd

    out = pd.DataFrame()
    for column, name in GATE_DEV_COLUMNS.items():
        if column not in table:
            continue
        values = table[column]
        if column in SHARES:
            out[name] = [MISSING if pd.isna(v) else f"{v:.1%}" for v in values]
        elif column in SCORES:
            out[name] = [MISSING if pd.isna(v) else f"{v:.3f}" for v in values]
        elif column == "kind":
            out[name] = [str(v).replace("_", " ") for v in values]
        else:
            out[name] = [MISSING if pd.isna(v) else str(v) for v in values]
    return out


def human_confusions(pairs: list[dict[str, Any]]) -> Any:
    import pandas as pd

    table = pd.DataFrame(pairs or [], columns=list(CONFUSED_COLUMNS))
    for column in ("true", "predicted"):
        table[column] = table[column].map(pretty_breed)
    return table.rename(columns=CONFUSED_COLUMNS)


def test_predictions(bundle: Bundle, predictor: Any) -> Any:
    """The serving head's answer for every labelled test photo (position, path, sha256, true,
    predicted, probability), from the stored vectors; None for a head that reads images (it
    would have to decode every test photo again) or without a head."""
    import pandas as pd

    if predictor is None or predictor.needs_images:
        return None
    metadata = bundle.metadata()
    mask = (metadata["label"].notna() & (metadata["split"] == "test")).to_numpy()
    columns = ["position", "path", "sha256", "true", "predicted", "probability"]
    if not mask.any():
        return pd.DataFrame(columns=columns)
    ranked = predictor.predict_top_k(bundle.embeddings()[mask], 1, None)
    rows = metadata[mask]
    return pd.DataFrame({
        "position": np.flatnonzero(mask), "path": rows["path"].astype(str).to_numpy(),
        "sha256": rows["sha256"].astype(str).to_numpy(),
        "true": rows["label"].astype(str).to_numpy(),
        "predicted": [r[0][0] for r in ranked], "probability": [r[0][1] for r in ranked],
    }, columns=columns)


def confusion_cells(predictions: Any) -> list[tuple[str, str, int]]:
    """(true, predicted, photos) for every non-empty cell of the confusion matrix: mistakes
    first (most photos first), then the diagonal."""
    counts = predictions.groupby(["true", "predicted"]).size()
    cells = [(str(t), str(p), int(n)) for (t, p), n in counts.items()]
    return sorted(cells, key=lambda c: (c[0] == c[1], -c[2], c[0], c[1]))
