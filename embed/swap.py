"""Replacing a bundle folder by its staged successor in one step, and recovering from a crash.

On Linux, `renameat2(RENAME_EXCHANGE)` swaps the two folders atomically: at every instant the
bundle's name holds the old or the new bundle, whole. Where the call is missing (other
systems, some filesystems) the swap is two renames, and a crash between them leaves the old
bundle under `.NAME.old-PID` and the new one in staging; `recover` (run under the lock by
the next command) finishes or undoes that swap and says which.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path

AT_FDCWD = -100
RENAME_EXCHANGE = 2
COMPLETE_MARKER = "manifest.json"  # a staged bundle is complete once it has its manifest


def _renameat2() -> object | None:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the system cannot (then use renames)."""
    if _RENAMEAT2 is None:
        return False
    result = _RENAMEAT2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def old_copies(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.old-*"))


def replace_dir(staging: Path, target: Path) -> None:
    """Put `staging` at `target`; the bundle that was there is removed afterwards."""
    if not target.exists():
        os.replace(staging, target)
        return
    if exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the old bundle
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(staging, target)  # a crash before this line is undone by `recover`
    shutil.rmtree(old, ignore_errors=True)


def recover(target: Path, staging: Path, resumable_marker: str) -> str | None:
    """Undo or finish a swap that a dead writer left half done; what was done, in words, or
    None when there was nothing to do. Call it holding the lock."""
    olds = old_copies(target)
    if not olds:
        return None
    if target.exists():
        for old in olds:  # the swap completed; only the clean-up was missed
            shutil.rmtree(old, ignore_errors=True)
        return None
    if (staging / COMPLETE_MARKER).is_file() and not (staging / resumable_marker).exists():
        os.replace(staging, target)
        done = f"finished replacing {target} with the new bundle an interrupted command left"
    else:
        os.replace(olds[-1], target)
        done = f"restored the previous {target}, which an interrupted command had moved aside"
    for old in old_copies(target):
        shutil.rmtree(old, ignore_errors=True)
    return done
