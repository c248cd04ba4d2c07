"""The Audit page's logic without Streamlit: which findings to show, which photo each cell
shows (a pair, or a photo beside typical photos of its label and of the suggested one), and
the CSV of the chosen rows that `remove --from-file` takes. The page never recomputes the
audit: it reads the stored findings (ui.audit_store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ui.audit_report import COLUMNS, KINDS

PAIR_KINDS = ("exact_duplicate", "split_leak", "near_duplicate")
TYPICAL = 2  # typical photos shown per breed beside a label issue


def positions_by_path(metadata: Any, source_root: Path | None) -> dict[str, int]:
    """Stored path (relative to the source root, or as stored) -> metadata position."""
    out: dict[str, int] = {}
    for i, path in enumerate(metadata["path"].astype(str)):
        out[path] = i
        if source_root is not None and Path(path).is_relative_to(source_root):
            out[Path(path).relative_to(source_root).as_posix()] = i
    return out


def typical_positions(vectors: np.ndarray, labels: Any, per_label: int = TYPICAL
                      ) -> dict[str, list[int]]:
    """Per label, the rows nearest its mean vector: what the breed usually looks like here."""
    labels = np.asarray([x if isinstance(x, str) else "" for x in labels], dtype=object)
    out: dict[str, list[int]] = {}
    for label in sorted(set(labels) - {""}):
        rows = np.flatnonzero(labels == label)
        centre = vectors[rows].mean(axis=0)
        order = np.argsort(-(vectors[rows] @ centre), kind="stable")[:per_label]
        out[label] = rows[order].tolist()
    return out


def filtered(findings: Any, kinds: list[str]) -> Any:
    """The findings of the chosen kinds, most certain first (as stored)."""
    return findings[findings["issue"].isin(kinds)]


def kinds_present(findings: Any) -> list[str]:
    present = set(findings["issue"])
    return [k for k in KINDS if k in present]


def cells(row: Any, where: dict[str, int], typical: dict[str, list[int]]
          ) -> list[tuple[str, int | None]]:
    """(caption, metadata position or None when the photo is not in the bundle any more) for
    each photo shown for one finding."""
    def at(path: str) -> int | None:
        return where.get(str(path))

    shown = [(f"{row['path']}", at(row["path"]))]
    if row["issue"] in PAIR_KINDS and row["related_path"]:
        shown.append((f"related: {row['related_path']}", at(row["related_path"])))
    elif row["issue"] == "label":
        for label in (row["label"], row["suggested_label"]):
            shown += [(f"typical {label}", p) for p in typical.get(str(label), [])]
    return shown


def removal_csv(rows: Any) -> bytes:
    """The chosen findings as the CSV `embed-dogs remove --from-file` reads (its columns)."""
    return rows[list(COLUMNS)].to_csv(index=False).encode()
