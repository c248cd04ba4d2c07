"""The app's logic as plain functions (no Streamlit): which bundle, queries, uploads, look-alike
galleries with a breed filter, the 2-D map and the report.

Pages call these and only lay out the results, so everything here is tested without a browser.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from classify.evaluation import stored_metrics
from embed.bundle import Bundle
from embed.errors import EmbedDogsError
from embed.images import ImageDecodeError

BUNDLE_ENV = "EMBED_DOGS_BUNDLE"
MAX_UPLOAD_ENV = "EMBED_DOGS_UI_MAX_UPLOAD_MB"
MAX_UPLOAD_MB = 10
UPLOAD_TYPES = ("jpg", "jpeg", "png", "webp", "bmp", "gif")  # as the CLI (gif: first frame)
# One upload's decoded RGB stays near 100 MB at this size (plus the downscaled copies), so a
# small file claiming a huge canvas cannot take gigabytes; the header is read before decoding.
UPLOAD_MAX_PIXELS = 36_000_000
NOT_SURE_BELOW = 0.5  # top-1 probability under this is shown as "not sure"
TOP_BREEDS = 5
UNLABELLED = "(unlabelled)"
FILTERS = {"all": "All breeds", "same": "Same breed as prediction", "other": "Other breeds"}


# ---- which bundle ---------------------------------------------------------------------------
def bundle_from_args(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """`--bundle DIR` after `streamlit run ui/app.py --`, else `$EMBED_DOGS_BUNDLE`, else None."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--bundle")
    known, _ = parser.parse_known_args(list(argv))
    value = known.bundle or environ.get(BUNDLE_ENV) or None
    return str(Path(value).expanduser().resolve()) if value else None


def build_instructions(bundle: str | None) -> str:
    """The commands that make a bundle and open it in the app."""
    out = bundle or "dogs-bundle"
    return (
        f"embed-dogs build-index --source tfds:stanford_dogs --out {out}\n"
        f"# or a folder of photos, one sub-folder per breed: --source PHOTOS/\n"
        f"embed-dogs ui --bundle {out}"
    )


@dataclass(frozen=True)
class BundleRef:
    """A bundle folder and its identity now: the manifest's inode, size and modification
    time, which a rebuild, `add` or `remove` (each replaces the manifest) all change."""

    path: str
    identity: str

    @classmethod
    def of(cls, path: str) -> BundleRef:
        try:
            stat = os.stat(Path(path) / "manifest.json")
        except OSError:
            return cls(path, "missing")
        return cls(path, f"{stat.st_ino}-{stat.st_size}-{stat.st_mtime_ns}")


# ---- queries ---------------------------------------------------------------------------------
class UploadRejected(EmbedDogsError):
    """An uploaded file the app will not use; the message says why, for the user."""


@dataclass
class Query:
    """The photo whose breed and look-alikes are shown."""

    vector: np.ndarray
    name: str
    position: int | None = None  # its row in the bundle, when the photo is a dataset image
    label: str | None = None  # its known breed, for dataset images
    image: bytes | None = field(default=None, repr=False)  # display JPEG for uploads


def max_upload_mb(environ: Mapping[str, str] | None = None) -> int:
    """The upload size limit in MB (`$EMBED_DOGS_UI_MAX_UPLOAD_MB`, default 10)."""
    raw = (environ if environ is not None else os.environ).get(MAX_UPLOAD_ENV)
    try:
        return max(1, int(raw)) if raw else MAX_UPLOAD_MB
    except ValueError:
        return MAX_UPLOAD_MB


def query_from_upload(name: str, data: bytes, embedder: Any, limit_mb: int | None = None) -> Query:
    """Embed an uploaded or camera photo; UploadRejected (with a clear message) if unusable."""
    from ui.thumbnails import display_jpeg

    limit_mb = limit_mb or max_upload_mb()
    kinds = ", ".join(t.upper() for t in UPLOAD_TYPES if t != "jpeg")
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix and suffix not in UPLOAD_TYPES:
        raise UploadRejected(f"{name} is a .{suffix} file; upload a photo as {kinds}.")
    if len(data) > limit_mb * 1024 * 1024:
        raise UploadRejected(
            f"{name} is {len(data) / 1024 / 1024:.1f} MB; photos up to {limit_mb} MB are"
            " accepted. Please use a smaller photo."
        )
    try:
        vector = np.asarray(embedder.embed_image_bytes(data, UPLOAD_MAX_PIXELS), np.float32)
        image = display_jpeg(data)
    except ImageDecodeError as exc:
        raise UploadRejected(
            f"{name} could not be read as a photo ({exc}). Upload a photo as {kinds}."
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # decodable for the model, not for display
        raise UploadRejected(f"{name} could not be shown ({exc}).") from None
    return Query(vector, name, image=image)


class ShardVectors:
    """Row look-up in the bundle's memory-mapped shards: one vector without loading them all."""

    def __init__(self, bundle: Bundle) -> None:
        self.shards = list(bundle.iter_embedding_shards())
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, position: int) -> np.ndarray:
        if not 0 <= position < len(self):
            raise IndexError(f"row {position} is outside the bundle's {len(self)} rows")
        shard = int(np.searchsorted(self.starts, position, side="right")) - 1
        return np.array(self.shards[shard][position - self.starts[shard]], np.float32)


def query_from_row(vectors: ShardVectors, metadata: Any, position: int) -> Query:
    """A dataset image as the query, with its stored embedding."""
    row = metadata.iloc[int(position)]
    label = row["label"] if isinstance(row["label"], str) else None
    return Query(vectors.row(int(position)), file_name(str(row["path"])), int(position), label)


def pretty_breed(breed: str | None) -> str:
    """A breed as people write it (`english_foxhound` -> `english foxhound`), one way
    everywhere in the app."""
    return breed.replace("_", " ") if breed else "unknown breed"


def file_name(path: str) -> str:
    """The last part of a file path or tfds reference, for captions."""
    return path.rstrip("/").replace(":", "/").rsplit("/", 1)[-1] or path


# ---- predictions -----------------------------------------------------------------------------
@dataclass
class Prediction:
    """Top breeds with probabilities and whether the best one is sure enough to name."""

    ranked: list[tuple[str, float]]
    threshold: float = NOT_SURE_BELOW
    verdict: str | None = None  # the open-set gate's: dog, unknown_breed, not_a_dog
    why: str = ""
    known_breeds: int = 0

    @property
    def breed(self) -> str:
        return self.ranked[0][0]

    @property
    def probability(self) -> float:
        return self.ranked[0][1]

    @property
    def sure(self) -> bool:
        return self.probability >= self.threshold

    def table(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.ranked, columns=["breed", "probability"])

    @property
    def names_a_breed(self) -> bool:
        """False when the gate says it is no dog, or none of the bundle's breeds."""
        return self.verdict in (None, "dog")

    @property
    def headline(self) -> str:
        """What the app says instead of a breed, for the gate's two refusals."""
        if self.verdict == "not_a_dog":
            return "This doesn't look like a dog"
        if self.verdict == "unknown_breed":
            return f"A dog, but not one of the {self.known_breeds} breeds I know"
        return ""


def predict(predictor: Any, vector: np.ndarray, k: int = TOP_BREEDS,
            threshold: float = NOT_SURE_BELOW) -> Prediction | None:
    """The head's top-k breeds for one vector; None when the bundle has no head."""
    if predictor is None:
        return None
    return Prediction(predictor.predict_top_k(np.atleast_2d(vector), k)[0], threshold)


def judge(prediction: Prediction | None, ctx: Any, vector: np.ndarray) -> Prediction | None:
    """The open-set gate's verdict on one query, written into its prediction (which keeps the
    ranked breeds for reference). Without a gate or a head, nothing changes."""
    gate = getattr(ctx, "gate", None)
    if prediction is None or gate is None:
        return prediction
    from classify.gate import knn_from_neighbours

    hits = ctx.index.search(np.atleast_2d(vector), gate.k)[0]
    knn = float(knn_from_neighbours([[h.score for h in hits]], gate.k)[0])
    head = ctx.predictor.name if ctx.predictor is not None else None
    prediction.verdict = gate.verdict(knn, prediction.probability, head)
    prediction.why = gate.explain(prediction.verdict, knn, prediction.probability, head)
    prediction.known_breeds = gate.known_breeds or len(ctx.predictor.classes)
    return prediction


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
    for name, record in (bundle.manifest.get("heads") or {}).items():
        files = record.get("report") or {}
        metrics = stored_metrics(bundle.root, record)
        per_breed = pd.DataFrame(metrics.get("per_breed") or [])
        if "breed" in per_breed:
            per_breed["breed"] = per_breed["breed"].map(pretty_breed)
        png = bundle.root / files["confusion"] if files.get("confusion") else None
        reports.append(HeadReport(name, metrics, per_breed,
                                  png if png is not None and png.is_file() else None))
    return reports


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


def gate_facts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The open-set gate's thresholds and the figures behind them, for the report page."""
    gate = manifest.get("gate")
    if not gate:
        return [("open-set gate", "none (needs labelled train and test rows)")]
    figures = gate.get("figures") or {}
    rows = [
        ("signal", f"kNN similarity: mean cosine similarity to the {gate.get('k')} nearest"
                   " photos of the bundle"),
        ("dog: at least", f"{gate.get('dog_threshold'):.3f} (keeps"
                          f" {percent(figures.get('test_dogs_above_dog_threshold'))} of"
                          f" {figures.get('test_dogs')} held-out test dogs)"),
        ("not a dog: below", f"{gate.get('not_dog_threshold'):.3f} (each breed left out in"
                             " turn: 95% of those dogs stay above)"),
    ]
    for head, record in (gate.get("heads") or {}).items():
        floor = record.get("top_probability_floor")
        rows.append((f"{head} head: top probability floor",
                     "-" if floor is None else f"{floor:.1%} (below: unknown breed)"))
    rows.append(("simulated unknown breeds not called dog",
                 percent(figures.get("simulated_unknown_breeds_not_called_dog"))))
    return rows


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


def engine_facts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The engine that wrote the shards, when a Ray cluster did: its size and speed."""
    engine = (manifest.get("embeddings") or {}).get("engine") or {}
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
    if not check:
        return ""
    if check.get("passed"):
        drop = check.get("top1_drop_points")
        top1 = f"top-1 {-drop:+.1f} points, " if drop is not None else ""
        return (f"; int8 task check passed: {top1}neighbour overlap@10"
                f" {check.get('overlap_at_10')} on {check.get('rows')} images")
    return f"; int8 not used: {check.get('reason')}"


def manifest_facts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """The manifest as (name, value) rows a person can read: the one formatter that `info`,
    `build-index`'s summary and the app's report and sidebar all show."""
    bb = manifest.get("backbone") or {}
    src = manifest.get("source") or {}
    idx = manifest.get("index") or {}
    counts = manifest.get("counts") or {}
    runtime = bb.get("runtime") or {}
    rows = [
        ("backbone", f"{bb.get('name')} @ {bb.get('image_size')} px, dim {bb.get('dim')},"
                     f" preprocessing {bb.get('preprocessing')}"),
    ]
    if bb.get("lineage"):
        rows.append(("fine-tuned from", str(bb["lineage"].get("head_file"))))
    parity = runtime.get("parity") or {}
    rows += [
        ("weights", str(bb.get("weights"))),
        ("weights sha256", str(bb.get("weights_sha256", ""))[:16] + "…"),
        ("runtime", str(runtime.get("name", "-")) + (
            f" (parity with Keras: mean cosine {parity['mean_cosine']:.5f})"
            if parity.get("mean_cosine") is not None else "") + int8_summary(runtime)),
        *engine_facts(manifest),
        ("source", f"{src.get('kind')} {src.get('location')}"),
        ("splits", ", ".join(f"{k} {v}" for k, v in (src.get("splits") or {}).items()) or "-"),
        ("images", ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"),
        ("index", f"{idx.get('kind')} ({idx.get('factory')}), metric {idx.get('metric')}"),
        ("recall@10 vs exact search", str(idx.get("recall@10"))),
    ]
    fixed = (manifest.get("embeddings") or {}).get("fixed_seconds") or {}
    if fixed:
        rows.append(("one-time costs", ", ".join(f"{k} {v:.1f} s" for k, v in fixed.items())
                     + f" (total {sum(fixed.values()):.1f} s, not in images/s)"))
    for name, head in (manifest.get("heads") or {}).items():
        rows.append((f"head {name}: test top-1 / top-5", head_summary(head.get("metrics") or {})))
    best = (manifest.get("comparison") or {}).get("best")
    if best:
        by = (manifest.get("comparison") or {}).get("by", "test top1")
        rows.append(("best head", f"{best} (by {by})"))
    gate = manifest.get("gate")
    rows.append(("open-set gate", f"kNN >= {gate['dog_threshold']:.3f} dog, <"
                 f" {gate['not_dog_threshold']:.3f} not a dog" if gate else "none"))
    rows += [
        ("created", str(manifest.get("created_at"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())),
    ]
    return rows


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
