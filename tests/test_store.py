"""The consistent store: one lock that never has two holders, a swap that leaves the old or the
new bundle whatever happens, and a typed manifest that refuses bad values in one line."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from embed.bundle import Bundle
from embed.errors import BundleError, BundleNotWritableError
from embed.lock import BundleLock
from embed.manifest import MAX_IMAGE_SIZE, parse_manifest
from embed.reading import read_whole
from embed.staging import BundleWriter, change_bundle, own_filesystem
from embed.swap import recover

BACKBONE = {"name": "tiny_test", "image_size": 32, "preprocessing": "tf", "dim": 16,
            "weights": "random", "weights_sha256": "ab" * 32, "decoder": 4,
            "runtime": {"name": "keras"}}


# ---- the lock ---------------------------------------------------------------------------------
def _hammer(target: str, marker: str, rounds: int, overlaps: multiprocessing.Value) -> None:
    """Take the lock `rounds` times; inside, claim a marker file that must not exist yet."""
    done = 0
    while done < rounds:
        lock = BundleLock(Path(target), "stress")
        if not lock.acquire(blocking=True):
            continue
        try:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                with overlaps.get_lock():
                    overlaps.value += 1
                continue
            os.close(fd)
            time.sleep(0.0005)
            os.unlink(marker)
            done += 1
        finally:
            lock.release()


def test_the_lock_never_has_two_holders(tmp_path: Path) -> None:
    """4 processes take and release the lock 300 times each; a holder claims a marker file
    with O_EXCL, so a second holder at the same moment is counted. The old code deleted the
    lock file while holding it, which let a third process lock a new file: thousands of
    overlaps in such a run."""
    target, marker = tmp_path / "bundle", tmp_path / "inside"
    overlaps = multiprocessing.Value("i", 0)
    workers = [multiprocessing.Process(target=_hammer, args=(str(target), str(marker), 300,
                                                             overlaps)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    assert overlaps.value == 0
    assert (tmp_path / ".bundle.lock").is_file()  # never deleted


def test_a_second_writer_is_refused_naming_command_and_pid(tmp_path: Path) -> None:
    with BundleLock(tmp_path / "b", "train"), pytest.raises(BundleError) as err:
        BundleLock(tmp_path / "b", "add").__enter__()
    assert "train, pid" in str(err.value) and str(os.getpid()) in str(err.value)
    assert "rerun when it has finished" in str(err.value)


# ---- a bundle on disk, written through the writer ---------------------------------------------
def make_bundle(target: Path, marker: str, overwrite: bool = False) -> None:
    with BundleWriter(target, overwrite=overwrite) as writer:
        staged, _ = writer.stage()
        from embed.bundle import new_manifest

        staged.write_manifest(new_manifest(BACKBONE, {"kind": "folder", "location": "/x"}))
        (staged.root / "marker.txt").write_text(marker)
        staged.record_files(staged.root / "marker.txt")
        writer.commit()


def test_commit_seals_the_manifest_with_a_commit_id(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", "one")
    first = Bundle.open(tmp_path / "b").manifest.commit
    make_bundle(tmp_path / "b", "two", overwrite=True)
    second = Bundle.open(tmp_path / "b").manifest
    assert first and second.commit and first != second.commit
    assert (tmp_path / "b" / "marker.txt").read_text() == "two"
    assert not list(tmp_path.glob(".b.old-*")) and not (tmp_path / ".b.partial").exists()


def test_change_bundle_leaves_the_bundle_untouched_on_failure(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", "one")
    with pytest.raises(RuntimeError), change_bundle(tmp_path / "b", "test") as staged:
        (staged.root / "marker.txt").unlink()
        (staged.root / "marker.txt").write_text("half-done")
        raise RuntimeError("the change failed")
    assert (tmp_path / "b" / "marker.txt").read_text() == "one"
    assert Bundle.open(tmp_path / "b").check() == []


def test_an_unwritable_folder_is_one_line_saying_what_to_do(
        tmp_path: Path, read_only_lock_folder: Callable[[], None]) -> None:
    make_bundle(tmp_path / "b", "one")
    read_only_lock_folder()
    with (pytest.raises(BundleNotWritableError, match=r"not writable.*cp -r") as refused,
          change_bundle(tmp_path / "b", "remove")):
        pass
    assert str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)
    assert (tmp_path / "b" / "marker.txt").read_text() == "one"
    assert not (tmp_path / ".b.partial").exists()


def test_a_bundle_that_is_a_mount_point_is_refused_before_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert own_filesystem(Path("/proc"))  # a mount point on every Linux
    make_bundle(tmp_path / "b", "one")
    assert not own_filesystem(tmp_path / "b")
    # a bind mount of the parent's own filesystem keeps its device number: only the mount
    # table tells, so that is what this pretends
    point = str((tmp_path / "b").resolve())
    monkeypatch.setattr("embed.staging._mount_points", lambda: {point})
    with (pytest.raises(BundleNotWritableError, match="mount point.*HOST_FOLDER:/data"),
          change_bundle(tmp_path / "b", "add")):
        pass
    assert not (tmp_path / ".b.partial").exists()
    assert (tmp_path / "b" / "marker.txt").read_text() == "one"


def test_a_read_only_bundle_refuses_to_write(tmp_path: Path) -> None:
    make_bundle(tmp_path / "b", "one")
    with pytest.raises(BundleError, match="opened for reading"):
        Bundle.open(tmp_path / "b").update_manifest(history=[])


@pytest.mark.parametrize("finished", [True, False])
def test_a_crash_between_the_two_renames_is_recovered(tmp_path: Path, finished: bool) -> None:
    """Where the folders cannot be exchanged in one step, a commit is two renames. Killed
    between them, the bundle's name is empty: the next command restores the old bundle (the
    new one was not complete) or finishes the swap (it was), and says so. The old advice,
    `build-index --out B`, deleted both survivors."""
    target = tmp_path / "b"
    make_bundle(target, "old")
    staging = tmp_path / ".b.partial"
    shutil.copytree(target, staging)
    (staging / "marker.txt").write_text("new")
    if not finished:
        (staging / "manifest.json").unlink()
    os.replace(target, tmp_path / ".b.old-4242")  # the first rename, then the crash
    assert not target.exists()
    said = recover(target, staging, "build-state.json")
    assert said is not None and ("restored" in said) == (not finished)
    assert (target / "marker.txt").read_text() == ("new" if finished else "old")
    assert not list(tmp_path.glob(".b.old-*"))


def test_build_over_a_half_swapped_bundle_never_deletes_the_survivors(tmp_path: Path) -> None:
    target = tmp_path / "b"
    make_bundle(target, "old")
    os.replace(target, tmp_path / ".b.old-4242")
    with pytest.raises(BundleError, match="already exists; pass --overwrite"), \
            BundleWriter(target, overwrite=False):
        pass
    assert (target / "marker.txt").read_text() == "old"


def test_readers_see_the_old_or_the_new_bundle_whole(tmp_path: Path) -> None:
    """A writer replaces the bundle 40 times while this process reads it; every read sees one
    commit's files: the marker names the commit the manifest records."""
    target = tmp_path / "b"
    _rewrite(str(target), 1, overwrite=False)
    ctx = multiprocessing.get_context("fork")
    writer = ctx.Process(target=_rewrite, args=(str(target), 40))
    writer.start()
    mixed = reads = 0

    def load(bundle: Bundle) -> tuple[str, str]:
        time.sleep(0.001)  # a reader takes its time between files
        return bundle.manifest.source.location, (bundle.root / "marker.txt").read_text()

    while writer.is_alive():
        location, marker = read_whole(target, load, tries=50)
        reads += 1
        mixed += location != f"/x/{marker}"
    writer.join(60)
    assert writer.exitcode == 0 and reads > 0
    assert mixed == 0


def _rewrite(target: str, times: int, overwrite: bool = True) -> None:
    from embed.bundle import new_manifest

    for i in range(1, times + 1):
        with BundleWriter(target, overwrite=overwrite) as writer:
            staged, _ = writer.stage()
            staged.write_manifest(new_manifest(BACKBONE, {"kind": "folder",
                                                          "location": f"/x/{i}"}))
            (staged.root / "marker.txt").write_text(str(i))
            writer.commit()


# ---- the typed manifest -------------------------------------------------------------------------
def manifest_with(**changes: object) -> dict:
    from embed.bundle import new_manifest

    data = json.loads(new_manifest(BACKBONE, {"kind": "folder", "location": "/x"}).to_json())
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for key in path:
            node = node[key]
        node[last] = value
    return data


@pytest.mark.parametrize(("change", "words"), [
    ({"backbone__image_size": 40000}, f"backbone.image_size is 40000: input should be less"
                                      f" than or equal to {MAX_IMAGE_SIZE}"),
    ({"backbone__dim": -3}, "backbone.dim is -3"),
    ({"embeddings__shards": [{"file": "a.npy", "rows_file": "a.parquet", "rows": "many"}]},
     "embeddings.shards.0.rows is 'many'"),
    ({"files": {"index.faiss": "abc"}}, "files.index.faiss is 'abc'"),
    ({"gate": "off"}, "gate is 'off'"),
    ({"index": {"kind": 3, "factory": "Flat", "rows": 1, "dim": 16}}, "index.kind is 3"),
    ({"heads": {"logreg": {"kind": "logreg"}}}, "heads.logreg.file"),
    ({"surprise": {}}, "surprise"),
])
def test_a_wrong_field_is_one_line_naming_it(change: dict, words: str) -> None:
    with pytest.raises(BundleError) as err:
        parse_manifest(manifest_with(**change), "B")
    message = str(err.value)
    assert words in message and "\n" not in message and "damaged" in message


def test_schema_2_is_migrated_and_older_refused() -> None:
    old = manifest_with()
    old["schema_version"] = 2
    old.pop("commit")
    old.pop("rows")
    old["gate"] = {}
    migrated = parse_manifest(old, "B")
    assert migrated.schema_version == 3 and migrated.gate is None
    old["schema_version"] = 1
    with pytest.raises(BundleError, match="schema version 1"):
        parse_manifest(old, "B")


def test_a_full_disk_is_one_line_and_leaves_no_staging(tmp_path: Path) -> None:
    """ENOSPC while a change is written: the staging folder goes (it holds the space the user
    needs back), the bundle in place is untouched, and the error says what to do."""
    import errno

    make_bundle(tmp_path / "b", "one")
    with pytest.raises(BundleError) as err, change_bundle(tmp_path / "b", "add") as staged:
        (staged.root / "big.bin").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "no space left" in str(err.value) and "Free some space" in str(err.value)
    assert "bundle in place is unchanged" in str(err.value)
    assert not (tmp_path / ".b.partial").exists()
    assert (tmp_path / "b" / "marker.txt").read_text() == "one"
    with pytest.raises(BundleError, match="no space left"), \
            change_bundle(tmp_path / "b", "train"):
        raise RuntimeError("Error in faiss::FileIOWriter: No space left on device")


def test_the_manifest_names_stale_artifacts(tmp_path: Path) -> None:
    from embed.bundle import new_manifest
    from embed.manifest import HeadRecord, RowsFingerprint

    manifest = new_manifest(BACKBONE, {"kind": "folder", "location": "/x"})
    old, now = RowsFingerprint(rows=10, digest="a" * 64), RowsFingerprint(rows=12, digest="b" * 64)
    manifest.rows = now
    manifest.heads = {"logreg": HeadRecord(kind="logreg", file="heads/logreg.skops",
                                           fitted_on=now),
                      "finetune": HeadRecord(kind="finetune", file="heads/finetune.keras",
                                             fitted_on=old)}
    assert manifest.stale() == ["head finetune"]
    assert manifest.head_is_stale("finetune") and not manifest.head_is_stale("logreg")
