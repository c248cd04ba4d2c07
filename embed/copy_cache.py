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
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from embed.environment import cache_dir
from embed.perturb import PERTURBATIONS

CACHE_KIND = "near-copies"


def embedder_key(identity: dict[str, Any]) -> dict[str, Any]:
    """What a copy's vector depends on, from `Embedder.identity()`: the backbone, its
    weights, size, preprocessing, decoder and runtime precision (not the run's timings)."""
    runtime = identity.get("runtime") or {}
    return {**{k: identity.get(k) for k in ("name", "keras_name", "builder_kwargs",
                                            "image_size", "preprocessing", "weights_sha256",
                                            "decoder")},
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
        tmp: str | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npz.tmp")
            with os.fdopen(fd, "wb") as out:
                np.savez(out, kinds=np.array(list(vectors)),
                         vectors=np.stack([np.asarray(v, np.float32) for v in vectors.values()]))
            os.replace(tmp, self._path(sha256, seed))
        except OSError:  # a read-only or full cache: the build goes on, only slower
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
