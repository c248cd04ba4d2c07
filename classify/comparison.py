"""Side-by-side comparison of a bundle's breed heads on the same test split.

Every head is evaluated on the same rows with the same metrics, so the comparison only reads
what training recorded: the manifest's head records and each head's metrics report.
"""

from __future__ import annotations

import json
from typing import Any

from classify.evaluation import stored_metrics
from classify.selection import choose_best_head
from embed.atomic import atomic_path, atomic_write_text
from embed.bundle import Bundle

SUMMARY_FIELDS = ("validation_top1", "top1", "top5", "test_images", "train_images",
                  "train_seconds")


def compare_heads(bundle: Bundle) -> dict[str, Any]:
    """Write report/comparison.{json,csv} and comparison_per_breed.csv; record the summary.

    Returns the manifest's new `comparison` section (best head by validation top-1, per-head
    summary and the files written).
    """
    import pandas as pd

    manifest = bundle.manifest
    heads = {name: head for name, head in manifest.heads.items()
             if not manifest.head_is_stale(name)}  # a stale head is not served: no contest
    summary: dict[str, dict[str, Any]] = {}
    per_breed: dict[str, dict[str, Any]] = {}
    for name, record in heads.items():
        metrics = stored_metrics(bundle.root, record)
        summary[name] = {
            "validation_top1": (record.get("validation") or {}).get("top1"),
            "top1": metrics.get("top1"),
            "top5": metrics.get("top5"),
            "test_images": metrics.get("test_images"),
            "train_images": record.get("train_images"),
            "train_seconds": record.get("train_seconds"),
            "training_path": record.get("training_path", "stored_embeddings"),
        }
        for row in metrics.get("per_breed", []):
            entry = per_breed.setdefault(row["breed"], {"breed": row["breed"],
                                                        "support": row["support"]})
            for key in ("precision", "recall", "f1"):
                entry[f"{name}_{key}"] = round(float(row[key]), 4)
    best, by = choose_best_head(heads)

    report = bundle.report_dir
    files = {
        "json": report / "comparison.json",
        "csv": report / "comparison.csv",
        "per_breed": report / "comparison_per_breed.csv",
    }
    atomic_write_text(files["json"], json.dumps(
        {"best": best, "by": by, "heads": summary, "per_breed": list(per_breed.values())},
        indent=2))
    with atomic_path(files["csv"]) as tmp:
        pd.DataFrame(
            [{"head": h, **{k: s[k] for k in SUMMARY_FIELDS},
              "training_path": json.dumps(s["training_path"])} for h, s in summary.items()]
        ).to_csv(tmp, index=False)
    with atomic_path(files["per_breed"]) as tmp:
        pd.DataFrame(list(per_breed.values())).to_csv(tmp, index=False)
    section = {
        "best": best,
        "by": by,
        "heads": {h: {k: s[k] for k in ("validation_top1", "top1", "top5", "train_seconds")}
                  for h, s in summary.items()},
        "files": {k: str(v.relative_to(bundle.root)) for k, v in files.items()},
        "fitted_on": bundle.current_rows().model_dump(),
    }
    bundle.update_manifest(comparison=section)
    return section
