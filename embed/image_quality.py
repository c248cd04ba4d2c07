"""Low-quality photos: blurry, very dark or very bright, nearly blank, or tiny.

Chosen by measurement on planted photos (benchmarks/audit_planted.py):

- **dark, light, low information**: cleanvision >= 0.3.7 (Apache-2.0). Each score is a
  per-photo number in [0, 1] with a threshold its authors set across many public datasets
  (dark: the 99th brightness percentile; light: the 5th, so "light" means nearly white;
  low information: entropy). It found every planted darkened photo.
- **blurry**: the variance of the Laplacian (OpenCV) of the photo as the model sees it
  (decoded and resized to the backbone's input size by :func:`embed.images.decode_image`),
  flagged below the collection's own far-out lower fence, Q1 - 3 x IQR of log10 variance.
  Not cleanvision's blurry check: it judges edges at 64 px, where a blur that the 160 px
  model sees has vanished (it found none of the planted blurred photos; this finds all).
  The fence adapts to the collection (studio shots and phone snaps differ in sharpness) and
  a handful of blurred photos barely move its quartiles. Very dark photos have weak edges
  too and may be called both.
- **washed out**: the 5th percentile of the grey level at the backbone's input size (how
  bright the darkest parts are, from the same decode as the sharpness), above both the
  collection's far-out upper fence (Q3 + 3 x IQR) and mid-grey. cleanvision's `light` calls
  only nearly white photos and found none of the planted ones (blended 80 % with white).
- **tiny**: the stored width and height against the backbone, not a fixed number: a photo
  whose shorter side is below the backbone's input size is scaled up before it is embedded.
  (cleanvision's `odd_size` is relative to the collection's typical size and flags big
  photos too, so it is not used.)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CLEANVISION_ISSUES = ("dark", "light", "low_information")
FAR_OUT = 3.0  # Tukey's far-out fence: Q1 - FAR_OUT x IQR
WASHED_OUT_FLOOR = 0.5  # and a washed-out photo's darkest parts are lighter than mid-grey
WORDS = {
    "dark": "very dark",
    "light": "very bright",
    "low_information": "nearly blank (little detail)",
}


@dataclass
class QualityFinding:
    row: int  # position in the paths passed in
    kind: str  # blurry, washed_out, dark, light, low_information or tiny
    score: float  # in [0, 1]: how far past the threshold (blurry: in IQRs, capped at 1)
    why: str


def cleanvision_scores(paths: Sequence[str], n_jobs: int | None = 1) -> object:
    """cleanvision's table for `paths` (one row per path, in order): `<issue>_score` (low is
    bad) and `is_<issue>_issue` for each of CLEANVISION_ISSUES; NaN for unreadable files."""
    from cleanvision import Imagelab

    lab = Imagelab(filepaths=[str(p) for p in paths])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        lab.find_issues({name: {} for name in CLEANVISION_ISSUES}, n_jobs=n_jobs,
                        verbose=False)
    return lab.issues.reindex([str(p) for p in paths])


def find_low_quality(paths: Sequence[str], widths: np.ndarray, heights: np.ndarray,
                     min_side: int, n_jobs: int | None = 1) -> list[QualityFinding]:
    """Findings for the photos at `paths` (stored width/height in pixels; `min_side`: the
    backbone's input size). One finding per photo and kind."""
    found: list[QualityFinding] = []
    w = np.asarray(widths, np.float64)
    h = np.asarray(heights, np.float64)
    short = np.minimum(w, h)
    for row in np.flatnonzero(short < min_side):
        found.append(QualityFinding(int(row), "tiny", float(1.0 - short[row] / min_side),
                                    f"tiny: {int(w[row])}x{int(h[row])} px, smaller than the"
                                    f" {min_side} px the backbone reads"))
    if not len(paths):
        return found
    measured = np.array([statistics(str(p), min_side) for p in paths], np.float64)
    found += find_blurry(paths, min_side, values=measured[:, 0])
    found += find_washed_out(measured[:, 1])
    table = cleanvision_scores(paths, n_jobs)
    thresholds = _thresholds()
    for kind in CLEANVISION_ISSUES:
        flags = table.get(f"is_{kind}_issue")
        scores = table.get(f"{kind}_score")
        if flags is None or scores is None:
            continue
        t = thresholds[kind]
        for row in np.flatnonzero(flags.fillna(False).to_numpy(bool)):
            s = float(scores.iloc[row])
            found.append(QualityFinding(int(row), kind, float(np.clip((t - s) / t, 0, 1)),
                                        f"{WORDS[kind]}: cleanvision {kind} score {s:.2f},"
                                        f" below its threshold {t:.2f}"))
    return found


def statistics(path: str, size: int) -> tuple[float, float]:
    """(sharpness, floor) of the photo decoded as the model sees it (size x size, grey), from
    one decode: log10 of the variance of the Laplacian, and the 5th percentile of the grey
    level in [0, 1] (how bright its darkest parts are); NaN when it cannot be read."""
    from embed.images import ImageDecodeError, opencv, read_and_decode

    cv2 = opencv()
    try:
        pixels = read_and_decode(path, size)[1].pixels
    except ImageDecodeError:
        return float("nan"), float("nan")
    grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    return (float(np.log10(cv2.Laplacian(grey, cv2.CV_64F).var() + 1e-6)),
            float(np.percentile(grey, 5)) / 255.0)


def sharpness(path: str, size: int) -> float:
    """log10 of the variance of the Laplacian at the model's input size (see statistics)."""
    return statistics(path, size)[0]


def _fence(values: np.ndarray, far_out: float, upper: bool = False
           ) -> tuple[float, float, float] | None:
    """(fence, IQR, median) of the finite values: Tukey's far-out lower (or upper) fence."""
    finite = values[np.isfinite(values)]
    if len(finite) < 4:
        return None
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    iqr = max(float(q3 - q1), 1e-9)
    return (q3 + far_out * iqr if upper else q1 - far_out * iqr), iqr, float(np.median(finite))


def find_blurry(paths: Sequence[str], size: int, far_out: float = FAR_OUT,
                values: np.ndarray | None = None) -> list[QualityFinding]:
    """Photos whose sharpness is below the collection's far-out lower fence (`values`: the
    sharpness of each photo when already measured)."""
    if values is None:
        values = np.array([sharpness(str(p), size) for p in paths])
    fenced = _fence(values, far_out)
    if fenced is None:
        return []
    fence, iqr, median = fenced
    return [QualityFinding(int(row), "blurry", float(np.clip((fence - values[row]) / iqr, 0, 1)),
                           f"blurry: sharpness (log10 variance of the Laplacian at {size} px)"
                           f" {values[row]:.2f}, below the collection's far-out fence"
                           f" {fence:.2f} (median {median:.2f})")
            for row in np.flatnonzero(np.isfinite(values) & (values < fence))]


def find_washed_out(floors: np.ndarray, far_out: float = FAR_OUT) -> list[QualityFinding]:
    """Washed-out photos: even their darkest 5 % of pixels are bright, far above the
    collection's own far-out upper fence and above mid-grey. cleanvision's `light` only
    calls a photo whose darkest parts are nearly white (it found 0 of 3 planted photos
    blended 80 % with white, whose floor is about 0.8)."""
    fenced = _fence(floors, far_out, upper=True)
    if fenced is None:
        return []
    fence, iqr, median = fenced
    cut = max(fence, WASHED_OUT_FLOOR)
    return [QualityFinding(int(row), "washed_out",
                           float(np.clip((floors[row] - cut) / max(1.0 - cut, 1e-9), 0, 1)),
                           f"washed out (too bright, little contrast): its darkest 5 % of pixels"
                           f" are at {floors[row]:.0%} grey, above the collection's far-out"
                           f" fence {cut:.0%} (median {median:.0%})")
            for row in np.flatnonzero(np.isfinite(floors) & (floors > cut))]


def _thresholds() -> dict[str, float]:
    """cleanvision's default thresholds (score below it = issue), read from the library."""
    from cleanvision.issue_managers.image_property_issue_manager import (
        ImagePropertyIssueManager,
    )

    params = ImagePropertyIssueManager().get_default_params()
    return {kind: float(params[kind]["threshold"]) for kind in CLEANVISION_ISSUES}
