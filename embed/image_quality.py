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
WORDS = {
    "dark": "very dark",
    "light": "very bright",
    "low_information": "nearly blank (little detail)",
}


@dataclass
class QualityFinding:
    row: int  # position in the paths passed in
    kind: str  # blurry, dark, light, low_information or tiny
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
    found += find_blurry(paths, min_side)
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


def sharpness(path: str, size: int) -> float:
    """log10 of the variance of the Laplacian of the photo decoded as the model sees it
    (size x size, grey); NaN when it cannot be read."""
    from embed.images import ImageDecodeError, opencv, read_and_decode

    cv2 = opencv()
    try:
        pixels = read_and_decode(path, size)[1].pixels
    except ImageDecodeError:
        return float("nan")
    grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    return float(np.log10(cv2.Laplacian(grey, cv2.CV_64F).var() + 1e-6))


def find_blurry(paths: Sequence[str], size: int, far_out: float = FAR_OUT
                ) -> list[QualityFinding]:
    """Photos whose sharpness is below the collection's far-out lower fence."""
    values = np.array([sharpness(str(p), size) for p in paths])
    finite = values[np.isfinite(values)]
    if len(finite) < 4:
        return []
    q1, q3 = np.quantile(finite, [0.25, 0.75])
    fence = q1 - far_out * (q3 - q1)
    iqr = max(float(q3 - q1), 1e-9)
    return [QualityFinding(int(row), "blurry", float(np.clip((fence - values[row]) / iqr, 0, 1)),
                           f"blurry: sharpness (log10 variance of the Laplacian at {size} px)"
                           f" {values[row]:.2f}, below the collection's far-out fence"
                           f" {fence:.2f} (median {np.median(finite):.2f})")
            for row in np.flatnonzero(np.isfinite(values) & (values < fence))]


def _thresholds() -> dict[str, float]:
    """cleanvision's default thresholds (score below it = issue), read from the library."""
    from cleanvision.issue_managers.image_property_issue_manager import (
        ImagePropertyIssueManager,
    )

    params = ImagePropertyIssueManager().get_default_params()
    return {kind: float(params[kind]["threshold"]) for kind in CLEANVISION_ISSUES}
