"""Writing a bundle safely: refuse dangerous targets, one writer at a time, stage, then rename.

- `--overwrite` replaces only a bundle (a folder holding this tool's manifest), never a folder
  that is, contains or sits inside the source, and never anything else.
- A writer holds an exclusive `flock` on `.NAME.lock` beside the target, taken before any
  model is loaded, so a second writer fails at once and says who holds it.
- The build is written into `.NAME.partial` beside the target. Its `build-state.json` names
  what it is building (the resume key); a rerun with the same key continues it (complete
  shards are kept), another key starts it afresh. A staging folder is only ever touched
  under the lock, so one left by a dead writer is safe to reuse or remove.
- The final rename refuses if something other than the bundle being replaced appeared at the
  target meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from embed.atomic import atomic_write_text
from embed.bundle import MANIFEST, Bundle
from embed.errors import BundleError

BUILD_STATE = "build-state.json"


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
    return target


class BundleWriter:
    """The lock, the staging folder and the final rename of one build (a context manager).

    Use: `with BundleWriter(out, overwrite, source_root) as writer:` (checks and locks at
    once), then `bundle, resumed = writer.stage(key)`, build into `bundle`, and
    `writer.commit()`. Without a commit the staging folder is kept for a resume when the build
    was resumable (a key was given), else removed.
    """

    def __init__(self, target: str | Path, overwrite: bool = False,
                 source_root: str | Path | None = None) -> None:
        self.overwrite = overwrite
        self.source_root = source_root
        self.target = check_target(target, overwrite, source_root)
        self.staging = self.target.with_name(f".{self.target.name}.partial")
        self.lock_path = self.target.with_name(f".{self.target.name}.lock")
        self._fd: int | None = None
        self._resumable = False
        self.committed = False

    # ---- the lock -------------------------------------------------------------------------
    def __enter__(self) -> BundleWriter:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            raise BundleError(
                f"another build is writing {self.target} ({holder or 'holder unknown'}); wait"
                " for it to finish or choose another --out"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, " ".join(f"{k} {v}" for k, v in info.items()).encode())
        self._fd = fd
        for old in self.target.parent.glob(f".{self.target.name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)  # left by a writer that died mid-swap
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.committed and not self._resumable and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._fd is not None:
            self.lock_path.unlink(missing_ok=True)  # non-blocking waiters have already failed
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    # ---- staging --------------------------------------------------------------------------
    def stage(self, key: dict[str, Any] | None = None) -> tuple[Bundle, bool]:
        """The staging bundle, and whether it continues a dead writer's build of the same
        `key` (None: never resume)."""
        assert self._fd is not None, "stage() needs the lock: use the writer as a context"
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
        return Bundle(self.staging), resumed

    def stage_copy(self) -> Bundle:
        """A staging copy of the bundle at the target, for changing it (add, remove): its
        files are hard links, so nothing is copied, and since every write replaces a file
        under a new inode, the bundle in place stays untouched until `commit`."""
        assert self._fd is not None, "stage_copy() needs the lock: use the writer as a context"
        if self.staging.exists():
            shutil.rmtree(self.staging)
        shutil.copytree(self.target, self.staging, copy_function=os.link)
        self._resumable = False
        return Bundle(self.staging)

    def commit(self) -> Path:
        """Rename the staging folder into place; replaces only the bundle that was there."""
        if self.target.exists() or self.target.is_symlink():
            if not self.overwrite or not is_bundle(self.target) or self.target.is_symlink():
                self._resumable = True  # keep the finished build: a rerun picks it up
                raise BundleError(
                    f"{self.target} appeared while this build ran, and it is not a bundle this"
                    f" build may replace; the finished build is kept in {self.staging}. Move"
                    " it or the other folder, then rerun"
                )
            (self.staging / BUILD_STATE).unlink(missing_ok=True)
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.staging, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            (self.staging / BUILD_STATE).unlink(missing_ok=True)
            os.replace(self.staging, self.target)
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
