"""What a build needs to know about a backbone without building it, cached per weights FILE.

The weights hash is taken over the loaded tensors (`embed.backbones.weights_sha256`), so
knowing it means building the Keras model, and building it means importing TensorFlow
(5-10 s of a build's start-up). The first build records the hash, the embedding size and a
copy of the weights as Keras saves them, keyed by what the weights come from: the file's
path, size and modification time, the Keras cache's listing for `imagenet`, Keras' version
for random weights. A later build with the same key reads them back and builds the Keras
model only if something still needs it (`LazyModel`): a conversion, a parity check, an int8
calibration that is not cached yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from embed.atomic import atomic_path, atomic_write_text
from embed.backbones import BackboneSpec
from embed.environment import cache_dir

RECORD_VERSION = 1


@dataclass(frozen=True)
class PreparedBackbone:
    """The cached facts of one backbone + size + weights source."""

    weights_sha256: str
    dim: int
    weights_copy: Path | None  # the weights as `model.save_weights` wrote them, if kept


def prepared_dir() -> Path:
    return cache_dir("prepared")


def _keras_home_listing() -> str:
    """Names, sizes and times of Keras' downloaded weight files: what `imagenet` loads."""
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    try:
        return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                        for p in sorted(home.iterdir()) if p.is_file())
    except OSError:
        return ""


def _keras_version() -> str:
    try:
        return metadata.version("keras")
    except metadata.PackageNotFoundError:
        return "?"


def prepared_key(spec: BackboneSpec, image_size: int, weights: str | None) -> str:
    """The cache key: the backbone's spec and size, and what its weights come from."""
    builder = spec.custom_builder
    parts: list[Any] = [RECORD_VERSION, spec.name, spec.keras_name,
                        json.dumps(spec.builder_kwargs, sort_keys=True), spec.dim, image_size,
                        getattr(builder, "__module__", ""), getattr(builder, "__qualname__", ""),
                        _keras_version()]
    if weights is None:
        parts.append("random")
    elif weights == "imagenet":
        parts += ["imagenet", _keras_home_listing()]
    else:
        stat = os.stat(weights)
        parts += [os.path.realpath(weights), stat.st_size, stat.st_mtime_ns]
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:32]


def read_prepared(key: str) -> PreparedBackbone | None:
    """The record for `key`, or None when absent or unreadable."""
    path = prepared_dir() / f"{key}.json"
    try:
        record = json.loads(path.read_text())
        copy = prepared_dir() / record["weights_copy"] if record.get("weights_copy") else None
        return PreparedBackbone(str(record["weights_sha256"]), int(record["dim"]),
                                copy if copy is not None and copy.is_file() else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_prepared(key: str, weights_sha256: str, dim: int,
                   weights_file: Path | None = None) -> None:
    """Record `key`'s facts; `weights_file` (the weights Keras saved) is copied beside."""
    folder = prepared_dir()
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"weights_sha256": weights_sha256, "dim": int(dim)}
    if weights_file is not None:
        name = f"{key}.weights.h5"
        with atomic_path(folder / name, suffix=".weights.h5") as tmp:
            shutil.copyfile(weights_file, tmp)
        record["weights_copy"] = name
    atomic_write_text(folder / f"{key}.json", json.dumps(record))


class LazyModel:
    """A Keras model built on first use: runtimes and the embedder hold it, and TensorFlow
    is imported only when one of them really needs the model (attribute access builds it)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._model: Any = None

    @property
    def built(self) -> bool:
        return self._model is not None

    def get(self) -> Any:
        if self._model is None:
            self._model = self._build()
        return self._model

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.get(), name)
