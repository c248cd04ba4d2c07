"""Moving rows between the train and test splits after embedding, in every table that holds
the split (each shard's rows file and the metadata), so a near-duplicate group found on the
vectors ends on one side, as exact copies are kept at listing time (embed.sources)."""

from __future__ import annotations

from embed.atomic import atomic_path
from embed.build import earlier_rejected, write_tables
from embed.bundle import Bundle


def move_rows_to_split(bundle: Bundle, moves: dict[int, str]) -> int:
    """Set the split of the rows with these row ids; returns how many rows changed. The
    manifest's split counts follow."""
    import pandas as pd

    if not moves:
        return 0
    shards = [entry.model_dump() for entry in bundle.manifest.embeddings.shards]
    counts = dict(bundle.manifest.source.splits)
    changed = 0
    for entry in shards:
        path = bundle.inside(entry["rows_file"])
        rows = pd.read_parquet(path)
        new = rows["row_id"].map(moves)
        hit = (new.notna() & (new != rows["split"])).to_numpy()
        if hit.any():
            for old, now in zip(rows.loc[hit, "split"], new[hit], strict=True):
                counts[old] = counts.get(old, 0) - 1
                counts[now] = counts.get(now, 0) + 1
            rows.loc[hit, "split"] = new[hit]
            with atomic_path(path) as tmp:
                rows.to_parquet(tmp, index=False)
            changed += int(hit.sum())
    if changed:
        write_tables(bundle, shards, earlier_rejected(bundle))
        bundle.update_manifest(source=bundle.manifest.source.model_copy(update={
            "splits": counts}))
    return changed
