"""Query inputs: files, folders, list files (bounded: no cycles, no unbounded nesting), stdin,
and URLs that are refused with what to do. Real files on disk throughout."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from embed.errors import SourceError
from embed.inputs import MAX_LIST_DEPTH, is_url, refuse_url, resolve_inputs
from embed.sources import Rejected


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), (200, 120, 60)).save(path)
    return path


def _list(path: Path, *lines: object) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_files_folders_and_lists_in_the_order_given(tmp_path: Path) -> None:
    one = _photo(tmp_path / "one.jpg")
    two = _photo(tmp_path / "folder" / "b" / "two.png")
    three = _photo(tmp_path / "folder" / "a" / "three.jpg")
    (tmp_path / "folder" / "notes.pdf").write_bytes(b"%PDF")
    four = _photo(tmp_path / "listed" / "four.webp")
    lst = _list(tmp_path / "photos.lst", "", f"  {four}  ", tmp_path / "gone.jpg")

    got = resolve_inputs([str(one), str(tmp_path / "folder"), str(lst)])

    assert got.paths == [one, three, two, four]  # folders sorted, lists in line order
    assert [(Path(r.path).name, r.reason.split(";")[0]) for r in got.rejected] == [
        ("notes.pdf", "unsupported format .pdf"), ("gone.jpg", "no such file or folder")]


def test_a_folder_s_photos_are_named_as_the_folder_was_typed(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """A results file names `photos/a.jpg` whether the user typed the folder or the file,
    also through a link to the folder (not the absolute, resolved path)."""
    _photo(tmp_path / "real" / "a.jpg")
    (tmp_path / "real" / "notes.pdf").write_bytes(b"%PDF")
    (tmp_path / "photos").symlink_to(tmp_path / "real")
    monkeypatch.chdir(tmp_path)

    got = resolve_inputs(["photos", "photos/a.jpg"])

    assert got.paths == [Path("photos/a.jpg"), Path("photos/a.jpg")]
    assert [r.path for r in got.rejected] == ["photos/notes.pdf"]


def test_a_list_file_that_lists_itself_is_a_row_not_a_recursion_error(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "dog.jpg")
    lst = tmp_path / "self.txt"
    _list(lst, lst, photo)

    got = resolve_inputs([str(lst)])

    assert got.paths == [photo]
    assert got.rejected == [Rejected(str(lst), "list file includes itself")]


def test_a_list_file_with_nothing_but_itself_says_why_nothing_was_found(tmp_path: Path) -> None:
    lst = tmp_path / "self.list"
    _list(lst, lst)
    with pytest.raises(SourceError, match=r"no images found in .*self\.list; 1 entries not"
                       r" used, e.g. .*self\.list: list file includes itself$"):
        resolve_inputs([str(lst)])


def test_lists_that_list_each_other_are_cut_where_the_cycle_closes(tmp_path: Path) -> None:
    first, second = _photo(tmp_path / "first.jpg"), _photo(tmp_path / "second.jpg")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    _list(a, b, first)
    _list(b, a, second)

    got = resolve_inputs([str(a)])

    # a -> b -> (a again: refused), second; then a's own photo
    assert got.paths == [second, first]
    assert got.rejected == [
        Rejected(str(a), "list file includes itself (through a.txt -> b.txt -> a.txt)")]


def test_the_same_list_twice_is_no_cycle(tmp_path: Path) -> None:
    """Only a list that is being expanded is refused: one named twice side by side is read
    twice, as before."""
    photo = _photo(tmp_path / "dog.jpg")
    shared = _list(tmp_path / "shared.txt", photo)
    top = _list(tmp_path / "top.txt", shared, shared)

    got = resolve_inputs([str(top)])

    assert got.paths == [photo, photo] and got.rejected == []


def test_a_cycle_through_a_symlink_is_found(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "dog.jpg")
    lst = tmp_path / "real.txt"
    alias = tmp_path / "alias.lst"
    alias.symlink_to(lst)
    _list(lst, alias, photo)

    got = resolve_inputs([str(lst)])

    assert got.paths == [photo]
    assert got.rejected == [Rejected(str(alias), "list file includes itself")]


def _chain(tmp_path: Path, lists: int, photo: Path) -> list[Path]:
    """lists[0] names lists[1], ..., the last names the photo."""
    files = [tmp_path / f"level{i:02d}.txt" for i in range(lists)]
    for here, below in zip(files, files[1:] + [photo], strict=True):
        _list(here, below)
    return files


def test_nesting_is_bounded(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "dog.jpg")
    assert MAX_LIST_DEPTH == 16

    (tmp_path / "ok").mkdir()
    deepest = _chain(tmp_path / "ok", MAX_LIST_DEPTH, photo)
    assert resolve_inputs([str(deepest[0])]).paths == [photo]  # 16 lists deep: read

    (tmp_path / "deep").mkdir()
    too_deep = _chain(tmp_path / "deep", MAX_LIST_DEPTH + 1, photo)
    other = _photo(tmp_path / "other.jpg")
    got = resolve_inputs([str(too_deep[0]), str(other)])
    assert got.paths == [other]
    assert got.rejected == [Rejected(str(too_deep[MAX_LIST_DEPTH]),
                                     "list files nested more than 16 deep; not read")]


def test_stdin_lists_and_an_unreadable_list(tmp_path: Path) -> None:
    photo = _photo(tmp_path / "dog.jpg")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    lst = _list(tmp_path / "self.txt", tmp_path / "self.txt", photo)

    got = resolve_inputs(["-"], stdin=io.StringIO(f"{lst}\n\n{binary}\n"))

    assert got.paths == [photo]
    assert got.rejected == [Rejected(str(lst), "list file includes itself"),
                            Rejected(str(binary), "unreadable list file (not a text file)")]


def test_a_single_missing_input_and_inputs_without_images(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"missing\.jpg does not exist$"):
        resolve_inputs([str(tmp_path / "missing.jpg")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images found in"):
        resolve_inputs([str(tmp_path / "empty")])


URL = "https://example.com/photos/dog.jpg"


def test_a_url_says_it_is_not_fetched(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"^https://example\.com/photos/dog\.jpg is a URL;"
                       r" URLs are not fetched, download the photo first"):
        resolve_inputs([URL])
    photo = _photo(tmp_path / "dog.jpg")
    lst = _list(tmp_path / "mixed.txt", URL, photo)
    got = resolve_inputs([str(lst), "http://example.com/x.png"])
    assert got.paths == [photo]
    assert [(r.path, r.reason.split(";")[0]) for r in got.rejected] == [
        (URL, "a URL"), ("http://example.com/x.png", "a URL")]


def test_what_counts_as_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_url(URL) and is_url("s3://bucket/dog.jpg")
    assert is_url(Path(URL))  # pathlib made it "https:/example.com/..."
    assert not is_url("C:/photos/dog.jpg")  # a drive letter
    assert not is_url(str(tmp_path / "dog.jpg")) and not is_url("tfds:stanford_dogs")
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "ab:" / "dog.jpg")
    assert not is_url("ab:/dog.jpg")  # a local path that looks like one and exists
    with pytest.raises(SourceError, match="URLs are not fetched"):
        refuse_url(Path(URL))
    refuse_url("ab:/dog.jpg")  # no error
