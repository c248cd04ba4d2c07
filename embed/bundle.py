"""The bundle: the one module that knows the on-disk layout and the manifest.

Everything a build produced lives in one folder (see DESIGN.md). The manifest is read once,
validated, and lists every shard and model file with its size and sha256, so opening a bundle
checks cheaply that it is whole (`check`) and `verify` checks every byte. Files named in the
manifest must lie inside the bundle. Image paths are stored relative to the source root and
resolved on reading. Builds are staged and renamed into place by `embed.staging`; later steps
replace single files atomically (`embed.atomic`).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path, atomic_write_text, file_sha256
from embed.errors import BundleError, first_line
from embed.manifest import (  # noqa: F401  (re-exported: the bundle's public names)
    BACKBONE_IDENTITY,
    REBUILD_HINT,
    SCHEMA_VERSION,
    FileRecord,
    Manifest,
    RowsFingerprint,
    check_same_backbone,
    new_manifest,
    parse_manifest,
)

MANIFEST = "manifest.json"
EMBEDDINGS_DIR = "embeddings"
METADATA = "metadata.parquet"
SKIPPED = "skipped.csv"
INDEX = "index.faiss"
HEADS_DIR = "heads"
REPORT_DIR = "report"
AUDIT_FINDINGS = "audit/findings.csv"  # the dataset audit's findings table
BACKBONE_WEIGHTS = "backbone/weights.weights.h5"  # the backbone's weights travel with the bundle
SERVING_MODEL = "backbone/model.tflite"  # the LiteRT model queries run, without TensorFlow
SPACE = "space/space.npz"  # the learned look-alike space's arrays (checksummed, no pickle)
GATE = "gate/evidence.npz"  # the evidence gate's arrays (checksummed, no pickle)
METADATA_COLUMNS = ("row_id", "path", "label", "split", "sha256", "width", "height")
SKIPPED_COLUMNS = ("row_id", "path", "reason")


class Bundle:
    """One bundle folder: its layout, its manifest (read once, typed) and its tables.

    A bundle opened for reading never writes. Only a transaction's staging copy is
    `writable` (embed.staging): that is how no writer keeps a manifest across the lock."""

    def __init__(self, root: str | Path, writable: bool = False) -> None:
        self.root = Path(root)
        self.writable = writable
        self._manifest: Manifest | None = None

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

    @property
    def audit_path(self) -> Path:
        return self.root / AUDIT_FINDINGS

    @property
    def backbone_weights_path(self) -> Path:
        return self.root / BACKBONE_WEIGHTS

    @property
    def space_path(self) -> Path:
        return self.root / SPACE

    @property
    def gate_path(self) -> Path:
        return self.root / GATE

    def head_path(self, head: str) -> Path:
        suffix = {"logreg": ".skops", "finetune": ".keras"}.get(head, ".bin")
        return self.root / HEADS_DIR / f"{head}{suffix}"

    def shard_path(self, number: int) -> Path:
        return self.embeddings_dir / f"part-{number:05d}.npy"

    def shard_rows_path(self, number: int) -> Path:
        return self.embeddings_dir / f"part-{number:05d}.rows.parquet"

    def shard_paths(self) -> list[Path]:
        """The vector shards in row order: as the manifest lists them, else as found."""
        if self.manifest_path.is_file():
            return [self.inside(entry.file) for entry in self.manifest.embeddings.shards]
        return sorted(self.embeddings_dir.glob("part-*.npy"))

    def relative(self, path: str | Path) -> str:
        """A path inside the bundle as the manifest records it (posix, relative)."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def inside(self, relative: str) -> Path:
        """The file a manifest entry names; refused when it would lie outside the bundle."""
        path = (self.root / str(relative)).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise BundleError(
                f"the manifest of {self.root} names {relative!r}, which lies outside the"
                f" bundle; refusing to follow it. {REBUILD_HINT.format(root=self.root)}"
            )
        return path

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, root: str | Path) -> Bundle:
        """Open an existing, complete bundle or explain how to make one; checks cheaply that
        the files the manifest lists are all there with their recorded sizes, and that the
        metadata table is the one that was written (so swapped rows are caught)."""
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
        problems = bundle.check(full=False)
        if problems:
            raise BundleError(
                f"bundle {root} is damaged: {problems[0]}"
                + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
                + f"; {REBUILD_HINT.format(root=root)}"
            )
        return bundle

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            try:
                data = json.loads(self.manifest_path.read_text())
            except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BundleError(
                    f"cannot read {self.manifest_path}: {exc}; rebuild the bundle"
                ) from None
            self._manifest = parse_manifest(data, self.root)
        return self._manifest

    def _check_writable(self) -> None:
        if not self.writable:
            raise BundleError(f"{self.root} was opened for reading; changes go through a"
                              " transaction (embed.staging.change_bundle)")

    def write_manifest(self, manifest: Manifest | dict[str, Any]) -> None:
        """Replace the staged manifest (validated again, so no bad value reaches disk)."""
        self._check_writable()
        data = manifest.model_dump() if isinstance(manifest, Manifest) else manifest
        manifest = parse_manifest(data, self.root)
        atomic_write_text(self.manifest_path, manifest.to_json())
        self._manifest = manifest

    def update_manifest(self, **sections: Any) -> Manifest:
        """Set whole sections (typed models or their dicts; None removes an optional one)."""
        manifest = self.manifest.model_copy(deep=True)
        for name, value in sections.items():
            if name not in Manifest.model_fields:
                raise BundleError(f"the manifest has no section {name!r}")
            setattr(manifest, name, value)
        self.write_manifest(manifest)
        return manifest

    def rows_fingerprint(self) -> RowsFingerprint:
        """Count and digest of the metadata's rows (row id, content hash, label, split): what
        fitted artifacts record, so a later change of rows shows them stale."""
        import pandas as pd

        try:
            table = pd.read_parquet(self.metadata_path,
                                    columns=["row_id", "sha256", "label", "split"])
        except FileNotFoundError:
            return RowsFingerprint(rows=0, digest=hashlib.sha256(b"").hexdigest())
        digest = hashlib.sha256()
        for column in ("row_id", "sha256", "label", "split"):
            digest.update(column.encode())
            digest.update("\x1f".join(map(str, table[column].tolist())).encode())
        return RowsFingerprint(rows=len(table), digest=digest.hexdigest())

    def current_rows(self) -> RowsFingerprint:
        """The fingerprint of the rows now: the manifest keeps it up to date (every metadata
        write records it, every commit seals it), so fitting an artifact reads no table."""
        return self.manifest.rows or self.rows_fingerprint()

    def adopt_unrecorded_fits(self) -> None:
        """Artifacts of a schema-2 bundle do not record their rows: they were fitted on the
        rows the bundle has now, so record that before a change makes them stale."""
        manifest = self.manifest.model_copy(deep=True)
        rows = self.rows_fingerprint()
        changed = manifest.rows is None
        manifest.rows = manifest.rows or rows
        for section in (*manifest.heads.values(), manifest.gate, manifest.space,
                        manifest.comparison, manifest.audit):
            if section is not None and section.fitted_on is None:
                section.fitted_on = rows
                changed = True
        if changed:
            self.write_manifest(manifest)

    def seal(self) -> Manifest:
        """Before a transaction commits: the rows' fingerprint and a fresh commit id."""
        return self.update_manifest(rows=self.rows_fingerprint(), commit=uuid.uuid4().hex)

    def reload(self) -> Bundle:
        """Forget the cached manifest (another process may have changed the bundle)."""
        self._manifest = None
        return self

    # ---- integrity ----------------------------------------------------------------------
    def file_record(self, path: str | Path) -> FileRecord:
        """Size and sha256 of a file inside the bundle, as the manifest lists it."""
        path = Path(path)
        return FileRecord(bytes=path.stat().st_size, sha256=file_sha256(path))

    def checked_file(self, relative: str) -> Path | None:
        """The file a manifest entry names, if it is there and has the sha256 the manifest
        recorded for it; None otherwise (callers say what that means for them)."""
        path = self.inside(relative)
        record = self.manifest.files.get(relative)
        if record is not None and path.is_file() and file_sha256(path) == record.sha256:
            return path
        return None

    def record_files(self, *paths: str | Path) -> None:
        """List files (model files, tables, shards) in the manifest with size and sha256."""
        files = dict(self.manifest.files)
        for path in paths:
            files[self.relative(path)] = self.file_record(path)
        self.update_manifest(files=dict(sorted(files.items())))

    def forget_files(self, *relative: str) -> None:
        self.update_manifest(files={k: v for k, v in self.manifest.files.items()
                                    if k not in relative})

    def check(self, full: bool = False) -> list[str]:
        """Problems found, empty when whole. Cheap: every listed file exists inside the bundle
        with its recorded size, metadata.parquet has its recorded checksum and row count.
        `full`: every file's checksum too."""
        problems: list[str] = []
        manifest = self.manifest
        for relative, record in manifest.files.items():
            try:
                path = self.inside(relative)
            except BundleError as exc:
                problems.append(str(exc).split(";")[0])
                continue
            if not path.is_file():
                problems.append(f"{relative} is missing")
            elif path.stat().st_size != record.bytes:
                problems.append(f"{relative} has {path.stat().st_size} bytes, the manifest"
                                f" recorded {record.bytes}")
            elif (full or relative == METADATA) and file_sha256(path) != record.sha256:
                problems.append(f"{relative} is not the file that was written (sha256 differs)")
        for name, head in manifest.heads.items():
            try:
                self.inside(head.file)
            except BundleError:
                problems.append(f"head {name} names {head.file!r}, which lies outside"
                                " the bundle")
        shards = manifest.embeddings.shards
        if full and not problems:
            problems += self._check_row_ids()
        rows = sum(entry.rows for entry in shards)
        if shards and rows != manifest.counts.embedded:
            problems.append(f"the shards hold {rows} rows, the manifest counts"
                            f" {manifest.counts.embedded}")
        return problems

    def _check_row_ids(self) -> list[str]:
        """The shards' own rows, in order, are the metadata's rows (ids and image hashes);
        every shard and table is read, and a file that cannot be read is one problem."""
        import pandas as pd

        problems = []
        ids, hashes = [], []
        for entry in self.manifest.embeddings.shards:
            try:
                rows = pd.read_parquet(self.inside(entry.rows_file))
                rows = rows[rows["reason"] == ""]
                vectors = np.load(self.inside(entry.file), mmap_mode="r", allow_pickle=False)
            except Exception as exc:  # numpy and pyarrow raise many types for damaged files
                problems.append(f"cannot read shard {entry.file}: {first_line(exc)}")
                continue
            dim = self.manifest.backbone.dim
            if vectors.ndim != 2 or vectors.shape[1] != dim or vectors.dtype != np.float32:
                problems.append(f"{entry.file} has shape {vectors.shape} and dtype"
                                f" {vectors.dtype}, expected (n, {dim}) float32")
            elif len(vectors) != len(rows) or len(rows) != entry.rows:
                problems.append(f"{entry.file} holds {len(vectors)} vectors for"
                                f" {len(rows)} rows")
            ids += rows["row_id"].tolist()
            hashes += rows["sha256"].tolist()
        try:
            table = pd.read_parquet(self.metadata_path)
        except Exception as exc:
            return [*problems, f"cannot read {METADATA}: {first_line(exc)}"]
        if not problems and (table["row_id"].tolist() != ids
                             or table["sha256"].tolist() != hashes):
            problems.append("metadata.parquet does not list the shards' rows in their order")
        return problems

    # ---- tables and vectors -------------------------------------------------------------
    @property
    def source_root(self) -> Path | None:
        """Where a folder source's images were; image paths are stored relative to it."""
        source = self.manifest.source
        return Path(source.location) if source.kind == "folder" else None

    def metadata(self) -> Any:
        """One row per embedded image in index order, with `path` absolute again."""
        import pandas as pd

        try:
            table = pd.read_parquet(self.metadata_path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise BundleError(f"cannot read {self.metadata_path}: {exc}; rebuild the"
                              " bundle") from None
        if "path" not in table.columns:
            raise BundleError(f"{self.metadata_path} has no path column;"
                              f" {REBUILD_HINT.format(root=self.root)}")
        root = self.source_root
        if root is not None and len(table):
            table["path"] = [str(root / p) for p in table["path"].astype(str)]
        return table

    def write_metadata(self, table: Any) -> None:
        """metadata.parquet: one row per embedded image, in index order (paths as given:
        relative to the source root for folders)."""
        with atomic_path(self.metadata_path) as tmp:
            table.to_parquet(tmp, index=False)
        if self.manifest_path.is_file():  # the rows changed: fitted artifacts compare to these
            self.update_manifest(rows=self.rows_fingerprint())

    def write_skipped(self, table: Any) -> None:
        """skipped.csv: every input that could not be used, with the reason."""
        with atomic_path(self.skipped_path) as tmp:
            table.to_csv(tmp, index=False)

    def iter_embedding_shards(self) -> Iterator[np.ndarray]:
        """Shards in row order, memory-mapped: the collection need not fit in memory."""
        dim = self.manifest.backbone.dim
        for path in self.shard_paths():
            try:
                shard = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise BundleError(f"cannot read embeddings shard {path}: {exc};"
                                  f" {REBUILD_HINT.format(root=self.root)}") from None
            if shard.ndim != 2 or shard.shape[1] != dim or shard.dtype != np.float32:
                raise BundleError(f"embeddings shard {path} has shape {shard.shape} and dtype"
                                  f" {shard.dtype}, expected (n, {dim}) float32;"
                                  f" {REBUILD_HINT.format(root=self.root)}")
            yield shard

    def embeddings(self) -> np.ndarray:
        """All vectors as one float32 array, in metadata order."""
        shards = list(self.iter_embedding_shards())
        if not shards:
            return np.zeros((0, self.manifest.backbone.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(shards), dtype=np.float32)

    def split_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(vectors, labels) of the labelled rows per split ("train", "test"), metadata order."""
        table = self.metadata()
        vectors = self.embeddings()
        if len(vectors) != len(table):
            raise BundleError(
                f"{self.root} has {len(vectors)} vectors but {len(table)} metadata rows;"
                f" {REBUILD_HINT.format(root=self.root)}"
            )
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        labelled = table["label"].notna().to_numpy()
        for split in ("train", "test"):
            mask = labelled & (table["split"] == split).to_numpy()
            out[split] = (vectors[mask], table.loc[mask, "label"].astype(str).to_numpy())
        return out
