"""Where images come from: a local folder or a tensorflow-datasets dataset.

A source is a plain list of :class:`ImageItem` (row id, reference, label, split) plus a way
to read an item's bytes. Items are small; pixels are only ever decoded inside the pipeline.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import file_sha256
from embed.errors import SourceError
from embed.labels import clean_breed_name

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
DEFAULT_SOURCE = "tfds:stanford_dogs"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_SPLIT_SEED = 0
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
LINK_LEAVES_ROOT = "link leaves the source folder"


@dataclass(frozen=True)
class ImageItem:
    row_id: int
    ref: str  # absolute file path, or "tfds:<name>/<split>/<file name>"
    label: str | None
    split: str  # "train", "test" or "none" (unlabelled)
    sha256: str | None = None  # content hash taken while listing a folder (None: not read)


@dataclass(frozen=True)
class Rejected:
    """A folder entry that is not used as an image, with the reason a person reads."""

    path: str
    reason: str


@dataclass(frozen=True)
class ImageListing:
    """What a folder holds: usable image paths (sorted, walk order) and rejected entries."""

    paths: list[Path]
    rejected: list[Rejected]


@dataclass
class Source:
    """A resolved source: its items and, for tfds, a reader of encoded bytes in item order."""

    kind: str  # "folder" or "tfds"
    location: str
    items: list[ImageItem]
    split_origin: str  # "dataset", "hold_out", or "none"
    extra: dict[str, Any] = field(default_factory=dict)
    tfds_builder: Any = None  # for tfds: encoded images are read from here, split by split
    tfds_splits: tuple[str, ...] = ()
    rejected: list[Rejected] = field(default_factory=list)  # folder entries not used
    duplicates: int | None = None  # files repeating an earlier file's bytes; None: not checked

    @property
    def labelled(self) -> bool:
        return any(item.label is not None for item in self.items)

    def breeds(self) -> list[str]:
        return sorted({item.label for item in self.items if item.label is not None})

    def describe(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.split] = counts.get(item.split, 0) + 1
        return {
            "kind": self.kind,
            "location": self.location,
            "splits": counts,
            "split_origin": self.split_origin,
            "breeds": len(self.breeds()),
            "images": len(self.items),
            "rejected": len(self.rejected),
            **({} if self.duplicates is None else {"duplicates": self.duplicates}),
            **self.extra,
        }


def list_images(root: Path) -> ImageListing:
    """Image files under root, recursively, sorted, and every entry that is not used, with why.

    Never raises for one bad entry: symlink loops, broken links, links that leave root,
    unsupported formats and unreadable folders become rejected entries. Hidden files and
    folders (a leading ".") are ignored silently. Links to folders are not followed; links
    to files inside root are used.
    """
    root = Path(os.path.realpath(root))
    paths: list[Path] = []
    rejected: list[Rejected] = []

    def unreadable_folder(exc: OSError) -> None:
        rejected.append(Rejected(str(exc.filename or root), f"unreadable folder ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder):
        here = Path(dirpath)
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        rejected.extend(
            Rejected(str(here / name), LINK_LEAVES_ROOT) for name in dirnames
            if (here / name).is_symlink() and not _inside(here / name, root)
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            reason = _file_problem(path, root)
            if reason is None:
                paths.append(path)
            else:
                rejected.append(Rejected(str(path), reason))
    return ImageListing(paths, rejected)


def find_images(root: Path) -> Iterator[Path]:
    """The usable image paths of :func:`list_images` (rejected entries are dropped)."""
    yield from list_images(root).paths


def _inside(path: Path, root: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(root)


def _file_problem(path: Path, root: Path) -> str | None:
    """Why a file entry cannot be used as an image, or None when it can."""
    try:
        mode = path.stat().st_mode  # follows links
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return "broken link"
        return f"unreadable ({exc.strerror})"
    if path.is_symlink() and not _inside(path, root):
        return LINK_LEAVES_ROOT
    if not stat.S_ISREG(mode):
        return "not a regular file"
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        accepted = ", ".join(sorted(IMAGE_EXTENSIONS))
        what = f"unsupported format {suffix}" if suffix else "no file extension"
        return f"{what}; accepted: {accepted}"
    return None


def readable_sha256(path: str | Path) -> str | None:
    """The sha256 of a file's bytes; None when it cannot be read (the pipeline then skips it
    with the reason)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def duplicate_groups(hashes: list[str | None]) -> list[int]:
    """Per file, the position of the first file with the same bytes (its own when unique).

    Unknown (None) and empty contents never group: they carry nothing to leak.
    """
    first: dict[str, int] = {}
    return [i if h in (None, _EMPTY_SHA256) else first.setdefault(h, i)
            for i, h in enumerate(hashes)]


def stratified_hold_out(
    labels: list[str | None], test_fraction: float, seed: int,
    groups: list[int] | None = None,
) -> list[str]:
    """Seeded per-breed split: round(n * fraction) of each breed to test, at least one train.

    `groups[i]` names item i's group (e.g. from :func:`duplicate_groups`): a group goes to
    one split as a whole, counted under the label of its first labelled member. Groups are
    drawn in a seeded order and moved to test while that brings the breed's test count
    closer to its target, so without groups the split is the plain per-image one.
    """
    rng = np.random.default_rng(seed)
    splits = ["none" if label is None else "train" for label in labels]
    members: dict[int, tuple[str, list[int]]] = {}  # group -> first label, labelled items
    for i, label in enumerate(labels):
        if label is not None:
            members.setdefault(i if groups is None else groups[i], (label, []))[1].append(i)
    by_label: dict[str, list[list[int]]] = {}
    for label, idx in members.values():
        by_label.setdefault(label, []).append(idx)
    for label in sorted(by_label):
        units = by_label[label]
        total = sum(len(unit) for unit in units)
        target = min(int(round(total * test_fraction)), total - 1)
        n_test, train_units = 0, len(units)
        for k in rng.permutation(len(units)):
            if train_units == 1:
                break
            if abs(n_test + len(units[k]) - target) < abs(n_test - target):
                n_test += len(units[k])
                train_units -= 1
                for i in units[k]:
                    splits[i] = "test"
    return splits


def folder_source(
    root: str | Path,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = DEFAULT_SPLIT_SEED,
) -> Source:
    """`ROOT/<breed>/**/<image>` is labelled by its top folder; images directly in ROOT are not.

    A top folder named `train` or `test` holding breed folders gives its own split instead of
    the seeded hold-out. Every file is hashed (sha256) while listing: copies of the same bytes,
    under any name or breed, go to the same side of the hold-out. Entries that are not images
    end in `Source.rejected`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"image folder {root} does not exist; pass --source PATH to a folder")
    listing = list_images(root)
    root = Path(os.path.realpath(root))
    paths = listing.paths
    if not paths:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        more = "" if not listing.rejected else (
            f"; {len(listing.rejected)} entries not used, e.g. {listing.rejected[0].path}:"
            f" {listing.rejected[0].reason}")
        raise SourceError(f"no images found under {root} (looked for {exts}){more}")
    hashes = [readable_sha256(p) for p in paths]
    groups = duplicate_groups(hashes)
    rel_parts = [p.relative_to(root).parts for p in paths]
    own_split = all(len(parts) >= 3 and parts[0] in ("train", "test") for parts in rel_parts)
    labels: list[str | None] = []
    splits: list[str]
    if own_split:
        labels = [clean_breed_name(parts[1]) for parts in rel_parts]
        splits = [parts[0] for parts in rel_parts]
        origin = "dataset"
    else:
        labels = [clean_breed_name(parts[0]) if len(parts) >= 2 else None for parts in rel_parts]
        splits = stratified_hold_out(labels, test_fraction, seed, groups)
        origin = "hold_out" if any(label is not None for label in labels) else "none"
    items = [
        ImageItem(row_id=i, ref=str(path), label=label, split=split, sha256=sha)
        for i, (path, label, split, sha) in enumerate(
            zip(paths, labels, splits, hashes, strict=True))
    ]
    extra = {"test_fraction": test_fraction, "split_seed": seed} if origin == "hold_out" else {}
    duplicates = sum(g != i for i, g in enumerate(groups))
    return Source("folder", str(root), items, origin, extra, rejected=listing.rejected,
                  duplicates=duplicates)


def tfds_source(name: str, data_dir: str | None = None) -> Source:
    """A tensorflow-datasets dataset with its own train/test splits and label names."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            require_reachable(builder.info.homepage, name)
        builder.download_and_prepare()
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(
            f"could not load tfds:{name} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
            " Download it once online (or place it in the tfds data dir), or pass --source PATH"
            " to a local image folder"
        ) from exc
    info = builder.info
    label_names = [clean_breed_name(n) for n in info.features["label"].names]
    # tfds.testing.mock_data provides no split metadata: fall back to the usual pair
    splits = [s for s in ("train", "test") if s in info.splits] or sorted(info.splits) or [
        "train", "test"]
    items: list[ImageItem] = []
    for split in splits:
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for label, filename in ds.map(_label_and_name).as_numpy_iterator():
            fname = filename.decode() if isinstance(filename, bytes) else str(filename)
            ref = f"tfds:{name}/{split}/{fname or len(items)}"
            items.append(ImageItem(len(items), ref, label_names[int(label)], split))

    return Source(
        "tfds", f"tfds:{name}", items, "dataset", {"tfds_version": tfds.__version__},
        tfds_builder=builder, tfds_splits=tuple(splits),
    )


def require_reachable(url: str, name: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not minutes of download retries, when a dataset that still has to be
    downloaded cannot be: probe its homepage once."""
    import urllib.error
    import urllib.request

    if not url:
        return
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SourceError(
            f"tfds:{name} is not downloaded yet and {url} cannot be reached ({reason})."
            " Download it once online (or place it in the tfds data dir), or pass"
            " --source PATH to a local image folder"
        ) from None


def _label_and_name(example: dict[str, Any]) -> tuple[Any, Any]:
    return example["label"], example.get("image/filename", "")


def encoded_images(source: Source) -> Any:
    """For a tfds source: a tf.data.Dataset of encoded image bytes in item order."""
    import tensorflow_datasets as tfds

    datasets = [
        source.tfds_builder.as_dataset(
            split=split, decoders={"image": tfds.decode.SkipDecoding()}
        ).map(lambda ex: ex["image"])
        for split in source.tfds_splits
    ]
    ds = datasets[0]
    for more in datasets[1:]:
        ds = ds.concatenate(more)
    return ds


def open_source(spec: str, **kwargs: Any) -> Source:
    """`tfds:NAME` or a folder path."""
    if spec.startswith("tfds:"):
        return tfds_source(spec[len("tfds:"):], data_dir=kwargs.get("data_dir"))
    return folder_source(spec, **{k: v for k, v in kwargs.items() if k != "data_dir"})
