"""A build keeps near-duplicate groups in one split, as it keeps exact copies (embed.sources).

Runs once the vectors are written and before the index and head: the near-duplicate threshold
is calibrated on a small seeded sample of the build's own photos (each copied five ways by
embed.perturb and embedded with the build's embedder: never a fixed number, since what a
resize does to the similarity depends on the backbone), near pairs come from one exact kNN
graph, and each group with rows on both sides moves whole to one side
(index.duplicates.one_split_per_group). Only a seeded hold-out is changed: a dataset's own
train/test folders or tfds splits are the dataset's, and the audit reports their leaks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from embed.bundle import Bundle
from embed.regroup import move_rows_to_split
from index.duplicates import knn_graph, near_duplicates, one_split_per_group
from ui.audit_report import CALIBRATION_PHOTOS, calibrate_near_duplicates

log = logging.getLogger(__name__)
# The build calibrates and looks for near-copies exactly as `audit` does (its sample size,
# seed and kNN width), so an audit right after a build finds no near-copy crossing the split
# the build just kept whole (the trial saw "split_leak 2" from a 40-photo, 8-neighbour build
# calibration against the audit's 100 photos, 16 neighbours). The copies' vectors are cached
# by photo and embedder (embed.copy_cache): a warm rebuild embeds none of them.


def keep_near_copies_together(bundle: Bundle, embedder: Any,
                              photos: int = CALIBRATION_PHOTOS) -> dict[str, Any] | None:
    """Calibrate, find near-duplicate groups, move the crossing ones to one side; records
    what it did in the manifest's source section and returns that record (None when the
    split is not the build's own hold-out or there is too little to calibrate on)."""
    source = bundle.manifest.source
    if source.get("split_origin") != "hold_out":
        return None
    start = time.perf_counter()
    table = bundle.metadata()
    vectors = bundle.embeddings()
    if len(table) < 3 or table["label"].notna().sum() < 2:
        return None
    log.info("keeping near-duplicate groups in one split (calibrating on %s photos)",
             min(photos, len(table)))
    try:
        threshold = calibrate_near_duplicates(bundle, table, vectors, photos=photos,
                                              embedder=embedder)  # copies cached by embedder
    except ValueError as exc:  # no photo could be copied and embedded
        log.warning("near-duplicate groups not checked: %s", exc)
        return None
    hashes = table["sha256"].to_numpy(object)
    i, j, _ = near_duplicates(*knn_graph(vectors), threshold.value, hashes)
    moves, groups, crossed = one_split_per_group(i, j, table["split"].to_numpy(object))
    row_ids = table["row_id"].to_numpy()
    moved = move_rows_to_split(bundle, {int(row_ids[p]): side for p, side in moves.items()})
    record = {"near_duplicate_groups": groups, "near_duplicate_groups_crossing": crossed,
              "near_duplicate_rows_moved": moved,
              "near_duplicate_threshold": threshold.as_dict(),
              "near_duplicate_seconds": round(time.perf_counter() - start, 3)}
    bundle.update_manifest(source=bundle.manifest.source.model_copy(update=record))
    return record


def adopt_split(bundle: Bundle, reference: Path) -> dict[str, Any]:
    """Give the staged bundle's rows the split they have in `reference` (matched by path):
    a `--fine-tune` build re-embeds the base bundle's photos with a backbone tuned on the
    base's train split, so regrouping near-copies on the new vectors could move a tuned-on
    photo into the test split (a leak) and would compare before/after on different photos.
    Rows the reference lacks keep their own split. Recorded in the manifest's source
    section; returns that record."""
    start = time.perf_counter()
    ref = Bundle(reference).metadata()
    side = dict(zip(ref["path"].astype(str), ref["split"].astype(str), strict=True))
    table = bundle.metadata()
    moves, unmatched = {}, 0
    for row_id, path in zip(table["row_id"].to_numpy(), table["path"].astype(str), strict=True):
        if path in side:
            moves[int(row_id)] = side[path]
        else:
            unmatched += 1
    record = {"split_from": str(reference),
              "split_rows_moved": move_rows_to_split(bundle, moves),
              "split_rows_unmatched": unmatched,
              "split_seconds": round(time.perf_counter() - start, 3)}
    bundle.update_manifest(source=bundle.manifest.source.model_copy(update=record))
    return record
