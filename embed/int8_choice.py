"""`--runtime auto`'s choice between float32 and int8, by measurement on this CPU.

int8's gain depends on the CPU (2.7x on an AMD EPYC with AVX-512 VNNI, 1.3-1.5x on a Xeon
without it, issue 21), and it has one-time costs (conversion with calibration, the task
check). So `auto` times the bare float32 and int8 models here for a few seconds, caches the
figures per CPU model (name and the flags that matter), backbone, size and weights, and takes
int8 only when the images to embed repay what is not cached yet. `decide_int8` is the pure
rule; the rest measures and remembers.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_write_text
from embed.environment import cache_dir

# CPU flags that change what int8 (XNNPACK's QS8 kernels) gains over float32.
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
              "amx_int8", "amx_tile", "asimddp", "i8mm")
# Gains assumed before int8 was ever timed here (issue 21's measurements): with VNNI/AMX/dot
# product instructions int8 ran 2.7x float32, without them 1.3-1.5x.
PRIOR_GAIN_FAST = 2.5
PRIOR_GAIN_SLOW = 1.4
# One-time costs assumed before they were ever measured here (seconds; issue 21: 27 s of
# conversion, 40 s of check on 2 cores).
PRIOR_CONVERSION_S = 30.0
PRIOR_CHECK_FIXED_S = 5.0  # the logistic-regression fits of the check
DECODE_S = 0.006  # decoding one photo of the check sample, per core
MEASURE_SECONDS = 1.5  # per model


def cpu_signature() -> dict[str, Any]:
    """This CPU's model name and the int8-relevant flags it has (from /proc/cpuinfo)."""
    name, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name") and name == "unknown":
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": name, "flags": sorted(f for f in INT8_FLAGS if f in flags)}


def speed_key(backbone_key: str) -> str:
    """Cache key of the timings: this CPU and the model (backbone, size, weights hash)."""
    text = json.dumps({"cpu": cpu_signature(), "model": backbone_key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _speed_path(backbone_key: str) -> Path:
    return cache_dir("speed") / f"{speed_key(backbone_key)}.json"


def read_speed(backbone_key: str) -> dict[str, Any]:
    """What was measured here for this model: seconds per image of each model on one core
    (`float32`, `int8`), and the one-time costs last paid (`int8 conversion`, `int8 check`)."""
    try:
        record = json.loads(_speed_path(backbone_key).read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def keep_speed(backbone_key: str, **figures: float) -> dict[str, Any]:
    """Add `figures` to the record (see `read_speed`); returns the whole record."""
    record = {**read_speed(backbone_key), **{k: round(float(v), 6) for k, v in figures.items()}}
    path = _speed_path(backbone_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, sort_keys=True))
    return record


def time_models(models: dict[str, Any], seconds: float = MEASURE_SECONDS, rows: int = 4
                ) -> dict[str, float]:
    """Seconds per image of each `TFLiteModel` on one interpreter, timed in turns (so load
    from other jobs hits them alike): the median of short runs on random inputs."""
    shape = next(iter(models.values())).input_shape
    batch = np.random.default_rng(0).uniform(-1, 1, (rows, *shape)).astype(np.float32)
    runs: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.run(batch)  # warm-up: plans the arena
    spent = 0.0
    while spent < seconds * len(models) or min(map(len, runs.values())) < 3:
        for name, model in models.items():
            start = time.perf_counter()
            model.run(batch)
            took = time.perf_counter() - start
            runs[name].append(took / rows)
            spent += took
    return {name: float(np.median(values)) for name, values in runs.items()}


def prior_gain(signature: dict[str, Any] | None = None) -> float:
    """int8's gain assumed before it was timed here, from the CPU's flags."""
    flags = set((signature or cpu_signature())["flags"])
    fast = flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
    return PRIOR_GAIN_FAST if fast else PRIOR_GAIN_SLOW


@dataclass(frozen=True)
class Outlook:
    """What the choice weighs: images to embed, float32's seconds per image on one core,
    int8's gain (measured here, or assumed), the parallel workers, and the one-time costs
    still to pay (cached ones count as zero)."""

    images: int
    float_seconds: float
    gain: float
    workers: int
    costs: dict[str, float]
    measured: bool = True


@dataclass(frozen=True)
class Choice:
    use_int8: bool
    line: str
    break_even: float | None  # images after which int8 has repaid its remaining costs


def decide_int8(outlook: Outlook) -> Choice:
    """int8 when it finishes sooner: the seconds it saves over the images exceed the
    one-time costs not cached yet. Says why in one line."""
    gain, cost = outlook.gain, sum(outlook.costs.values())
    how = "faster here" if outlook.measured else "expected on this CPU, not timed yet"
    if gain <= 1.0:
        return Choice(False, f"float32: int8 is not faster here ({gain:.2f}x)", None)
    saved = outlook.float_seconds * (1 - 1 / gain) / max(outlook.workers, 1)
    break_even = cost / saved if saved > 0 else float("inf")
    uncached = " and ".join(outlook.costs) if outlook.costs else ""
    if outlook.images * saved > cost:
        repay = (f"pays off after ~{break_even:,.0f} images" if cost
                 else "its one-time work is cached")
        return Choice(True, f"int8: {gain:.1f}x {how}, {repay}", break_even)
    what = f"int8's {uncached} not cached" if uncached else "int8"
    return Choice(False, f"float32: {what}, and {outlook.images:,} photos do not repay its"
                  f" {cost:.0f} s one-time cost ({gain:.1f}x {how}, pays off after"
                  f" ~{break_even:,.0f} images)", break_even)


def remaining_costs(record: dict[str, Any], converted: bool, checked: bool, check_rows: int,
                    workers: int) -> dict[str, float]:
    """The one-time costs int8 still has: the conversion unless its model is cached, the
    task check unless its verdict is; each as last paid here (the check scaled to
    `check_rows`), else estimated."""
    costs: dict[str, float] = {}
    if not converted:
        costs["conversion"] = float(record.get("int8 conversion", PRIOR_CONVERSION_S))
    if not checked:
        per_image = record.get("float32", 0.01) + record.get("int8", 0.005) + DECODE_S
        estimate = PRIOR_CHECK_FIXED_S + check_rows * per_image / max(workers, 1)
        if "int8 check" in record:
            paid_rows = record.get("int8 check rows") or check_rows
            estimate = record["int8 check"] * check_rows / paid_rows
        costs["check"] = float(estimate)
    return costs
