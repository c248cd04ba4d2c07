"""The bundle: the one module that knows the on-disk layout and the manifest.

Everything a build produced lives in one folder. A build is written into a staging folder
beside the target and renamed into place only when complete, so a crash never leaves a
half-written bundle that looks complete. Later steps (training a head, re-evaluating) replace
single files atomically (temporary name, then `os.replace`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path, atomic_save_npy, atomic_write_text
from embed.errors import BundleError, IncompatibleBundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS_DIR = "embeddings"
METADATA = "metadata.parquet"
SKIPPED = "skipped.csv"
INDEX = "index.faiss"
HEADS_DIR = "heads"
REPORT_DIR = "report"
DEFAULT_ROWS_PER_SHARD = 4096
METADATA_COLUMNS = ("row_id", "path", "label", "split", "sha256", "width", "height")
SKIPPED_COLUMNS = ("row_id", "path", "reason")


class Bundle:
    """Paths inside one bundle folder, and reading/writing its manifest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # ---- layout -------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def embeddings_dir(self) -> Path:
        return self.root / EMBEDDINGS_DIR

    @property
    def metadata_path(self) -> Path:
        return self.root / METADATA

    @property
    def skipped_path(self) -> Path:
        return self.root / SKIPPED

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    def head_path(self, head: str) -> Path:
        suffix = {"logreg": ".skops", "finetune": ".keras"}.get(head, ".bin")
        return self.root / HEADS_DIR / f"{head}{suffix}"

    def shard_path(self, number: int) -> Path:
        return self.embeddings_dir / f"part-{number:05d}.npy"

    def shard_paths(self) -> list[Path]:
        return sorted(self.embeddings_dir.glob("part-*.npy"))

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> Bundle:
        """Open an existing, complete bundle or explain how to make one."""
        bundle = cls(root)
        if not bundle.root.is_dir():
            raise BundleError(
                f"bundle {root} does not exist; build one with"
                f" `embed-dogs build-index --out {root}`"
            )
        if not bundle.manifest_path.is_file():
            raise BundleError(
                f"{root} is not a complete bundle (no {MANIFEST}); rebuild it with"
                f" `embed-dogs build-index --out {root}`"
            )
        version = bundle.manifest.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IncompatibleBundleError(
                f"bundle {root} has schema version {version}, this embed-dogs reads version"
                f" {SCHEMA_VERSION}; rebuild it with `embed-dogs build-index`"
            )
        return bundle

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read {self.manifest_path}: {exc}") from exc

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, sort_keys=False))

    def update_manifest(self, **sections: Any) -> dict[str, Any]:
        manifest = self.manifest
        manifest.update(sections)
        self.write_manifest(manifest)
        return manifest

    # ---- tables and vectors -------------------------------------------------------------
    def metadata(self) -> Any:
        import pandas as pd

        return pd.read_parquet(self.metadata_path)

    def write_metadata(self, table: Any) -> None:
        """metadata.parquet: one row per embedded image, in index order."""
        with atomic_path(self.metadata_path) as tmp:
            table.to_parquet(tmp, index=False)

    def write_skipped(self, table: Any) -> None:
        """skipped.csv: every input that could not be used, with the reason."""
        with atomic_path(self.skipped_path) as tmp:
            table.to_csv(tmp, index=False)

    def iter_embedding_shards(self) -> Iterator[np.ndarray]:
        """Shards in row order, memory-mapped: the collection need not fit in memory."""
        for path in self.shard_paths():
            yield np.load(path, mmap_mode="r")

    def embeddings(self) -> np.ndarray:
        """All vectors as one float32 array, in metadata order."""
        shards = list(self.iter_embedding_shards())
        if not shards:
            return np.zeros((0, self.manifest["backbone"]["dim"]), np.float32)
        return np.ascontiguousarray(np.concatenate(shards), dtype=np.float32)

    def split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(vectors, labels) of the labelled rows per split ("train", "test"), metadata order."""
        table = self.metadata()
        vectors = self.embeddings()
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        labelled = table["label"].notna().to_numpy()
        for split in ("train", "test"):
            mask = labelled & (table["split"] == split).to_numpy()
            out[split] = (vectors[mask], table.loc[mask, "label"].astype(str).to_numpy())
        return out


# ---- building -------------------------------------------------------------------------------
class ShardWriter:
    """Writes L2-normalised float32 vectors in fixed-size shards, in row order."""

    def __init__(self, bundle: Bundle, dim: int, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD):
        self.bundle = bundle
        self.dim = dim
        self.rows_per_shard = rows_per_shard
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._shards = 0
        self.rows = 0

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors) == 0:
            return
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dim {vectors.shape[1]}, expected {self.dim}")
        self._pending.append(vectors)
        self._pending_rows += len(vectors)
        self.rows += len(vectors)
        while self._pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n: int) -> None:
        block = np.concatenate(self._pending)
        atomic_save_npy(self.bundle.shard_path(self._shards), block[:n])
        self._shards += 1
        rest = block[n:]
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> int:
        """Write the last partial shard; returns the number of shards."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        return self._shards


@contextmanager
def staged_bundle(target: str | Path, overwrite: bool = False) -> Iterator[Bundle]:
    """A staging bundle beside `target`, renamed into place only if the block succeeds."""
    target = Path(target).expanduser().resolve()
    if target.exists() and not overwrite:
        raise BundleError(f"{target} already exists; pass --overwrite or choose another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield Bundle(staging)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def library_versions() -> dict[str, str]:
    """Versions of what produced the artifacts, for the manifest."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("embed-dogs", "tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets",
                 "faiss-cpu", "scikit-learn", "skops", "numpy", "pillow", "ai-edge-litert"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def new_manifest(backbone: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": backbone,
        "source": source,
        "counts": {},
        "embeddings": {},
        "index": None,
        "heads": {},
        "versions": library_versions(),
    }


BACKBONE_IDENTITY = ("name", "image_size", "preprocessing", "dim", "weights_sha256", "decoder")


def check_same_backbone(bundle_backbone: dict[str, Any], query_backbone: dict[str, Any]) -> None:
    """Refuse query vectors from another backbone, naming both sides."""
    diffs = [
        k for k in BACKBONE_IDENTITY if bundle_backbone.get(k) != query_backbone.get(k)
    ]
    if diffs:
        def show(b: dict[str, Any]) -> str:
            sha = str(b.get("weights_sha256", ""))[:12]
            return (f"{b.get('name')} @ {b.get('image_size')}px, weights {b.get('weights')}"
                    f" ({sha}), decoder v{b.get('decoder')}")

        raise IncompatibleBundleError(
            f"the bundle was built with {show(bundle_backbone)} but the query embedder is"
            f" {show(query_backbone)} (differs in: {', '.join(diffs)}); rebuild the bundle or"
            " embed with the bundle's backbone"
        )
