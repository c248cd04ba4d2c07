"""One writer per bundle: an exclusive `flock` on `.NAME.lock` beside the bundle.

The lock file is never deleted. Deleting it while held (as an earlier version did) lets a
third process lock a fresh file of the same name while the second still holds the old inode:
two writers at once. The file only carries who holds it, for the refusal message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from embed.errors import BundleError, BundleNotWritableError


def lock_path_for(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


class BundleLock:
    """`with BundleLock(target, "add"):` holds the bundle's write lock or raises BundleError
    at once, naming the holder (command, pid, host, since when)."""

    def __init__(self, target: str | Path, command: str = "a command") -> None:
        self.target = Path(target)
        self.command = command
        self.path = lock_path_for(self.target)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; False (non-blocking) when someone else holds it."""
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            why = (f"its folder {self.target.parent} is not writable"
                   f" ({os.strerror(exc.errno)}); embed-dogs writes a lock and the new version"
                   " beside the bundle.")
            raise BundleNotWritableError(
                f"cannot change {self.target}: {why} Copy the bundle to a writable folder"
                " (cp -r) and run the command on the copy" if self.target.exists() else
                f"cannot write {self.target}: {why} Choose an --out in a folder you can write"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        info = (f"{self.command}, pid {os.getpid()} on {socket.gethostname()}, since"
                f" {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text(errors="replace").strip() or "holder unknown"
        except OSError:
            return "holder unknown"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BundleLock:
        if not self.acquire():
            raise BundleError(
                f"another embed-dogs command is changing {self.target} ({self.holder()});"
                " rerun when it has finished"
            )
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
