"""The app's logic as plain functions (no Streamlit): which bundle, the query photo (an upload
or a dataset row) and its prediction.

The prediction comes from `ui.queries.answer_query`, the very function behind the CLI's
`search`, with the same head (an image-input fine-tuned head included). The pages' tables
are in `ui.browse`, the manifest's facts in `ui.facts`. Pages call these and only lay out the
results, so everything here is tested without a browser.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.bundle import Bundle
from embed.errors import EmbedDogsError
from embed.images import ImageDecodeError, decode_image, read_and_decode
from embed.labels import spoken_breed
from ui.queries import answer_query, embed_photo

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
    pixels: np.ndarray | None = field(default=None, repr=False)  # an upload, decoded


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
        decoded = decode_image(data, embedder.image_size, UPLOAD_MAX_PIXELS)
        vectors, _ = embed_photo(embedder, decoded.pixels)  # as `search` embeds a file
        image = display_jpeg(data)
    except ImageDecodeError as exc:
        raise UploadRejected(
            f"{name} could not be read as a photo ({exc}). Upload a photo as {kinds}."
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # decodable for the model, not for display
        raise UploadRejected(f"{name} could not be shown ({exc}).") from None
    return Query(np.asarray(vectors[0], np.float32), name, image=image, pixels=decoded.pixels)


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
    return spoken_breed(breed) if breed else "unknown breed"


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
    confident: bool = True  # the head and the nearest look-alikes agree on the breed

    @property
    def breed(self) -> str:
        return self.ranked[0][0]

    @property
    def probability(self) -> float:
        return self.ranked[0][1]

    @property
    def sure(self) -> bool:
        """A breed shown as the answer: the head agrees with the look-alikes and is sure."""
        return self.confident and self.probability >= self.threshold

    @property
    def maybe(self) -> str:
        """ "maybe <breed>": the head and the look-alikes disagree, so no sure answer."""
        return "" if self.confident else f"maybe {pretty_breed(self.breed)}"

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


def query_inputs(ctx: Any, query: Query) -> np.ndarray | None:
    """The query's preprocessed photo for a head that reads images: an upload's decoded pixels,
    or a dataset photo read from its file. None when the head reads vectors, or the file of a
    dataset photo is gone."""
    if ctx.predictor is None or not ctx.predictor.needs_images:
        return None
    pixels = query.pixels
    if pixels is None and query.position is not None:
        path = str(ctx.index.metadata.iloc[int(query.position)]["path"])
        try:
            pixels = read_and_decode(path, ctx.embedder.image_size)[1].pixels
        except ImageDecodeError:
            return None
    return None if pixels is None else ctx.embedder.inputs_from_pixels(pixels[None])


def predict(ctx: Any, query: Query, k: int = TOP_BREEDS,
            threshold: float = NOT_SURE_BELOW) -> Prediction | None:
    """The head's top-k breeds for the query and the open-set gate's verdict, from
    `ui.queries.answer_query` (what `embed-dogs search` prints) with the context's own head.
    None when the bundle has no head, or its image-input head has no photo to read."""
    if ctx.predictor is None:
        return None
    answer = answer_query(ctx, query.vector, query_inputs(ctx, query), k=1, top_breeds=k)
    if not answer.breeds:
        return None
    return Prediction(answer.breeds, threshold, answer.verdict, answer.why, ctx.known_breeds,
                      answer.confident)
