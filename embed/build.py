"""Embedding a whole source into a bundle: shards, metadata.parquet and skipped.csv.

The writer side of reader -> mapper -> writer. It continues an interrupted build from its
last complete shard (see `embed.shards`), and records what it wrote in the manifest.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.bundle import BACKBONE_IDENTITY, SCHEMA_VERSION, Bundle
from embed.embedder import Embedder
from embed.pipeline import DEFAULT_BATCH_SIZE, ImageBatch, iter_payload_batches
from embed.quantise import pick_samples, sample_identity
from embed.shards import ShardWriter, complete_shards, merged_tables
from embed.sources import ImageItem, Source, encoded_images

ProgressCallback = Callable[[int], None]  # called with the number of items just processed
DEFAULT_ROWS_PER_SHARD = 4096
TFDS_SAMPLE_POOL = 3000  # int8 samples of a tfds source come from its first items (a stream)
PARITY_SCAN_ITEMS = 256  # the parity check runs on the first readable batch among these


@dataclass
class EmbedStats:
    embedded: int
    skipped: int
    seconds: float
    shards: int
    reused: int = 0  # items an interrupted build had already done
    processed: int = 0  # items read in this run
    fixed: dict[str, float] = field(default_factory=dict)  # one-time costs, seconds

    @property
    def images_per_second(self) -> float:
        """Steady state: items read per second of the embedding loop, one-time costs apart."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def stored_ref(root: Path | None, item: ImageItem) -> str:
    """How the bundle records an item: see `stored_path`."""
    return stored_path(root, item.ref)


def stored_path(root: Path | None, ref: str) -> str:
    """How the bundle records a path, in metadata and skipped.csv alike: relative to the
    bundle's source root when it lies there, so a bundle and its photos can move together;
    otherwise as it is (tfds references, or photos added later from another folder)."""
    if root is None or ref.startswith("tfds:"):
        return ref
    path = Path(ref)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def batch_rows(root: Path | None, items: dict[int, ImageItem], batch: ImageBatch
               ) -> list[dict[str, Any]]:
    """One row dict per item of a reader batch, in order (reason "" when embedded)."""
    rows = []
    for i, row_id in enumerate(batch.row_ids.tolist()):
        item = items[row_id]
        ok = bool(batch.ok[i])
        rows.append({
            "row_id": row_id, "path": stored_ref(root, item), "label": item.label,
            "split": item.split, "sha256": batch.sha256[i],
            "width": int(batch.widths[i]) if ok else 0,
            "height": int(batch.heights[i]) if ok else 0,
            "reason": "" if ok else batch.reasons[i],
        })
    return rows


def resume_key(source: Source, embedder: Embedder, runtime: str,
               rows_per_shard: int) -> dict[str, Any]:
    """What must match for an interrupted build's shards to be reused: the same items in the
    same order, the same backbone and weights, runtime and shard size."""
    items = hashlib.sha256()
    for item in source.items:
        items.update(f"{item.row_id}\t{item.ref}\t{item.label}\t{item.split}\n".encode())
    identity = embedder.identity()
    return {
        "schema_version": SCHEMA_VERSION, "source": source.location,
        "items_sha256": items.hexdigest(), "runtime": runtime,
        # what produces the vectors once `prepare_runtime` chose (auto: float32 or int8), so
        # a resume never mixes the two; `kept_choice` reads it back for the resume
        "produced_by": embedder.runtime.name,
        "backbone": {k: identity.get(k) for k in BACKBONE_IDENTITY},
        "rows_per_shard": rows_per_shard,
    }


def kept_choice(staged: dict[str, Any] | None, key: dict[str, Any]) -> str | None:
    """The runtime an interrupted build of the same key chose (`resume_key`'s
    ``produced_by``), for its resume to keep; None when there is no such build."""
    if not staged or "produced_by" not in staged:
        return None
    same = {k: v for k, v in staged.items() if k != "produced_by"} == {
        k: v for k, v in key.items() if k != "produced_by"}
    return str(staged["produced_by"]) if same else None


def embed_items(
    bundle: Bundle,
    writer: ShardWriter,
    items: list[ImageItem],
    embedder: Embedder,
    batch_size: int = DEFAULT_BATCH_SIZE,
    encoded: Any = None,
    on_progress: ProgressCallback | None = None,
) -> float:
    """Reader -> mapper -> writer over `items`; returns the seconds it took."""
    root = bundle.source_root
    items_by_id = {item.row_id: item for item in items}
    start = time.perf_counter()
    for step in embedder.embedded_batches(items, batch_size, encoded):
        writer.add(batch_rows(root, items_by_id, step.batch), step.vectors)
        if on_progress:
            on_progress(len(step.batch.row_ids))
    writer.close()
    return time.perf_counter() - start


def load_payloads(source: Source, items: list[ImageItem]) -> list[bytes | None]:
    """The encoded bytes of `items` (None where unreadable): read from their files, or
    streamed from a tfds source up to the last one needed."""
    if source.kind != "tfds":
        out: list[bytes | None] = []
        for item in items:
            try:
                out.append(Path(item.ref).read_bytes())
            except OSError:
                out.append(None)
        return out
    position = {it.row_id: i for i, it in enumerate(source.items)}
    wanted = {position[item.row_id]: k for k, item in enumerate(items)}
    found: list[bytes | None] = [None] * len(items)
    for i, data in enumerate(encoded_images(source).take(max(wanted, default=-1) + 1)
                             .as_numpy_iterator()):
        if i in wanted:
            found[wanted[i]] = bytes(data)
    return found


def prepare_runtime(source: Source, embedder: Embedder, batch_size: int = DEFAULT_BATCH_SIZE,
                    calibrate: bool = True, choice: str | None = None) -> dict[str, float]:
    """The runtime's one-time work, done once before the embedding loop (on the driver, for
    every engine) so that the loop's images/s is the steady state and every worker embeds
    with what was decided here: the parity check against Keras on the first readable batch,
    and for int8 (`calibrate`, for builds; an `add` keeps the bundle's model) the
    calibration on a seeded sample of the source's images and the task check on another.
    Afterwards `embedder.runtime.model_file` is the model that produces the vectors.
    `choice`: the runtime an interrupted build chose (`kept_choice`), which `auto` keeps.
    Done once per embedder: a second call returns the first one's costs.
    Returns the one-time costs in seconds: start-up, conversion, parity, int8 conversion,
    int8 check."""
    if embedder.prepared is not None:
        return embedder.prepared
    runtime = embedder.runtime
    config = embedder.reader_config(batch_size)

    def batches(items: list[ImageItem], payloads: list[bytes | None]
                ) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        kept = [(it, p) for it, p in zip(items, payloads, strict=True) if p is not None]
        labels = {it.row_id: it.label for it, _ in kept}
        for batch in iter_payload_batches([it.row_id for it, _ in kept],
                                          [p for _, p in kept], config):
            ids = batch.row_ids[batch.ok].tolist()
            yield batch.inputs[batch.ok], [labels[i] for i in ids]

    for start in range(0, min(len(source.items), PARITY_SCAN_ITEMS), batch_size):
        if not runtime.parity_pending:
            break
        chunk = source.items[start:start + batch_size]
        for inputs, _ in batches(chunk, load_payloads(source, chunk)):
            runtime.check_parity(inputs)  # a no-op on a batch without a readable image
    if calibrate and runtime.calibrates and source.items:
        pool = source.items[:TFDS_SAMPLE_POOL] if source.kind == "tfds" else source.items
        samples = pick_samples(pool)
        calibration = load_payloads(source, samples.calibration)
        check = load_payloads(source, samples.check)
        digests = [hashlib.sha256(p).hexdigest() for p in calibration if p is not None]
        check_id = sample_identity(
            [hashlib.sha256(p).hexdigest() if p is not None else "-" for p in check],
            config.image_size, config.preprocessing, [it.label for it in samples.check])
        runtime.calibrate(lambda: (x for x, _ in batches(samples.calibration, calibration)),
                          sample_identity(digests, config.image_size, config.preprocessing),
                          batches(samples.check, check), len(digests), check_id,
                          images=len(source.items), choice=choice)
    seconds = runtime.seconds
    start_up = embedder.load_seconds - seconds.get("conversion", 0.0)
    embedder.prepared = {"start-up": round(max(start_up, 0.0), 2),
                         **{k: round(v, 2) for k, v in seconds.items()}}
    return embedder.prepared


def write_tables(bundle: Bundle, shards: list[dict[str, Any]], rejected: Any) -> tuple[Any, Any]:
    """metadata.parquet and skipped.csv from the shards' rows plus `rejected` (folder entries
    that never became items); records them and the shards in the manifest's file list."""
    import pandas as pd

    metadata, skipped = merged_tables(bundle, shards)
    if len(rejected):
        skipped = pd.concat([skipped, rejected[list(skipped.columns)]], ignore_index=True)
    bundle.write_metadata(metadata)
    bundle.write_skipped(skipped)
    files = [bundle.metadata_path, bundle.skipped_path]
    for entry in shards:
        files += [bundle.inside(entry["file"]), bundle.inside(entry["rows_file"])]
    bundle.record_files(*files)
    return metadata, skipped


def rejected_table(bundle: Bundle, source: Source) -> Any:
    """The folder entries `source` did not use, their paths stored like the items' (relative
    to the bundle's source root), so skipped.csv never mixes the two forms."""
    import pandas as pd

    root = bundle.source_root
    return pd.DataFrame([{"row_id": None, "path": stored_path(root, r.path), "reason": r.reason}
                         for r in source.rejected], columns=["row_id", "path", "reason"])


def embed_source_into(
    bundle: Bundle,
    source: Source,
    embedder: Embedder,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    on_progress: ProgressCallback | None = None,
) -> EmbedStats:
    """Run reader -> mapper -> writer over every item not yet in a complete shard; bad files
    go to skipped.csv. Records counts, shards, files and the runtime's parity figures."""
    fixed = prepare_runtime(source, embedder, batch_size)
    done = complete_shards(bundle, embedder.dim)
    watermark = max((s["last_row_id"] for s in done if s["last_row_id"] is not None),
                    default=-1)
    todo = [item for item in source.items if item.row_id > watermark]
    reused = len(source.items) - len(todo)
    if on_progress and reused:
        on_progress(reused)
    writer = ShardWriter(bundle, embedder.dim, rows_per_shard, shards=done)
    encoded = encoded_images(source).skip(reused) if source.kind == "tfds" else None
    seconds = embed_items(bundle, writer, todo, embedder, batch_size, encoded, on_progress)
    return record_build(bundle, source, embedder, writer.shards, seconds, reused, len(todo),
                        rows_per_shard, fixed)


def record_build(bundle: Bundle, source: Source, embedder: Embedder,
                 shards: list[dict[str, Any]], seconds: float, reused: int, processed: int,
                 rows_per_shard: int, fixed: dict[str, float] | None = None,
                 **embeddings: Any) -> EmbedStats:
    """metadata.parquet and skipped.csv from the shards, and the manifest's counts and
    embeddings section (`embeddings` adds to it), whichever engine wrote the shards.
    `fixed`: one-time costs (conversion, calibration, parity), seconds."""
    fixed = dict(fixed or {})
    metadata, skipped = write_tables(bundle, shards, rejected_table(bundle, source))
    stats = EmbedStats(len(metadata), len(skipped), seconds, len(shards), reused, processed,
                       fixed)
    bundle.update_manifest(
        backbone=embedder.identity(),  # the runtime now records its parity figures
        counts={"images": len(source.items), "embedded": stats.embedded,
                "skipped": stats.skipped},
        embeddings={"shards": shards, "rows_per_shard": rows_per_shard,
                    "dtype": "float32", "normalised": "l2",
                    "images_per_second": round(stats.images_per_second, 2),
                    "fixed_seconds": fixed, "reused_items": reused, **embeddings},
    )
    return stats


def known_rows(bundle: Bundle) -> tuple[set[str], int]:
    """The content hashes already in the bundle, and the next free row id."""
    import pandas as pd

    metadata = pd.read_parquet(bundle.metadata_path, columns=["row_id", "sha256"])
    skipped = pd.read_csv(bundle.skipped_path) if bundle.skipped_path.is_file() else None
    ids = metadata["row_id"].tolist()
    if skipped is not None and len(skipped):
        ids += pd.to_numeric(skipped["row_id"], errors="coerce").dropna().astype(int).tolist()
    return set(metadata["sha256"]), max(ids, default=-1) + 1


def earlier_rejected(bundle: Bundle) -> Any:
    """The skipped rows without a row id: folder entries rejected by earlier builds or adds,
    kept when the bundle's rows change."""
    import pandas as pd

    if not bundle.skipped_path.is_file():
        return pd.DataFrame(columns=["row_id", "path", "reason"])
    old = pd.read_csv(bundle.skipped_path)
    old = old[pd.to_numeric(old["row_id"], errors="coerce").isna()].copy()
    root = bundle.source_root  # bundles written before paths were stored relative
    old["path"] = [stored_path(root, str(p)) for p in old["path"]]
    return old


def append_source(
    bundle: Bundle,
    source: Source,
    embedder: Embedder,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
) -> EmbedStats:
    """Embed the items of `source` whose content the bundle does not hold yet, as new shards
    after the existing ones (row ids continue); rewrites metadata and skipped rows."""
    items = new_items(bundle, source)
    prepare_runtime(source, embedder, batch_size, calibrate=False)  # the bundle's model stays
    embeddings = bundle.manifest.embeddings
    writer = ShardWriter(bundle, embedder.dim, embeddings.rows_per_shard or len(items) or 1,
                         shards=[s.model_dump() for s in embeddings.shards])
    if on_progress and len(source.items) > len(items):
        on_progress(len(source.items) - len(items))
    seconds = embed_items(bundle, writer, items, embedder, batch_size, None, on_progress)
    return record_append(bundle, source, items, writer.shards, seconds)


def new_items(bundle: Bundle, source: Source) -> list[ImageItem]:
    """The items of `source` whose content the bundle does not hold yet, with the row ids
    they get: after every row id the bundle has used."""
    known, next_id = known_rows(bundle)
    fresh = [item for item in source.items if item.sha256 is None or item.sha256 not in known]
    return [ImageItem(next_id + i, item.ref, item.label, item.split, item.sha256)
            for i, item in enumerate(fresh)]


def record_append(bundle: Bundle, source: Source, items: list[ImageItem],
                  shards: list[dict[str, Any]], seconds: float, **embeddings: Any
                  ) -> EmbedStats:
    """After `items` were embedded into `shards` (the old ones first): metadata, skipped rows
    (folder entries rejected earlier kept) and the manifest's counts and shard list."""
    import pandas as pd

    manifest = bundle.manifest
    rejected = pd.concat([earlier_rejected(bundle), rejected_table(bundle, source)],
                         ignore_index=True).drop_duplicates("path")
    metadata, skipped = write_tables(bundle, shards, rejected)
    counts = manifest.counts.model_copy(update={
        "images": manifest.counts.images + len(items), "embedded": len(metadata),
        "skipped": len(skipped)})
    bundle.update_manifest(counts=counts, embeddings={
        **manifest.embeddings.model_dump(), "shards": shards, **embeddings})
    added = len(metadata) - manifest.counts.embedded
    return EmbedStats(added, len(items) - added, seconds, len(shards),
                      len(source.items) - len(items), len(items))


def remove_rows(bundle: Bundle, drop: Any) -> int:
    """Rewrite the shards without the metadata positions in `drop` (a boolean mask); returns
    how many rows went. Each old shard is read before a new one can overwrite its number."""
    import numpy as np
    import pandas as pd

    manifest = bundle.manifest
    embeddings = manifest.embeddings.model_dump()
    old_shards = manifest.embeddings.shards
    drop = np.asarray(drop, bool)
    writer = ShardWriter(bundle, manifest.backbone.dim,
                         manifest.embeddings.rows_per_shard or max(len(drop), 1))
    position = 0
    for entry in old_shards:
        rows = pd.read_parquet(bundle.inside(entry.rows_file))
        vectors = np.array(np.load(bundle.inside(entry.file), mmap_mode="r",
                                   allow_pickle=False))
        embedded = (rows["reason"] == "").to_numpy()
        gone = np.zeros(len(rows), bool)
        gone[embedded] = drop[position: position + int(embedded.sum())]
        position += int(embedded.sum())
        kept = rows[~gone]
        writer.add(kept.to_dict("records"), vectors[~drop[position - len(vectors): position]])
    writer.close()
    kept_files = {bundle.inside(e["file"]) for e in writer.shards} | {
        bundle.inside(e["rows_file"]) for e in writer.shards}
    for leftover in sorted(bundle.embeddings_dir.glob("part-*")):
        if leftover.resolve() not in kept_files:
            leftover.unlink()
    rejected = earlier_rejected(bundle)
    bundle.forget_files(*[e.file for e in old_shards], *[e.rows_file for e in old_shards])
    metadata, skipped = write_tables(bundle, writer.shards, rejected)
    removed = int(drop.sum())
    counts = manifest.counts.model_copy(update={
        "images": max(manifest.counts.images - removed, 0), "embedded": len(metadata),
        "skipped": len(skipped)})
    embeddings["shards"] = writer.shards
    bundle.update_manifest(counts=counts, embeddings=embeddings)
    return removed
