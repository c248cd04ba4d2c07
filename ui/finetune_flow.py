"""`build-index --fine-tune`: the best recipe as one command, from existing steps.

1. build a plain bundle (embed, index, logistic-regression head, gate, space) into
   `<out>-base`: the "before" figures, and the bundle the tuned backbone's lineage names;
2. fine-tune the top of its backbone on its train split (`train --head finetune --unfreeze N`);
3. build `<out>` again with that backbone (`--backbone-from <out>-base`): re-embed
   everything, then index, heads, gate and space; queries run the tuned backbone's own
   exported model (LiteRT where the runtime is, as every build).

Both bundles share the split (the same source and test fraction split by content), so the
before/after figures compare the same test photos.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from classify.finetune import FinetuneParams
from embed.build import ProgressCallback
from embed.sources import Source
from ui.build_flow import BuildConfig, BuildResult, build_bundle, train_head

DEFAULT_UNFREEZE = 10  # the README's recipe: the top 10 weighted layers, with augmentation


@dataclass
class FinetunedBuild:
    base: BuildResult  # the plain bundle (before)
    tuned: BuildResult  # the bundle embedded with the fine-tuned backbone (after)
    seconds: dict[str, float]  # per stage
    finetune: dict[str, Any]  # the fine-tuned head's manifest record


def base_path(out: Path) -> Path:
    return out.with_name(f"{out.name}-base")


def answer_figures(manifest: Any) -> dict[str, float | None]:
    """Top-1 of the logistic-regression head and precision@5 / 1-NN (raw and learned space)
    on the test split, from a bundle's manifest."""
    head = manifest.heads.get("logreg")
    test = (manifest.space.figures.get("test_split") or {}) if manifest.space else {}
    raw, learned = test.get("raw") or {}, test.get("learned") or {}
    return {"top1": head.metrics.get("top1") if head else None,
            "precision@5 raw": raw.get("precision@5"),
            "precision@5 learned": learned.get("precision@5"),
            "1-NN learned": learned.get("nn1")}


def build_finetuned(
    config: BuildConfig, params: FinetuneParams | None = None,
    on_source: Callable[[Source], ProgressCallback | None] | None = None,
    on_epoch: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> FinetunedBuild:
    """Plain build, fine-tuning on its train split, tuned build; each stage timed."""
    params = params or FinetuneParams(unfreeze=DEFAULT_UNFREEZE, augment=True)
    base_out = base_path(config.out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    base = build_bundle(replace(config, out=base_out), on_source)
    seconds["plain build (embed, index, heads, gate, space)"] = time.perf_counter() - start
    start = time.perf_counter()
    finetune = train_head(base_out, "finetune", params=params, on_epoch=on_epoch)["record"]
    seconds["fine-tune the backbone's top"] = time.perf_counter() - start
    start = time.perf_counter()
    tuned = build_bundle(replace(config, backbone_from=base_out), on_source)
    seconds["re-embed with the tuned backbone, index, heads, gate, space"] = (
        time.perf_counter() - start)
    return FinetunedBuild(base, tuned, {k: round(v, 1) for k, v in seconds.items()}, finetune)
