"""`remove --from-file` with the audit's findings: exactly the photos a list names, removed in
the same transaction as `remove` (ui.build_flow.refresh_after_change refreshes index, head,
gate and the stored audit); paths the bundle does not hold are reported, not fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embed.build import remove_rows
from embed.bundle import Bundle
from embed.errors import SourceError
from embed.staging import change_bundle
from ui.audit_store import stored_paths
from ui.build_flow import refresh_after_change


@dataclass
class Removal:
    """What `remove --from-file` did or, with --dry-run, would do (paths as listed)."""

    removed: list[str]
    unknown: list[str]


def listed_positions(bundle: Bundle, paths: list[str]) -> tuple[Any, list[str]]:
    """Metadata positions of exactly these paths (as stored: relative to the source root, or
    absolute), never globs: a findings file names photos, and a `[` in a name is a name.
    Returns (mask, the paths no row has)."""
    import numpy as np

    table = bundle.metadata()
    root = bundle.source_root
    where: dict[str, list[int]] = {}
    for i, path in enumerate(table["path"].astype(str)):
        where.setdefault(path, []).append(i)
        if root is not None and Path(path).is_relative_to(root):
            where.setdefault(Path(path).relative_to(root).as_posix(), []).append(i)
    mask = np.zeros(len(table), bool)
    unknown = []
    for path in dict.fromkeys(paths):
        rows = where.get(path) or where.get(str(Path(path).expanduser().resolve()))
        if rows:
            mask[rows] = True
        else:
            unknown.append(path)
    return mask, unknown


def remove_listed(bundle_dir: str | Path, paths: list[str], dry_run: bool = False) -> Removal:
    """Drop the rows of exactly these paths (e.g. the audit's findings) in one transaction,
    refreshing index, head, gate and audit as `remove` does; paths the bundle does not hold
    are reported, not fatal. `dry_run` changes nothing."""
    import numpy as np

    def listed(mask: Any, bundle: Bundle) -> list[str]:  # as the bundle stores them
        table = stored_paths(bundle, bundle.metadata())
        return table["path"].astype(str).to_numpy()[np.flatnonzero(mask)].tolist()

    if dry_run:
        bundle = Bundle.open(bundle_dir)
        mask, unknown = listed_positions(bundle, paths)
        return Removal(listed(mask, bundle), unknown)
    with change_bundle(bundle_dir, "remove") as staged:
        mask, unknown = listed_positions(staged, paths)  # under the lock: the rows of now
        if mask.all():
            raise SourceError("that would remove every image; build a new bundle instead")
        gone = listed(mask, staged)
        if gone:
            removed = remove_rows(staged, mask)
            refresh_after_change(staged, {"op": "remove", "listed": len(paths),
                                          "removed": removed, "unknown": len(unknown)})
    return Removal(gone, unknown)
