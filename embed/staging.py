"""Writing a bundle safely: one transaction mechanism for every writer.

- `--overwrite` replaces only a bundle (a folder holding this tool's manifest), never a folder
  that is, contains or sits inside the source, and never anything else.
- A writer holds the bundle's lock (embed.lock, never deleted while held), taken before any
  model is loaded, so a second writer fails at once and says who holds it.
- Changes are made in `.NAME.partial` beside the target: a new build writes it from scratch
  (its `build-state.json` names what it is building, so a rerun with the same key continues
  it), a change (`change_bundle`: add, remove, train, refits, audit) starts from a hard-linked
  copy of the bundle read under the lock. Every file is replaced by rename, never written in
  place, so the bundle in place stays untouched until the commit.
- The commit seals the manifest (rows fingerprint, commit id) and swaps the folders in one
  step (embed.swap); a crash at any point leaves the old or the new bundle, and the next
  command that takes the lock finishes or undoes a half-done swap and says so.
- A full disk ends in one line, and the staging folder is removed.
- A bundle that cannot be changed where it is ends in one line before any work: a folder
  that is not writable (the lock), or a bundle that is itself a mount point (a container
  volume), where nothing can be linked or renamed between it and its staging folder.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from embed.atomic import atomic_write_text
from embed.bundle import MANIFEST, Bundle
from embed.errors import BundleError, BundleNotWritableError
from embed.lock import BundleLock
from embed.swap import recover, replace_dir

BUILD_STATE = "build-state.json"
log = logging.getLogger(__name__)


def is_bundle(path: Path) -> bool:
    """Whether `path` holds a manifest written by this tool (any schema version)."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "backbone" in data


def check_target(target: str | Path, overwrite: bool, source_root: str | Path | None) -> Path:
    """The resolved target, or a BundleError saying why writing there is refused."""
    target = Path(target).expanduser().resolve()
    if source_root is not None:
        source = Path(source_root).expanduser().resolve()
        if target == source or source.is_relative_to(target):
            raise BundleError(
                f"--out {target} is or contains the source folder {source}; writing the bundle"
                " there would destroy the photos. Choose another --out"
            )
        if target.is_relative_to(source):
            raise BundleError(
                f"--out {target} lies inside the source folder {source}; the bundle would be"
                " read as photos next time. Choose an --out outside the source"
            )
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise BundleError(
                f"{target} already exists; pass --overwrite to replace the bundle there, or"
                " choose another --out"
            )
        if not target.is_dir() or target.is_symlink() or not is_bundle(target):
            raise BundleError(
                f"{target} is not an embed-dogs bundle (no {MANIFEST} of this tool);"
                " --overwrite only replaces bundles. Choose another --out"
            )
        if own_filesystem(target):
            raise BundleNotWritableError(
                f"{target} is a mount point (a filesystem of its own, e.g. a container volume"
                " mounted right at the bundle); embed-dogs stages a change beside the bundle"
                " and swaps the two folders, which needs one filesystem. Mount the folder that"
                f" holds it instead (e.g. `-v HOST_FOLDER:/data`, then `/data/{target.name}`),"
                " or copy the bundle into a folder and run the command there"
            )
    return target


def own_filesystem(path: Path) -> bool:
    """Whether a folder is a mount point, so nothing can be hard-linked or renamed between
    it and a sibling. A bind mount of the parent's own filesystem has the parent's device
    number, so Linux's mount table is read too."""
    try:
        if os.path.ismount(path) or path.stat().st_dev != path.parent.stat().st_dev:
            return True
    except OSError:
        return False
    return str(path) in _mount_points()


def _mount_points() -> set[str]:
    """This process's mount points (Linux: field 5 of /proc/self/mountinfo, octal escapes
    decoded); empty elsewhere."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return set()
    points = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            points.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT, raised as OSError by Python or as a RuntimeError text by FAISS."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc or "")
    return isinstance(exc, RuntimeError) and ("No space left" in text or "ENOSPC" in text)


def recover_interrupted(target: str | Path) -> str | None:
    """Finish or undo a swap a dead writer left half done (takes the lock if it is free);
    what was done, in words, or None. Readers call it when the bundle's name is empty."""
    target = Path(target).expanduser().resolve()
    lock = BundleLock(target, "recovery")
    if not lock.acquire():
        return None
    try:
        return recover(target, target.with_name(f".{target.name}.partial"), BUILD_STATE)
    finally:
        lock.release()


class BundleWriter:
    """The lock, the staging folder and the commit of one transaction (a context manager).

    Use: `with BundleWriter(out, overwrite, source_root, command) as writer:` (locks, recovers
    a half-done swap, checks the target), then `bundle, resumed = writer.stage(key)` for a new
    build or `bundle = writer.stage_copy()` for a change, write into `bundle`, and
    `writer.commit()`. Without a commit the staging folder is kept for a resume when the build
    was resumable (a key was given), else removed.
    """

    def __init__(self, target: str | Path, overwrite: bool = False,
                 source_root: str | Path | None = None, command: str = "build-index") -> None:
        self.overwrite = overwrite
        self.source_root = source_root
        self.target = Path(target).expanduser().resolve()
        check_target(self.target, overwrite, source_root)  # at once, before the lock
        self.staging = self.target.with_name(f".{self.target.name}.partial")
        self.lock = BundleLock(self.target, command)
        self.recovered: str | None = None
        self._resumable = False
        self.committed = False

    # ---- the lock -------------------------------------------------------------------------
    def __enter__(self) -> BundleWriter:
        self.lock.__enter__()
        try:
            self.recovered = recover(self.target, self.staging, BUILD_STATE)
            if self.recovered:
                log.warning("%s", self.recovered)
            check_target(self.target, self.overwrite, self.source_root)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        full = disk_full(exc)
        try:
            if (full or (not self.committed and not self._resumable)) and self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self.lock.release()
        if full:
            raise BundleError(
                f"no space left on the disk of {self.target.parent} while writing"
                f" {self.target.name}; the unfinished work was removed and"
                f" {'the bundle in place is unchanged' if self.target.exists() else 'nothing was'}"
                " written. Free some space and rerun"
            ) from None

    # ---- staging --------------------------------------------------------------------------
    def staged_key(self) -> dict[str, Any] | None:
        """The key of the build left in the staging folder (a dead writer's), if any: read
        before `stage` so that a resume can keep what that build chose."""
        assert self.lock.held, "staged_key() needs the lock: use the writer as a context"
        try:
            key = json.loads((self.staging / BUILD_STATE).read_text())
            return key if isinstance(key, dict) else None
        except (OSError, ValueError):
            return None

    def stage(self, key: dict[str, Any] | None = None) -> tuple[Bundle, bool]:
        """The staging bundle, and whether it continues a dead writer's build of the same
        `key` (None: never resume)."""
        assert self.lock.held, "stage() needs the lock: use the writer as a context"
        state = self.staging / BUILD_STATE
        resumed = False
        if self.staging.exists():
            try:
                resumed = key is not None and json.loads(state.read_text()) == key
            except (OSError, ValueError):
                resumed = False
            if not resumed:
                shutil.rmtree(self.staging)
        self.staging.mkdir(exist_ok=True)
        if key is not None:
            atomic_write_text(state, json.dumps(key, sort_keys=True))
        self._resumable = key is not None
        return Bundle(self.staging, writable=True), resumed

    def stage_copy(self) -> Bundle:
        """A staging copy of the bundle at the target, for changing it (add, remove): its
        files are hard links, so nothing is copied, and since every write replaces a file
        under a new inode, the bundle in place stays untouched until `commit`."""
        assert self.lock.held, "stage_copy() needs the lock: use the writer as a context"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        Bundle.open(self.target)  # read under the lock: refuse a damaged bundle at once
        shutil.copytree(self.target, self.staging, copy_function=os.link)
        self._resumable = False
        staged = Bundle(self.staging, writable=True)
        staged.adopt_unrecorded_fits()
        return staged

    def commit(self) -> Path:
        """Seal the staged manifest and swap the staging folder into place in one step;
        replaces only the bundle that was there."""
        if (self.target.exists() or self.target.is_symlink()) and (
                not self.overwrite or not is_bundle(self.target) or self.target.is_symlink()):
            self._resumable = True  # keep the finished build: a rerun picks it up
            raise BundleError(
                f"{self.target} appeared while this build ran, and it is not a bundle this"
                f" build may replace; the finished build is kept in {self.staging}. Move"
                " it or the other folder, then rerun"
            )
        if (self.staging / MANIFEST).is_file():
            Bundle(self.staging, writable=True).seal()
        (self.staging / BUILD_STATE).unlink(missing_ok=True)
        replace_dir(self.staging, self.target)
        self.committed = True
        return self.target


@contextmanager
def staged_bundle(target: str | Path, overwrite: bool = False,
                  source_root: str | Path | None = None) -> Iterator[Bundle]:
    """A locked staging bundle renamed to `target` when the block succeeds (no resume)."""
    with BundleWriter(target, overwrite, source_root) as writer:
        bundle, _ = writer.stage()
        yield bundle
        writer.commit()


@contextmanager
def change_bundle(target: str | Path, command: str) -> Iterator[Bundle]:
    """The one way to change an existing bundle: lock it, read its current manifest, yield a
    writable staged copy, and commit it atomically when the block succeeds (on an exception
    nothing changes). `command` names the writer in a second writer's refusal."""
    target = Path(target).expanduser().resolve()
    if not target.exists():
        recovered = recover_interrupted(target)
        if recovered:
            log.warning("%s", recovered)
    Bundle.open(target)  # the usual "does not exist / damaged" message before the lock
    with BundleWriter(target, overwrite=True, command=command) as writer:
        staged = writer.stage_copy()
        yield staged
        writer.commit()
