"""The evidence gate in the bundle: fitted on the train split (never the test split it is
reported on), its arrays in a checksummed file, its thresholds and figures in the manifest's
`gate` section (version 2), and read back for queries.

The figures include the share of the test split's dogs kept as `dog` with a Wilson 95 %
interval: each test dog is queried against all other rows (itself and exact copies left out),
as a new photo meets the index.
"""

from __future__ import annotations

from typing import Any

from classify.gate import DOG, held_out_scores
from classify.gate_evidence import EvidenceGate, fit_evidence_gate
from classify.intervals import wilson_interval
from embed.bundle import Bundle
from embed.errors import BundleError
from embed.manifest import Manifest

SECTION_VERSION = 2  # the manifest's gate section: 1 was the kNN-threshold gate
REFIT = "recalibrate it with `embed-dogs train --head logreg --bundle {root}`"


def test_dogs_kept(bundle: Bundle, gate: EvidenceGate) -> dict[str, Any] | None:
    """Test-split dogs answered `dog` (breed known to the bundle), with a Wilson interval."""
    held = held_out_scores(bundle, gate.k)
    if held is None:
        return None
    answers = gate.verdicts(held.vectors, held.knn)
    kept = sum(a.verdict == DOG for a in answers)
    n = len(answers)
    low, high = wilson_interval(kept, n) or (0.0, 0.0)
    return {"test_dogs": n, "kept_as_dog": round(kept / n, 4) if n else None,
            "kept_as_dog_ci95": [round(low, 4), round(high, 4)],
            "verdicts": {v: int(sum(a.verdict == v for a in answers))
                         for v in ("dog", "unknown_breed", "not_a_dog")}}


def fit_gate(bundle: Bundle) -> dict[str, Any] | None:
    """Fit the evidence gate on the writable bundle's train split and record it; with fewer
    than 2 train breeds, remove it. Returns the section as a dict, or None."""
    x_train, y_train = bundle.split_arrays()["train"]
    if len(set(y_train)) < 2:
        drop_gate(bundle)
        return None
    gate = fit_evidence_gate(x_train, y_train)
    path = bundle.gate_path
    path.parent.mkdir(parents=True, exist_ok=True)
    gate.save(path)
    bundle.record_files(path)
    figures = dict(gate.record["figures"])
    kept = test_dogs_kept(bundle, gate)
    if kept is not None:
        figures["test_split"] = kept
    record = {"version": SECTION_VERSION, "signal": "evidence", "k": gate.k,
              "thresholds": gate.record["thresholds"], "file": bundle.relative(path),
              "figures": figures, "calibrated_on": gate.record["calibrated_on"],
              "fitted_on": bundle.current_rows().model_dump()}
    bundle.update_manifest(gate=record)
    return record


def drop_gate(bundle: Bundle) -> None:
    section = bundle.manifest.gate
    if section is not None and section.file:
        bundle.inside(section.file).unlink(missing_ok=True)
        bundle.forget_files(section.file)
    bundle.update_manifest(gate=None)


def load_gate(bundle: Bundle) -> EvidenceGate | None:
    """The bundle's evidence gate; None without one. A gate of the old kind, or a missing or
    damaged file, is refused with the command that refits it: without a gate every photo
    would get a breed."""
    return gate_from(bundle.manifest, bundle)


def gate_from(manifest: Manifest, bundle: Bundle) -> EvidenceGate | None:
    record = manifest.gate
    if record is None:
        return None
    root = bundle.root
    if record.signal != "evidence" or not record.file:
        raise BundleError(f"the open-set gate of {root} is of an older kind (version"
                          f" {record.version}); {REFIT.format(root=root)}")
    path = bundle.checked_file(record.file)
    if path is None:
        raise BundleError(f"the gate file {record.file} of {root} is missing or damaged;"
                          f" {REFIT.format(root=root)}")
    return EvidenceGate.load(path)

