"""The stored audit: the findings table written into the bundle, refreshed, and read back.

`embed-dogs audit` runs every signal (ui.audit_report) with the near-duplicate threshold
calibrated on near-copies of the bundle's own photos, and stores the findings as one
checksummed CSV listed in the manifest's `audit` section, through the one transaction
(embed.staging.change_bundle). `add`, `remove` and `train` then refresh a stored audit
cheaply (:func:`refresh_audit`): the calibrated threshold is reused (calibrating embeds 500
edited photos), the vector-only signals are recomputed, low-quality findings are kept for the
photos still there and computed for the new rows only. A reader (the app, `info`) gets the
table with its state: current, stale (the rows changed since) or absent, never a stale table
shown as current.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embed.atomic import atomic_path
from embed.bundle import AUDIT_FINDINGS, Bundle
from embed.staging import change_bundle
from ui.audit_report import COLUMNS, KINDS, Signals, compose_findings, compute_signals

log = logging.getLogger(__name__)
VECTOR_KINDS = tuple(k for k in KINDS if k != "low_quality")  # no photo needs reading


@dataclass
class StoredAudit:
    """A bundle's stored findings: `state` is "current", "stale", "absent" or "damaged"."""

    state: str
    findings: Any = None  # a DataFrame (COLUMNS), paths as stored (relative to the source)
    section: Any = None  # embed.manifest.AuditSection
    message: str = ""


def stored_paths(bundle: Bundle, table: Any) -> Any:
    """The metadata with paths as the bundle stores them: relative to a folder source's root
    (so a findings file travels with the bundle, and `remove --from-file` takes it)."""
    root = bundle.source_root
    table = table.copy()
    if root is not None:
        table["path"] = [Path(p).relative_to(root).as_posix() if Path(p).is_relative_to(root)
                         else p for p in table["path"].astype(str)]
    return table


def sort_findings(frame: Any) -> Any:
    """Most certain first: by kind (KINDS order), then score, then path."""
    if not len(frame):
        return frame.reset_index(drop=True)
    order = frame["issue"].map({k: n for n, k in enumerate(KINDS)}).fillna(len(KINDS))
    frame = frame.assign(_kind=order).sort_values(["_kind", "score", "path"],
                                                  ascending=[True, False, True], kind="stable")
    return frame.drop(columns="_kind").reset_index(drop=True)


def counts_by_kind(frame: Any, kinds: tuple[str, ...]) -> dict[str, int]:
    found = frame["issue"].value_counts().to_dict() if len(frame) else {}
    return {k: int(found.get(k, 0)) for k in kinds}


def test_with_train_copy(frame: Any) -> int:
    """How many test photos have an exact or near copy in train (distinct photos)."""
    leaks = frame[frame["issue"] == "split_leak"]
    return int(leaks["path"].nunique())


def _write(staged: Bundle, frame: Any, kinds: tuple[str, ...], threshold: dict | None,
           refresh: str, seconds: dict[str, float]) -> dict[str, Any]:
    """The findings file and the manifest's audit section, in the staged bundle."""
    staged.audit_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(staged.audit_path) as tmp:
        frame.to_csv(tmp, index=False, columns=list(COLUMNS))
    staged.record_files(staged.audit_path)
    table = staged.metadata()
    checked = int(table["row_id"].max()) if len(table) and "low_quality" in kinds else None
    section = {"file": AUDIT_FINDINGS, "kinds": list(kinds),
               "counts": counts_by_kind(frame, kinds), "threshold": threshold,
               "refresh": refresh, "quality_checked_through": checked,
               "test_with_train_copy": test_with_train_copy(frame)
               if {"split_leak"} & set(kinds) else None,
               "seconds": {k: round(v, 3) for k, v in seconds.items()},
               "fitted_on": staged.current_rows()}
    staged.update_manifest(audit=section)
    return section


def _threshold_record(staged: Bundle, threshold: Any) -> dict[str, Any] | None:
    return None if threshold is None else {**threshold.as_dict(),
                                           "calibrated_on": staged.current_rows()}


def audit_staged(staged: Bundle, kinds: tuple[str, ...] = KINDS, embed: Any = None,
                 timings: dict[str, float] | None = None,
                 after_stage: Callable[[str], None] | None = None) -> Any:
    """The full audit of a staged bundle (threshold calibrated afresh), stored in it."""
    timings = {} if timings is None else timings
    signals = compute_signals(staged, kinds, embed, None, timings, after_stage)
    frame = compose_findings(stored_paths(staged, staged.metadata()), signals)
    frame = frame[frame["issue"].isin(kinds)].reset_index(drop=True)
    _write(staged, frame, kinds, _threshold_record(staged, signals.threshold), "full", timings)
    return frame


def run_audit(bundle_dir: str | Path, kinds: tuple[str, ...] = KINDS, embed: Any = None,
              timings: dict[str, float] | None = None,
              after_stage: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """`embed-dogs audit`: audit the bundle and store the findings, in one transaction.
    Returns (findings, the manifest's audit section)."""
    with change_bundle(bundle_dir, "audit") as staged:
        frame = audit_staged(staged, kinds, embed, timings, after_stage)
        section = staged.manifest.audit
    return frame, section


def refresh_audit(staged: Bundle) -> None:
    """After add, remove or train: bring a stored audit up to the staged rows without reading
    every photo again (nothing happens when the bundle has no audit). The calibrated
    threshold is reused; low-quality findings are kept for photos still there and computed
    for rows added since."""
    from index.duplicates import Threshold

    section = staged.manifest.audit
    if section is None:
        return
    kinds = tuple(k for k in section.kinds if k in KINDS)
    record = section.threshold
    threshold = None if record is None else Threshold.from_record(record.model_dump())
    vector_kinds = tuple(k for k in kinds if k in VECTOR_KINDS)
    if threshold is None and {"near_duplicate", "split_leak"} & set(vector_kinds):
        vector_kinds = tuple(k for k in vector_kinds if k not in ("near_duplicate",
                                                                  "split_leak"))
        log.warning("the stored audit has no near-duplicate threshold: run `embed-dogs audit`"
                    " to look for near-copies again")
    log.info("refreshing the stored audit (the calibrated threshold reused)")
    timings: dict[str, float] = {}
    table = staged.metadata()
    signals = compute_signals(staged, vector_kinds, None, threshold, timings) if len(
        table) else Signals()
    if "low_quality" in kinds:
        signals.low_quality = _new_low_quality(staged, table, section.quality_checked_through)
    frame = compose_findings(stored_paths(staged, table), signals)
    frame = frame[frame["issue"].isin(kinds)]
    if "low_quality" in kinds:
        frame = _with_earlier_quality(staged, frame, table)
    keep = None if record is None else record.model_dump()
    _write(staged, sort_findings(frame), kinds, keep, "vectors", timings)


def _new_low_quality(staged: Bundle, table: Any, checked_through: int | None) -> list[Any]:
    """Low-quality findings of the rows added after the last check (row ids only grow)."""
    from embed.image_quality import find_low_quality

    new = table["row_id"].to_numpy() > (-1 if checked_through is None else checked_through)
    where = np.flatnonzero(new & np.array([Path(p).is_file() for p in table["path"]]))
    if not len(where):
        return []
    found = find_low_quality(table["path"].astype(str).to_numpy()[where],
                             table["width"].to_numpy()[where],
                             table["height"].to_numpy()[where],
                             staged.manifest.backbone.image_size)
    for q in found:
        q.row = int(where[q.row])
    return found


def _with_earlier_quality(staged: Bundle, frame: Any, table: Any) -> Any:
    """The earlier low-quality findings of photos still in the bundle, label and split as
    they are now, added to `frame`."""
    import pandas as pd

    earlier = read_findings_file(staged)
    if earlier is None or not len(earlier):
        return frame
    now = stored_paths(staged, table).drop_duplicates("path").set_index("path")
    kept = earlier[(earlier["issue"] == "low_quality") & earlier["path"].isin(now.index)].copy()
    kept["label"] = [x if isinstance(x, str) else "" for x in now.loc[kept["path"], "label"]]
    kept["split"] = now.loc[kept["path"], "split"].astype(str).to_numpy()
    return pd.concat([frame, kept], ignore_index=True)


def read_findings_file(bundle: Bundle) -> Any:
    """The stored findings table, or None when absent or not the file that was written."""
    import pandas as pd

    section = bundle.manifest.audit
    if section is None:
        return None
    path = bundle.checked_file(section.file)
    if path is None:
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    return frame


def stored_audit(bundle: Bundle) -> StoredAudit:
    """The bundle's stored findings and whether they describe its rows now."""
    section = bundle.manifest.audit
    hint = f"run `embed-dogs audit --bundle {bundle.root}`"
    if section is None:
        return StoredAudit("absent", message=f"no audit yet: {hint}")
    frame = read_findings_file(bundle)
    if frame is None:
        return StoredAudit("damaged", section=section, message=(
            f"the stored audit {section.file} is missing or not the file that was written;"
            f" {hint}"))
    if "audit" in bundle.manifest.stale():
        return StoredAudit("stale", frame, section, (
            f"stale: the bundle's rows changed since this audit ({section.fitted_on.rows}"
            f" rows then); {hint}"))
    return StoredAudit("current", frame, section)


def paths_from_list(file: Path, issues: list[str] | None = None) -> tuple[list[str], bool]:
    """The photos a `remove --from-file` list names: the `path` column of a findings CSV (only
    rows whose `issue` is in `issues`, when given), else one path or glob per line.
    Returns (paths, whether it was a findings CSV)."""
    import csv

    text = file.read_text()
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), []) if lines else []
    if "path" not in header:
        if issues:
            raise ValueError(f"{file} is not a findings CSV (no `path` column), so --issue"
                             " cannot select rows in it")
        return [line.strip() for line in lines if line.strip()], False
    rows = list(csv.DictReader(lines))
    if issues:
        if "issue" not in header:
            raise ValueError(f"{file} has no `issue` column to select --issue rows by")
        unknown = sorted(set(issues) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown issue kind {', '.join(unknown)}; the kinds are"
                             f" {', '.join(KINDS)}")
        rows = [r for r in rows if r.get("issue") in issues]
    return list(dict.fromkeys(r["path"] for r in rows if r.get("path"))), True


def planned_stages(kinds: tuple[str, ...]) -> list[str]:
    """The stages compute_signals runs for `kinds`, in order (for a progress bar)."""
    k = set(kinds)
    stages = [("read", True), ("knn graph", bool({"near_duplicate", "split_leak",
                                                  "not_a_dog"} & k)),
              ("exact duplicates", bool({"exact_duplicate", "split_leak"} & k)),
              ("calibration", bool({"near_duplicate", "split_leak"} & k)),
              ("near duplicates", bool({"near_duplicate", "split_leak"} & k)),
              ("label issues", bool({"label", "not_a_dog"} & k)),
              ("outliers", bool({"outlier", "not_a_dog"} & k)),
              ("not a dog", "not_a_dog" in k), ("low quality", "low_quality" in k)]
    return [name for name, runs in stages if runs]
