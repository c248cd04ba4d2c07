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
def projection_methods() -> list[str]:
    """PCA always; UMAP when umap-learn is installed."""
    try:
        import umap  # noqa: F401
    except ImportError:
        return ["PCA"]
    return ["PCA", "UMAP"]


PCA_FIT_ROWS = 5000  # PCA is fitted on a sample this big, then applied to every row


def project_2d(vectors: np.ndarray, method: str = "PCA", seed: int = 0) -> np.ndarray:
    """2-D coordinates of the embeddings (PCA, or UMAP with cosine distance)."""
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) < 3:
        return np.zeros((len(vectors), 2), np.float32)
    if method == "UMAP":
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(
            vectors
        )
    from sklearn.decomposition import PCA

    sample = vectors
    if len(vectors) > PCA_FIT_ROWS:
        rng = np.random.default_rng(seed)
        sample = vectors[np.sort(rng.choice(len(vectors), PCA_FIT_ROWS, replace=False))]
    pca = PCA(n_components=2, random_state=seed).fit(sample)
    return pca.transform(vectors).astype(np.float32)


def map_table(bundle: Bundle, method: str = "PCA") -> Any:
    """One row per image: position, x, y, breed, file; for the map page."""
    metadata = bundle.metadata()
    xy = project_2d(bundle.embeddings(), method)
    table = metadata[["path"]].copy()
    table.insert(0, "position", np.arange(len(metadata)))
    table["x"], table["y"] = xy[:, 0], xy[:, 1]
    table["breed"] = [pretty_breed(b) if b != UNLABELLED else b for b in
                      metadata["label"].where(metadata["label"].notna(), UNLABELLED).astype(str)]
    table["file"] = [file_name(p) for p in metadata["path"].astype(str)]
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
