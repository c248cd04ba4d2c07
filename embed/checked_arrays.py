"""Plain arrays in an `.npz` that carries its own checksum: fitted artifacts (the look-alike
space, the evidence gate) that queries load with numpy alone, never with pickle, and refuse
when a byte changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from embed.atomic import atomic_path

CHECKSUM = "checksum"


def arrays_checksum(entries: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(entries):
        value = np.ascontiguousarray(entries[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def save_checked_npz(path: str | Path, entries: dict[str, np.ndarray]) -> str:
    """Write `entries` and their checksum atomically; returns the checksum."""
    checksum = arrays_checksum(entries)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **entries, **{CHECKSUM: np.array(checksum)})
    return checksum


def read_checked_npz(path: str | Path) -> tuple[dict[str, np.ndarray], bool]:
    """The arrays (without the checksum) and whether they match the stored checksum. An
    unreadable file raises OSError or ValueError for the caller to word."""
    with np.load(path, allow_pickle=False) as data:
        entries = {key: data[key] for key in data.files}
    stored = str(entries.pop(CHECKSUM, ""))
    return entries, arrays_checksum(entries) == stored
