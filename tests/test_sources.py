import contextlib
import hashlib
import os
import shutil
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from embed.errors import SourceError
from embed.sources import (
    LINK_LEAVES_ROOT,
    Rejected,
    duplicate_groups,
    find_images,
    folder_source,
    list_images,
    open_source,
    stratified_hold_out,
)
from tests.conftest import write_dataset

ACCEPTED = "accepted: .bmp, .gif, .jpeg, .jpg, .png, .webp"


def _img(path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path, format=fmt)
    return path


def test_find_images_recursive_case_insensitive_and_sorted(tmp_path: Path) -> None:
    _img(tmp_path / "a" / "x.JPG", "JPEG")
    _img(tmp_path / "a" / "deep" / "y.PnG", "PNG")
    _img(tmp_path / "b.webp", "WEBP")
    _img(tmp_path / "c.bmp", "BMP")
    _img(tmp_path / "d.gif", "GIF")
    (tmp_path / "notes.txt").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["b.webp", "c.bmp", "d.gif", "a/x.JPG", "a/deep/y.PnG"]


def test_links_leaving_root_are_not_followed(tmp_path: Path) -> None:
    outside = _img(tmp_path / "outside" / "secret.jpg", "JPEG")
    root = tmp_path / "root"
    _img(root / "beagle" / "ok.jpg", "JPEG")
    os.symlink(outside, root / "beagle" / "link.jpg")
    os.symlink(outside.parent, root / "linked_dir")
    found = [p.name for p in find_images(root)]
    assert found == ["ok.jpg"]
    assert _reasons(list_images(root), root) == {
        "linked_dir": LINK_LEAVES_ROOT, "beagle/link.jpg": LINK_LEAVES_ROOT}


def _reasons(listing, root: Path) -> dict[str, str]:
    return {Path(r.path).relative_to(root).as_posix(): r.reason for r in listing.rejected}


def test_links_inside_root_are_used_and_folder_links_not_followed(tmp_path: Path) -> None:
    real = _img(tmp_path / "beagle" / "real.jpg", "JPEG")
    os.symlink(real, tmp_path / "beagle" / "alias.jpg")
    os.symlink(tmp_path / "beagle", tmp_path / "pug")
    listing = list_images(tmp_path)
    assert [p.name for p in listing.paths] == ["alias.jpg", "real.jpg"]
    assert listing.rejected == []


def test_symlink_loops_and_broken_links_are_rows_not_crashes(tmp_path: Path) -> None:
    _img(tmp_path / "beagle" / "ok.jpg", "JPEG")
    os.symlink(tmp_path / "beagle" / "b.jpg", tmp_path / "beagle" / "a.jpg")
    os.symlink(tmp_path / "beagle" / "a.jpg", tmp_path / "beagle" / "b.jpg")
    os.symlink(tmp_path / "self.jpg", tmp_path / "self.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "beagle" / "broken.jpg")
    listing = list_images(tmp_path)
    assert [p.name for p in listing.paths] == ["ok.jpg"]
    assert _reasons(listing, tmp_path) == {
        "self.jpg": "symlink loop", "beagle/a.jpg": "symlink loop",
        "beagle/b.jpg": "symlink loop", "beagle/broken.jpg": "broken link"}
    src = folder_source(tmp_path)
    assert len(src.items) == 1 and src.describe()["rejected"] == 4
    assert Rejected(str(tmp_path / "self.jpg"), "symlink loop") in src.rejected


def test_other_formats_are_rejected_with_the_accepted_list(tmp_path: Path) -> None:
    _img(tmp_path / "beagle" / "ok.jpg", "JPEG")
    _img(tmp_path / "beagle" / "scan.TIFF", "TIFF")
    (tmp_path / "beagle" / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "README").write_text("no extension")
    (tmp_path / ".DS_Store").write_bytes(b"\0\0")
    _img(tmp_path / "beagle" / "._ok.jpg", "JPEG")  # hidden: ignored silently
    _img(tmp_path / ".thumbnails" / "t.jpg", "JPEG")  # hidden folder: not listed
    listing = list_images(tmp_path)
    assert [p.name for p in listing.paths] == ["ok.jpg"]
    assert _reasons(listing, tmp_path) == {
        "README": f"no file extension; {ACCEPTED}",
        "notes.txt": f"unsupported format .txt; {ACCEPTED}",
        "beagle/logo.svg": f"unsupported format .svg; {ACCEPTED}",
        "beagle/scan.TIFF": f"unsupported format .tiff; {ACCEPTED}"}


def test_a_folder_named_like_an_image_is_a_folder(tmp_path: Path) -> None:
    _img(tmp_path / "beagle" / "x.jpg" / "inner.png", "PNG")
    listing = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in listing.paths] == [
        "beagle/x.jpg/inner.png"]
    assert listing.rejected == []
    assert folder_source(tmp_path).items[0].label == "beagle"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their mode")
def test_unreadable_folder_is_a_row(tmp_path: Path) -> None:
    _img(tmp_path / "beagle" / "ok.jpg", "JPEG")
    _img(tmp_path / "locked" / "x.jpg", "JPEG")
    (tmp_path / "locked").chmod(0)
    try:
        listing = list_images(tmp_path)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert [p.name for p in listing.paths] == ["ok.jpg"]
    assert _reasons(listing, tmp_path) == {"locked": "unreadable folder (Permission denied)"}


def test_unreadable_folder_is_a_row_even_as_root(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same case where chmod cannot stop root: os.walk's listing of one folder fails."""
    _img(tmp_path / "beagle" / "ok.jpg", "JPEG")
    _img(tmp_path / "locked" / "x.jpg", "JPEG")
    scandir = os.scandir

    def failing_scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", failing_scandir)
    listing = list_images(tmp_path)
    assert [p.name for p in listing.paths] == ["ok.jpg"]
    assert _reasons(listing, tmp_path) == {"locked": "unreadable folder (Permission denied)"}


def test_a_folder_of_only_rejected_entries_says_why(tmp_path: Path) -> None:
    _img(tmp_path / "beagle" / "scan.tiff", "TIFF")
    with pytest.raises(SourceError, match=r"no images found .*1 entries not used.*scan\.tiff:"
                                          r" unsupported format \.tiff"):
        folder_source(tmp_path)


def test_folder_source_labels_and_seeded_stratified_split(dataset: Path) -> None:
    src = folder_source(dataset, test_fraction=0.2, seed=0)
    assert src.breeds() == ["beagle", "chihuahua", "samoyed"]
    assert len(src.items) == 30
    per_breed = Counter((i.label, i.split) for i in src.items)
    for breed in src.breeds():
        assert per_breed[(breed, "test")] == 2
        assert per_breed[(breed, "train")] == 8
    assert [i.row_id for i in src.items] == list(range(30))
    again = folder_source(dataset, test_fraction=0.2, seed=0)
    assert [i.split for i in again.items] == [i.split for i in src.items]
    other = folder_source(dataset, test_fraction=0.2, seed=1)
    assert [i.split for i in other.items] != [i.split for i in src.items]
    assert src.describe()["splits"] == {"train": 24, "test": 6}


def test_images_without_breed_folder_are_unlabelled(tmp_path: Path) -> None:
    _img(tmp_path / "loose.jpg", "JPEG")
    _img(tmp_path / "n02085620-Chihuahua" / "a.jpg", "JPEG")
    _img(tmp_path / "n02085620-Chihuahua" / "b.jpg", "JPEG")
    src = folder_source(tmp_path)
    by_name = {Path(i.ref).name: i for i in src.items}
    assert by_name["loose.jpg"].label is None and by_name["loose.jpg"].split == "none"
    assert by_name["a.jpg"].label == "chihuahua"


def test_folder_with_its_own_split(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _img(tmp_path / split / "Pug" / f"{i}.jpg", "JPEG")
    src = folder_source(tmp_path)
    assert src.split_origin == "dataset"
    assert Counter(i.split for i in src.items) == {"train": 3, "test": 2}
    assert {i.label for i in src.items} == {"pug"}


# test sets of today's per-image hold-out (frozen from the code before duplicate groups):
# a folder without duplicates must keep exactly these, so existing bundles do not change
FROZEN_TEST_SETS = [
    (10, 0, 0.2, 0, ["Beagle/004.jpg", "Beagle/006.jpg", "n02085620-Chihuahua/002.jpg",
                     "n02085620-Chihuahua/009.jpg", "samoyed/004.jpg", "samoyed/005.jpg"]),
    (10, 0, 0.2, 1, ["Beagle/004.jpg", "Beagle/008.jpg", "n02085620-Chihuahua/000.jpg",
                     "n02085620-Chihuahua/001.jpg", "samoyed/001.jpg", "samoyed/003.jpg"]),
    (10, 0, 0.35, 3, ["Beagle/000.jpg", "Beagle/002.jpg", "Beagle/006.jpg", "Beagle/009.jpg",
                      "n02085620-Chihuahua/003.jpg", "n02085620-Chihuahua/004.jpg",
                      "n02085620-Chihuahua/005.jpg", "n02085620-Chihuahua/007.jpg",
                      "samoyed/003.jpg", "samoyed/004.jpg", "samoyed/005.jpg",
                      "samoyed/008.jpg"]),
    (7, 5, 0.3, 7, ["Beagle/000.jpg", "Beagle/005.jpg", "n02085620-Chihuahua/002.jpg",
                    "n02085620-Chihuahua/006.jpg", "samoyed/002.jpg", "samoyed/004.jpg"]),
]


@pytest.mark.parametrize(("per_class", "data_seed", "fraction", "seed", "expected"),
                         FROZEN_TEST_SETS)
def test_split_without_duplicates_is_unchanged(tmp_path: Path, per_class: int, data_seed: int,
                                               fraction: float, seed: int,
                                               expected: list[str]) -> None:
    root = write_dataset(tmp_path / "dogs", per_class=per_class, seed=data_seed)
    src = folder_source(root, test_fraction=fraction, seed=seed)
    test = sorted(Path(i.ref).relative_to(root).as_posix() for i in src.items
                  if i.split == "test")
    assert test == expected
    assert src.describe()["duplicates"] == 0 and src.describe()["rejected"] == 0


def test_duplicates_never_straddle_train_and_test(tmp_path: Path) -> None:
    """Copies under other names, in other breed folders and loose in the root stay together."""
    root = write_dataset(tmp_path / "dogs", per_class=10, seed=0)
    beagle, samoyed = root / "Beagle", root / "samoyed"
    for i in range(5):  # five beagles twice more: renamed, and in a sub-folder
        shutil.copy(beagle / f"{i:03d}.jpg", beagle / f"copy_{i}.jpg")
        (beagle / "again").mkdir(exist_ok=True)
        shutil.copy(beagle / f"{i:03d}.jpg", beagle / "again" / f"{i}.jpg")
    shutil.copy(beagle / "007.jpg", samoyed / "zz_mislabelled.jpg")  # another breed's folder
    shutil.copy(samoyed / "000.jpg", root / "loose.jpg")  # unlabelled copy
    duplicates = 5 * 2 + 1 + 1
    for seed in range(20):
        src = folder_source(root, test_fraction=0.2, seed=seed)
        assert src.describe()["duplicates"] == duplicates
        sides: dict[str, set[str]] = {}
        for item in src.items:
            assert item.sha256 == hashlib.sha256(Path(item.ref).read_bytes()).hexdigest()
            sides.setdefault(item.sha256, set()).add(item.split)
        assert all(not {"train", "test"} <= s for s in sides.values())
        per_breed = Counter((i.label, i.split) for i in src.items)
        assert per_breed[("chihuahua", "test")] == 2 and per_breed[("chihuahua", "train")] == 8
        # beagle: 20 files in 10 groups (5 of 3, 5 of 1) plus the mislabelled copy's
        # group; the target is round(21 * 0.2) = 4: test holds 3 to 5 of them
        assert 3 <= per_breed[("beagle", "test")] <= 5
        by_name = {Path(i.ref).relative_to(root).as_posix(): i for i in src.items}
        # the copy in samoyed/ follows the beagle it repeats; samoyed's own 10 give 2 tests
        mislabelled = by_name["samoyed/zz_mislabelled.jpg"]
        assert mislabelled.label == "samoyed"
        assert mislabelled.split == by_name["Beagle/007.jpg"].split
        assert per_breed[("samoyed", "test")] == 2 + (mislabelled.split == "test")
        assert by_name["loose.jpg"].label is None and by_name["loose.jpg"].split == "none"


def test_duplicate_groups_and_grouped_hold_out() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    assert duplicate_groups(["x", "y", "x", None, None, empty, empty, "y"]) == [
        0, 1, 0, 3, 4, 5, 6, 1]
    labels = ["a", "a", "b", "a", "a", None]
    # items 0, 2 and 5 are one photo: it follows its first member (label "a"), whole
    for seed in range(10):
        splits = stratified_hold_out(labels, 0.5, seed, groups=[0, 1, 0, 3, 4, 0])
        assert splits[0] == splits[2] and splits[5] == "none"
        assert splits.count("train") >= 1
    assert stratified_hold_out(labels, 0.5, 0, groups=list(range(6))) == stratified_hold_out(
        labels, 0.5, 0)


def test_hold_out_keeps_a_train_image_per_breed() -> None:
    splits = stratified_hold_out(["a", "b", "b", None], 0.9, seed=0)
    assert splits[0] == "train"
    assert sorted(splits[1:3]) == ["test", "train"]
    assert splits[3] == "none"


def test_missing_and_empty_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found"):
        open_source(str(tmp_path / "empty"))


def _mock_stanford_dogs(per_split: int = 4):
    """tfds' random mock makes invalid bounding boxes for stanford_dogs, so give mock_data
    real JPEG bytes through its documented `as_dataset_fn` hook (images stay undecoded, as
    the pipeline asks with SkipDecoding)."""
    import io

    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def as_dataset(self, split, decoders=None, **kwargs):
        rng = np.random.default_rng(0 if split == "train" else 1)
        images, labels, names = [], [], []
        for i in range(per_split):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
            images.append(buf.getvalue())
            labels.append(i % 3)
            names.append(f"n0208562{i}_{split}{i}.jpg")
        return tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": labels, "image/filename": names}
        )

    stack = contextlib.ExitStack()
    stack.enter_context(tfds.testing.mock_data(as_dataset_fn=as_dataset))
    # mock data counts as prepared: the offline probe is for real downloads
    stack.enter_context(mock.patch.object(tfds.core.DatasetBuilder, "is_prepared",
                                          return_value=True))
    return stack


def test_tfds_source_that_needs_a_download_fails_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, the homepage probe answers in seconds, not minutes of retries. The network is
    cut inside the test, so an online machine never starts the 750 MB download."""
    import socket
    import time

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (cut by the test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    started = time.perf_counter()
    with pytest.raises(SourceError, match="is not downloaded yet and .* cannot be reached"):
        open_source("tfds:stanford_dogs", data_dir=str(tmp_path / "tfds"))
    assert time.perf_counter() - started < 30


def test_tfds_stanford_dogs_through_mock_data() -> None:
    """The real tensorflow-datasets code path, with mock data instead of a download."""
    import tensorflow_datasets as tfds

    from embed.labels import clean_breed_name

    with _mock_stanford_dogs(per_split=4):
        src = open_source("tfds:stanford_dogs")
        names = tfds.builder("stanford_dogs").info.features["label"].names
    assert src.kind == "tfds" and src.split_origin == "dataset"
    assert Counter(i.split for i in src.items) == {"train": 4, "test": 4}
    assert src.items[0].ref == "tfds:stanford_dogs/train/n02085620_train0.jpg"
    # label names come from the dataset's own ClassLabel (mock metadata has no breed names)
    assert [i.label for i in src.items[:4]] == [clean_breed_name(names[j]) for j in (0, 1, 2, 0)]


def test_tfds_source_builds_a_bundle(tmp_path: Path) -> None:
    from embed.bundle import Bundle
    from ui.workflows import BuildConfig, build_bundle

    with _mock_stanford_dogs(per_split=6):
        result = build_bundle(BuildConfig(out=tmp_path / "b", backbone="tiny_test",
                                          weights="none", batch_size=4, runtime="keras"))
    table = Bundle(result.bundle).metadata()
    assert result.stats.embedded == 12 and result.stats.skipped == 0
    assert Counter(table["split"]) == {"train": 6, "test": 6}
    assert table["width"].tolist() == [48] * 12 and table["height"].tolist() == [40] * 12
    assert result.manifest.model_dump()["source"]["kind"] == "tfds"
    assert result.manifest.model_dump()["heads"]["logreg"]["metrics"]["test_images"] == 6


def test_tfds_source_calibrates_and_judges_int8_on_its_own_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int8 runtime's samples come from the tfds stream (not from files): both are
    read, the model is calibrated and judged on them, and the bundle serves the int8 model."""
    from embed import quantise
    from embed.build import load_payloads
    from embed.bundle import Bundle
    from embed.quantise import pick_samples
    from ui.workflows import BuildConfig, build_bundle

    monkeypatch.setattr(quantise, "MAX_TOP1_DROP", 1.0)  # a random backbone: judge loosely
    monkeypatch.setattr(quantise, "MIN_OVERLAP", 0.0)
    with _mock_stanford_dogs(per_split=6):
        source = open_source("tfds:stanford_dogs")
        samples = pick_samples(source.items)
        payloads = load_payloads(source, samples.check)
        result = build_bundle(BuildConfig(out=tmp_path / "b", backbone="tiny_test",
                                          weights="none", batch_size=4,
                                          runtime="litert-int8"))
    table = Bundle(result.bundle).metadata().set_index("row_id")
    # the sample's bytes are the very images the bundle embedded, in the sample's order
    assert [hashlib.sha256(p).hexdigest() for p in payloads] == [
        table.loc[item.row_id, "sha256"] for item in samples.check]
    runtime = result.manifest.model_dump()["backbone"]["runtime"]
    assert runtime["precision"] == "int8" and runtime["name"] == "litert-int8"
    assert runtime["int8"]["passed"] is True and runtime["int8"]["rows"] == 12
    assert runtime["int8"]["calibration"]["rows"] == 12  # too small for two samples
    from ai_edge_litert.interpreter import Interpreter

    from embed.bundle import SERVING_MODEL

    served = Interpreter(str(Path(result.bundle) / SERVING_MODEL)).get_tensor_details()
    assert np.int8 in {t["dtype"] for t in served}  # queries run the int8 model too


def test_items_and_rejected_entries_name_files_the_same_way(tmp_path: Path) -> None:
    """A folder reached through a link: both the used images and the rejected entries are
    absolute paths under the source's real location, so the bundle can store both relative to
    it (skipped.csv once mixed relative decode failures with absolute rejected entries)."""
    real = Path(os.path.realpath(tmp_path)) / "real"
    _img(real / "beagle" / "a.jpg", "JPEG")
    _img(real / "beagle" / "b.jpg", "JPEG")
    (real / "beagle" / "notes.pdf").write_bytes(b"%PDF")
    (tmp_path / "link").symlink_to(real)

    source = folder_source(tmp_path / "link")

    assert source.location == str(real)
    assert [Path(item.ref).relative_to(real).as_posix() for item in source.items] == [
        "beagle/a.jpg", "beagle/b.jpg"]
    assert [Path(r.path).relative_to(real).as_posix() for r in source.rejected] == [
        "beagle/notes.pdf"]
