"""The dataset audit: every signal computed from a bundle's own files, composed into one table.

The signals live where their data does (`index.duplicates`, `classify.label_issues`,
`classify.outliers`, `classify.gate_audit`, `embed.image_quality`, `embed.perturb`); this
module only runs them on a bundle (:func:`audit_bundle`) and turns their results into rows
(:func:`compose_findings`), one per finding, with the columns `remove --from-file` reads.

Rows are sorted by how sure the finding is: first by how certain the kind's method is
(KINDS, most certain first: same bytes, then a near-copy across the split, ...), then by the
kind's own score, highest first. Each score is in [0, 1]; what it measures is in SCORES.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embed.errors import BundleError

log = logging.getLogger(__name__)

COLUMNS = ("issue", "path", "label", "split", "score", "suggested_label", "related_path", "why")
KINDS = ("exact_duplicate", "split_leak", "near_duplicate", "not_a_dog", "label", "outlier",
         "low_quality")
SCORES = {
    "exact_duplicate": "1: same sha256",
    "split_leak": "cosine similarity of the pair",
    "near_duplicate": "cosine similarity of the pair",
    "not_a_dog": "how far the leave-one-out kNN similarity is below the gate's not-a-dog"
                 " threshold, as a share of it",
    "label": "1 - the out-of-sample probability of the given label",
    "outlier": "1 - the same-label kNN similarity / its breed's median",
    "low_quality": "how far past cleanvision's threshold (tiny: 1 - short side / input size)",
}
CALIBRATION_PHOTOS = 100  # photos copied five ways each to calibrate the near-duplicate cut
GATE_ROUNDS = 3  # at most this many not-a-dog passes, each without the rows refused so far
NEGATIVE_ROWS = 2000  # rows whose nearest distinct same-label photo is a negative pair


@dataclass
class Signals:
    """What the signals found, by row position in `table` (all optional)."""

    exact: tuple[np.ndarray, np.ndarray] | None = None  # (row, kept row)
    near: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (i, j, similarity)
    threshold: Any = None  # index.duplicates.Threshold
    labels: Any = None  # classify.label_issues.LabelIssues
    outliers: Any = None  # classify.outliers.Outliers
    gate: Any = None  # classify.gate_audit.GateAudit
    low_quality: list[Any] = field(default_factory=list)  # embed.image_quality.QualityFinding


def _crosses(a: str, b: str) -> bool:
    return {a, b} == {"train", "test"}


def compose_findings(table: Any, signals: Signals) -> Any:
    """One row per finding (COLUMNS), sorted most certain first. `table` is the bundle's
    metadata (path, label, split, width, height), in row order."""
    import pandas as pd

    paths = table["path"].astype(str).to_numpy()
    labels = np.array([x if isinstance(x, str) else "" for x in table["label"]], object)
    splits = table["split"].astype(str).to_numpy()
    pixels = (table["width"].fillna(0).to_numpy(np.float64) * table["height"].fillna(0)
              .to_numpy(np.float64)) if {"width", "height"} <= set(table.columns) else None
    rows: list[dict[str, Any]] = []

    def add(issue: str, row: int, score: float, why: str, related: int | None = None,
            suggested: str = "") -> None:
        rows.append({"issue": issue, "path": paths[row], "label": labels[row],
                     "split": splits[row], "score": round(float(score), 4),
                     "suggested_label": suggested,
                     "related_path": "" if related is None else paths[related], "why": why})

    if signals.exact is not None:
        for row, kept in zip(*signals.exact, strict=True):
            add("exact_duplicate", row, 1.0, "the same bytes (sha256) as the related photo",
                kept)
            if _crosses(splits[row], splits[kept]):
                test, train = (row, kept) if splits[row] == "test" else (kept, row)
                add("split_leak", test, 1.0, "a test photo whose exact copy is in train:"
                    " it is scored on a photo the head was trained on", train)
    if signals.near is not None:
        t = signals.threshold.value if signals.threshold is not None else float("nan")
        for i, j, sim in zip(*signals.near, strict=True):
            # act on the smaller photo (the likelier copy); ties: the later row
            a, b = (i, j) if pixels is not None and pixels[i] < pixels[j] else (j, i)
            add("near_duplicate", a, sim, f"looks like a resized, re-saved or cropped copy of"
                f" the related photo: similarity {sim:.3f} >= {t:.3f}, the cut calibrated on"
                " copies of this bundle's own photos", b)
            if _crosses(splits[i], splits[j]):
                test, train = (i, j) if splits[i] == "test" else (j, i)
                add("split_leak", test, sim, f"a test photo with a near-copy in train"
                    f" (similarity {sim:.3f} >= {t:.3f}): it inflates test accuracy", train)
    if signals.gate is not None:
        g = signals.gate
        for row in g.refused:
            add("not_a_dog", row, g.score[row], f"its 5 nearest other photos are only"
                f" {g.knn[row]:.2f} similar; the bundle's dogs score at least"
                f" {g.not_dog_threshold:.2f} even for a breed it does not know")
    if signals.labels is not None:
        li = signals.labels
        for n in np.flatnonzero(li.flagged):
            row = int(li.rows[n])
            add("label", row, li.score[n], f"filed as {labels[row]}, but a head that never saw"
                f" it gives {labels[row]} {li.given_probability[n]:.0%} and"
                f" {li.suggested[n]} {li.suggested_probability[n]:.0%}",
                suggested=str(li.suggested[n]))
    if signals.outliers is not None:
        o = signals.outliers
        score = o.score
        for n in np.flatnonzero(o.flagged):
            row = int(o.rows[n])
            add("outlier", row, score[n], f"far from the other {labels[row]} photos: similarity"
                f" {o.similarity[n]:.2f} to its 5 nearest, below the breed's lower fence"
                f" {o.fence[n]:.2f} (typical {o.typical[n]:.2f})")
    for q in signals.low_quality:
        add("low_quality", q.row, q.score, q.why)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if not len(frame):
        return frame
    frame["_kind"] = frame["issue"].map({k: n for n, k in enumerate(KINDS)})
    frame = frame.sort_values(["_kind", "score", "path"], ascending=[True, False, True],
                              kind="stable")
    return frame.drop(columns="_kind").reset_index(drop=True)


# ---- running the signals on a bundle ---------------------------------------------------------
def calibrate_near_duplicates(bundle: Any, table: Any, vectors: np.ndarray,
                              embed: Any = None, photos: int = CALIBRATION_PHOTOS,
                              seed: int = 0, embedder: Any = None) -> Any:
    """The near-duplicate threshold from this bundle's own photos: a seeded sample copied five
    ways (embed.perturb) and embedded with the bundle's own embedder, against each sampled
    row's nearest distinct photo of its label. The embedder is `embedder` (the build's) or
    the bundle's serving one; both remember the copies' vectors by embedder
    (embed.copy_cache), so a rebuild, and an audit after the build, embed none again. `embed`
    (bytes -> vector) replaces them, uncached."""
    from embed.copy_cache import CopyVectors, embedder_key
    from embed.embedder import serving_embedder
    from embed.perturb import copy_similarities
    from index.duplicates import calibrate_threshold, same_label_neighbour_sims

    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(table["label"].notna().to_numpy())
    cache = None
    if embed is None:
        embedder = embedder or serving_embedder(bundle)
        embed = embedder.embed_image_bytes
        cache = CopyVectors(embedder_key(embedder.identity()))
    sample = np.sort(rng.choice(len(table), min(photos, len(table)), replace=False))
    paths = table["path"].astype(str).to_numpy()
    hashes = table["sha256"].astype(str).to_numpy()[sample]
    copy_sims, _ = copy_similarities(paths[sample], vectors[sample], embed, seed, hashes, cache)
    if not len(copy_sims):
        raise PhotosUnavailable(
            f"none of the {len(sample)} sampled photos of {bundle.root} can be read here (e.g."
            f" {paths[sample][0]}), so the near-duplicate threshold cannot be calibrated")
    negatives = np.sort(rng.choice(labelled, min(NEGATIVE_ROWS, len(labelled)), replace=False))
    neighbour_sims = same_label_neighbour_sims(vectors, table["label"].to_numpy(object),
                                               table["sha256"].to_numpy(object), negatives)
    return calibrate_threshold(copy_sims, neighbour_sims)


class PhotosUnavailable(BundleError, ValueError):
    """The bundle's photos are not where it recorded them (moved without them). Also a
    ValueError, as calibrate_threshold's own "nothing to calibrate on", which the build's
    regrouping catches to go on without it."""


def calibrated_or_stored(bundle: Any, table: Any, vectors: np.ndarray, embed: Any = None
                         ) -> Any:
    """The near-duplicate threshold calibrated afresh, or, where the photos cannot be read
    (a bundle moved without them), the one calibrated earlier by the same embedder: the last
    audit's, else the build's. Without either it is one line saying what to do."""
    try:
        return calibrate_near_duplicates(bundle, table, vectors, embed)
    except PhotosUnavailable as exc:
        stored = stored_threshold(bundle.manifest)
        if stored is None:
            raise PhotosUnavailable(
                f"{exc}; run the audit where the photos are, or leave near-copies out:"
                " --kinds without near_duplicate and split_leak") from None
        log.warning("%s; reusing the threshold %.3f calibrated earlier on this bundle's"
                    " photos", exc, stored.value)
        return stored


def stored_threshold(manifest: Any) -> Any:
    """The near-duplicate threshold recorded by the last audit, else by the build."""
    from index.duplicates import Threshold

    audit = manifest.audit
    if audit is not None and audit.threshold is not None:
        return Threshold.from_record(audit.threshold.model_dump())
    built = (manifest.source.model_dump().get("near_duplicate_threshold")
             if manifest.source is not None else None)
    return Threshold.from_record(built) if built else None


def trusted_rows(n: int, signals: Signals) -> np.ndarray:
    """The rows the not-a-dog test compares against: all but those the label and outlier
    signals flag. A handful of cats filed under breed folders are each other's nearest rows
    and would vouch for each other; most of them look misfiled or far from their breed, and
    once they are out of the reference a cat meets only dogs. compute_signals then also takes
    out the rows the gate refuses and asks again (GATE_ROUNDS)."""
    trusted = np.ones(n, bool)
    for found in (signals.labels, signals.outliers):
        if found is not None:
            trusted[found.rows[found.flagged]] = False
    return trusted


def compute_signals(bundle: Any, kinds: tuple[str, ...] = KINDS, embed: Any = None,
                    threshold: Any = None, timings: dict[str, float] | None = None,
                    after_stage: Callable[[str], None] | None = None) -> Signals:
    """Every requested signal from the bundle's files. `threshold` (a Threshold) skips the
    calibration; `embed` (bytes -> vector) replaces the bundle's serving embedder; `timings`
    collects seconds per stage, and `after_stage` is called with each stage's name as it
    ends (a progress bar, a memory probe)."""
    import time
    from pathlib import Path

    from classify.gate import Gate
    from classify.gate_audit import audit_gate
    from classify.label_issues import find_label_issues
    from classify.outliers import find_outliers
    from embed.image_quality import find_low_quality
    from index.duplicates import (
        exact_duplicates,
        knn_graph,
        near_duplicates,
        restricted_graph,
    )

    timings = {} if timings is None else timings
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock[0]
        if after_stage is not None:
            after_stage(name)
        clock[0] = time.perf_counter()

    table = bundle.metadata()
    vectors = bundle.embeddings()
    hashes = table["sha256"].to_numpy(object)
    labels = table["label"].to_numpy(object)
    lap("read")
    out = Signals()
    graph = None
    if {"near_duplicate", "split_leak", "not_a_dog"} & set(kinds):
        graph = knn_graph(vectors)
        lap("knn graph")
    if {"exact_duplicate", "split_leak"} & set(kinds):
        out.exact = exact_duplicates(hashes)
        lap("exact duplicates")
    if {"near_duplicate", "split_leak"} & set(kinds):
        out.threshold = threshold or calibrated_or_stored(bundle, table, vectors, embed)
        lap("calibration")
        out.near = near_duplicates(*graph, out.threshold.value, hashes)
        lap("near duplicates")
    if "label" in kinds or "not_a_dog" in kinds:
        out.labels = find_label_issues(vectors, labels)
        lap("label issues")
    if "outlier" in kinds or "not_a_dog" in kinds:
        out.outliers = find_outliers(vectors, labels, hashes)
        lap("outliers")
    if "not_a_dog" in kinds:
        gate = Gate.from_manifest(bundle.manifest)
        if gate is not None:
            trusted = trusted_rows(len(table), out)
            for _ in range(GATE_ROUNDS):  # refused rows leave the reference, then ask again
                reference = restricted_graph(vectors, graph, trusted, hashes, gate.k)
                out.gate = audit_gate(gate, vectors, hashes, reference)
                refused = out.gate.refused
                if not trusted[refused].any():
                    break
                trusted[refused] = False
        lap("not a dog")
    if "low_quality" in kinds:
        paths = table["path"].astype(str).to_numpy()
        present = np.array([Path(p).is_file() for p in paths], dtype=bool)
        if not present.all():
            log.warning("%d of %d photos are not where the bundle recorded them (e.g. %s):"
                        " the low-quality check skips them", int((~present).sum()),
                        len(paths), paths[~present][0])
        size = bundle.manifest.backbone.image_size
        found = find_low_quality(paths[present], table["width"].to_numpy()[present],
                                 table["height"].to_numpy()[present], size)
        where = np.flatnonzero(present)
        for q in found:
            q.row = int(where[q.row])
        out.low_quality = found
        lap("low quality")
    return out


def audit_bundle(bundle: Any, kinds: tuple[str, ...] = KINDS, embed: Any = None,
                 threshold: Any = None, timings: dict[str, float] | None = None) -> Any:
    """The findings table of a bundle (see compose_findings)."""
    signals = compute_signals(bundle, kinds, embed, threshold, timings)
    frame = compose_findings(bundle.metadata(), signals)
    return frame[frame["issue"].isin(kinds)].reset_index(drop=True)
