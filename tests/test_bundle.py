import json
from pathlib import Path

import numpy as np
import pytest

from embed.bundle import SCHEMA_VERSION, Bundle, check_same_backbone
from embed.errors import BundleError, IncompatibleBundleError
from embed.shards import ShardWriter, complete_shards, merged_tables
from embed.staging import staged_bundle

MINIMAL = {"schema_version": SCHEMA_VERSION,
           "backbone": {"name": "x", "image_size": 8, "dim": 3, "preprocessing": "tf"}}


def _rows(ids: range, bad: set[int] = frozenset()) -> list[dict]:
    return [{"row_id": i, "path": f"{i}.jpg", "label": "a", "split": "train", "sha256": str(i),
             "width": 8, "height": 8, "reason": "broken" if i in bad else ""} for i in ids]


def test_shard_writer_fixed_rows_per_shard_and_rows_files(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, writable=True)
    writer = ShardWriter(bundle, dim=3, rows_per_shard=4)
    rng = np.random.default_rng(0)
    sizes, bad, start, blocks = (3, 3, 5, 0, 1), {4, 11}, 0, []
    for n in sizes:
        rows = _rows(range(start, start + n), bad)
        block = rng.normal(size=(sum(1 for r in rows if not r["reason"]), 3)).astype(np.float32)
        writer.add(rows, block)
        blocks.append(block)
        start += n
    shards = writer.close()
    # 12 items, 2 unusable: 10 vectors in shards of 4, 4 and 2; an unusable item travels with
    # the shard of the next usable one, or the last shard
    assert [s["rows"] for s in shards] == [4, 4, 2]
    assert [(s["first_row_id"], s["last_row_id"]) for s in shards] == [(0, 3), (4, 8), (9, 11)]
    np.testing.assert_array_equal(np.concatenate([np.load(p) for p in bundle.shard_paths()]),
                                  np.concatenate(blocks))
    metadata, skipped = merged_tables(bundle, shards)
    assert metadata["row_id"].tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert skipped["row_id"].tolist() == [4, 11] and set(skipped["reason"]) == {"broken"}
    assert complete_shards(bundle, 3) == shards
    with pytest.raises(ValueError, match="vectors"):
        writer.add(_rows(range(20, 21)), np.zeros((0, 3), np.float32))


def test_complete_shards_stop_at_the_first_partial_one(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, writable=True)
    writer = ShardWriter(bundle, dim=3, rows_per_shard=2)
    writer.add(_rows(range(6)), np.ones((6, 3), np.float32))
    writer.close()
    bundle.shard_rows_path(1).unlink()  # killed between a shard's two files
    (bundle.embeddings_dir / ".part-00003.npy.123-abc.tmp").write_bytes(b"half")
    done = complete_shards(bundle, 3)
    assert [s["last_row_id"] for s in done] == [1]
    assert sorted(p.name for p in bundle.embeddings_dir.iterdir()) == [
        "part-00000.npy", "part-00000.rows.parquet"]


def test_staged_bundle_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "b"
    with pytest.raises(RuntimeError), staged_bundle(target) as bundle:
        bundle.write_manifest(MINIMAL)
        raise RuntimeError("crash half-way")
    assert not target.exists()
    # no staging folder left behind; the lock file stays (deleting it let two writers in)
    assert [p.name for p in tmp_path.iterdir()] == [".b.lock"]
    with staged_bundle(target) as bundle:
        bundle.write_manifest({**MINIMAL, "history": [{"n": 1}]})
    assert Bundle.open(target).manifest.history == [{"n": 1}]
    with pytest.raises(BundleError, match="already exists"), staged_bundle(target):
        pass
    with staged_bundle(target, overwrite=True) as bundle:
        bundle.write_manifest({**MINIMAL, "history": [{"n": 2}]})
    assert Bundle.open(target).manifest.history == [{"n": 2}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.lock", "b"]


def test_open_refuses_missing_incomplete_and_other_schema(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist; build one"):
        Bundle.open(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(BundleError, match="not a complete bundle"):
        Bundle.open(tmp_path / "half")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(IncompatibleBundleError, match="schema version 0"):
        Bundle.open(tmp_path / "old")


def test_backbone_mismatch_names_both_sides() -> None:
    built = {"name": "mobilenet_v2", "image_size": 160, "preprocessing": "tf", "dim": 1280,
             "weights": "/w/dogs.h5", "weights_sha256": "a" * 64}
    check_same_backbone(built, dict(built))
    other = {**built, "name": "resnet50", "preprocessing": "caffe", "dim": 2048}
    with pytest.raises(IncompatibleBundleError) as info:
        check_same_backbone(built, other)
    message = str(info.value)
    assert "mobilenet_v2 @ 160px" in message and "resnet50 @ 160px" in message
    assert "name, preprocessing, dim" in message


def test_vectors_from_another_decoder_version_are_refused() -> None:
    built = {"name": "mobilenet_v2", "image_size": 160, "preprocessing": "tf", "dim": 1280,
             "weights": "/w/dogs.h5", "weights_sha256": "a" * 64, "decoder": 1}
    with pytest.raises(IncompatibleBundleError, match="decoder v1 but the query.*decoder v2"):
        check_same_backbone(built, {**built, "decoder": 2})


def test_tiny_bundle_layout_and_manifest(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    m = bundle.manifest.model_dump()
    assert m["schema_version"] == SCHEMA_VERSION
    assert m["counts"] == {"images": 30, "embedded": 30, "skipped": 0}
    assert m["backbone"]["name"] == "tiny_test" and len(m["backbone"]["weights_sha256"]) == 64
    from embed.images import DECODER_VERSION

    assert m["backbone"]["decoder"] == DECODER_VERSION
    assert len(m["embeddings"]["shards"]) == 5 and m["embeddings"]["rows_per_shard"] == 7
    assert {"tensorflow-datasets", "faiss-cpu", "scikit-learn", "keras"} <= set(m["versions"])
    table = bundle.metadata()
    assert list(table.columns) == ["row_id", "path", "label", "split", "sha256", "width",
                                   "height"]
    assert table["row_id"].tolist() == list(range(30))
    assert bundle.embeddings().shape == (30, 16)
    for name in ("index.faiss", "heads/logreg.skops", "report/logreg_confusion.png",
                 "report/logreg_metrics.json", "report/logreg_per_breed.csv", "skipped.csv"):
        assert (tiny_bundle / name).is_file(), name
