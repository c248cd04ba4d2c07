"""The near-copy vectors of a photo, remembered between builds.

Every build calibrates its near-duplicate threshold on edited copies of some of its photos
(`embed.perturb`). On a warm rebuild of the same folder that is the same work again: the same
photos (by content hash), the same seeded edits and the same embedder give the same vectors.
Remembering them here, outside the bundle like the other caches, takes that step (about 0.8 s
of a 4 s warm 40-photo build, issue 21) off a rebuild. A cache that cannot be read or written
only makes the build slower, never wrong: the key names everything the vectors depend on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path
from embed.environment import cache_dir
from embed.manifest import BACKBONE_IDENTITY
from embed.perturb import PERTURBATIONS

CACHE_KIND = "near-copies"


def embedder_key(identity: dict[str, Any]) -> dict[str, Any]:
    """What a copy's vector depends on, from `Embedder.identity()`: the backbone identity
    that query vectors must share with a bundle's (`BACKBONE_IDENTITY`), and the runtime and
    precision that produced it (as `embed.build.resume_key` keys a build's shards)."""
    runtime = identity.get("runtime") or {}
    return {**{k: identity.get(k) for k in BACKBONE_IDENTITY},
            "runtime": runtime.get("name"), "precision": runtime.get("precision")}


class CopyVectors:
    """Near-copy vectors per (photo content hash, seed) for one embedder."""

    def __init__(self, key: dict[str, Any], folder: Path | None = None) -> None:
        self.folder = folder or cache_dir(CACHE_KIND)
        self.prefix = json.dumps({**key, "perturbations": PERTURBATIONS}, sort_keys=True,
                                 default=str)

    def _path(self, sha256: str, seed: int) -> Path:
        digest = hashlib.sha256(f"{self.prefix}|{sha256}|{seed}".encode()).hexdigest()
        return self.folder / f"{digest}.npz"

    def get(self, sha256: str, seed: int) -> dict[str, np.ndarray] | None:
        """The vectors by edit kind, or None when not remembered (or unreadable)."""
        try:
            with np.load(self._path(sha256, seed), allow_pickle=False) as entries:
                kinds, vectors = entries["kinds"], entries["vectors"]
                return {str(k): np.asarray(v, np.float32) for k, v in zip(kinds, vectors,
                                                                          strict=True)}
        except (OSError, ValueError, KeyError):
            return None

    def put(self, sha256: str, seed: int, vectors: dict[str, np.ndarray]) -> None:
        """Remember the vectors (written whole, then renamed: readers never see a part)."""
        if not vectors:
            return
        try:
            with atomic_path(self._path(sha256, seed)) as tmp, open(tmp, "wb") as out:
                np.savez(out, kinds=np.array(list(vectors)),
                         vectors=np.stack([np.asarray(v, np.float32) for v in vectors.values()]))
        except OSError:  # a read-only or full cache: the build goes on, only slower
            pass
