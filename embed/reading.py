"""Reading a bundle whole while another process may commit a new version of it.

A commit swaps the bundle's folder in one step, but a reader opens several files one after
another: one may come from the old bundle and the next from the new. Each commit writes a fresh
`commit` id into the manifest, so a reader loads what it needs, then checks the id at the
bundle's name is still the one it started from, and reads again if a commit landed meanwhile
(a file vanishing under it means the same). No advice to rebuild for a reader that merely
looked mid-swap.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from embed.bundle import MANIFEST, Bundle
from embed.errors import BundleError

T = TypeVar("T")
TRIES = 3


def current_commit(root: str | Path) -> str | None:
    """The commit id at the bundle's name now (None when unreadable)."""
    try:
        data = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data.get("commit") if isinstance(data, dict) else None


def read_whole(root: str | Path, load: Callable[[Bundle], T], tries: int = TRIES) -> T:
    """`load(bundle)` on one commit of the bundle at `root`: retried when a commit landed
    while it ran; its own errors pass through when the bundle did not change under it."""
    for attempt in range(tries):
        bundle = Bundle.open(root)
        commit = bundle.manifest.commit
        try:
            result = load(bundle)
        except (BundleError, OSError):
            if attempt + 1 < tries and current_commit(root) != commit:
                time.sleep(0.05)
                continue
            raise
        if current_commit(root) == commit:
            return result
        time.sleep(0.05)
    raise BundleError(f"{root} was replaced {tries} times while it was being read; another"
                      " process is changing it quickly; try again in a moment")
