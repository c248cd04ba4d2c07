"""Confidence intervals for the accuracies a report shows: a test split of 120 photos cannot
tell 93 % from 97 %, and the interval says so."""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959963984540054  # two-sided 95 %


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (successes of n); None when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, {n}], got {successes}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def accuracy_interval(metrics: dict[str, Any], key: str = "top1") -> tuple[float, float] | None:
    """The stored 95 % interval of `top1`/`top5`, else one computed from the rate and the
    number of test images (reports written before intervals were recorded)."""
    stored = metrics.get(f"{key}_ci95")
    if isinstance(stored, list | tuple) and len(stored) == 2:
        return float(stored[0]), float(stored[1])
    rate, n = metrics.get(key), metrics.get("test_images")
    if rate is None or not n:
        return None
    return wilson_interval(round(float(rate) * int(n)), int(n))


def format_interval(interval: tuple[float, float] | None) -> str:
    """'95 % CI 90.1–97.3 %', or '' without an interval."""
    if interval is None:
        return ""
    return f"95% CI {interval[0]:.1%}–{interval[1]:.1%}"
