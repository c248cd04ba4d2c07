"""The photos a query command is given: files, folders, list files and `-` (a list on stdin).

A list file (`.txt`, `.lst`, `.list`) names one path a line, and may name further list files.
Expansion is bounded: a list file that is already being expanded (it lists itself, directly
or through others) and lists nested deeper than `MAX_LIST_DEPTH` become rejected rows instead
of a `RecursionError`. Entries that are no usable image become rejected rows with a reason a
person can act on; a URL is never fetched, and says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TextIO

from embed.errors import SourceError
from embed.sources import IMAGE_EXTENSIONS, ImageListing, Rejected, list_images

LIST_SUFFIXES = (".txt", ".lst", ".list")
# Deep enough for any hand-made hierarchy of lists, far below Python's recursion limit.
MAX_LIST_DEPTH = 16
URL_REASON = "a URL; URLs are not fetched, download the photo first and pass its path"
# A scheme of two or more letters, then ":/" ("https://" is "https:/" once it went through
# pathlib); one letter would be a Windows drive.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


def is_url(entry: str | Path) -> bool:
    """Whether an input names a URL rather than a local path (a local path that happens to
    look like one, and exists, is a path)."""
    text = str(entry)
    return bool(_URL.match(text)) and not Path(text).expanduser().exists()


def refuse_url(entry: str | Path) -> None:
    """For commands that take one photo (`search`): a URL is refused with what to do, rather
    than reported as a file that "does not exist"."""
    if is_url(entry):
        raise SourceError(f"{entry} is {URL_REASON}")


def resolve_inputs(inputs: list[str], stdin: TextIO | None = None) -> ImageListing:
    """Photos from files, folders (recursive), list files naming one path a line, and `-`
    (such a list on `stdin`), in the order given. Entries that are no usable image become
    rejected rows; a single input that is a URL or does not exist, or inputs without one
    usable image, raise SourceError."""
    paths: list[Path] = []
    rejected: list[Rejected] = []

    def add(entry: str, expanding: tuple[str, ...]) -> None:
        """One entry; `expanding`: the real paths of the list files it was read from."""
        if is_url(entry):
            rejected.append(Rejected(entry, URL_REASON))
            return
        path = Path(entry).expanduser()
        if path.is_dir():
            listing = list_images(path)
            real = Path(os.path.realpath(path))  # what list_images names its entries under
            paths.extend(_as_typed(p, real, path) for p in listing.paths)
            rejected.extend(Rejected(str(_as_typed(Path(r.path), real, path)), r.reason)
                            for r in listing.rejected)
        elif path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            paths.append(path)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            add_list(path, expanding)
        else:
            rejected.append(Rejected(str(path), "no such file or folder" if not path.exists()
                                     else f"unsupported format {path.suffix or '(none)'}"))

    def add_list(path: Path, expanding: tuple[str, ...]) -> None:
        real = os.path.realpath(path)
        if real in expanding:
            rejected.append(Rejected(str(path), "list file includes itself"
                                     + _through(expanding[expanding.index(real):] + (real,))))
            return
        if len(expanding) >= MAX_LIST_DEPTH:
            rejected.append(Rejected(str(path), f"list files nested more than"
                                     f" {MAX_LIST_DEPTH} deep; not read"))
            return
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not a text file"
            rejected.append(Rejected(str(path), f"unreadable list file ({why})"))
            return
        for line in _lines(text):
            add(line, expanding + (real,))

    for entry in inputs:
        if entry == "-":
            for line in _lines(stdin.read() if stdin is not None else ""):
                add(line, ())
            continue
        if len(inputs) == 1:
            refuse_url(entry)
            if not Path(entry).expanduser().exists():
                raise SourceError(f"{entry} does not exist")
        add(entry, ())
    if not paths:
        example = (f"; {len(rejected)} entries not used, e.g. {rejected[0].path}:"
                   f" {rejected[0].reason}") if rejected else ""
        raise SourceError(f"no images found in {', '.join(inputs)}{example}")
    return ImageListing(paths, rejected)


def _as_typed(found: Path, real: Path, typed: Path) -> Path:
    """A photo `list_images` found under the resolved folder `real`, named under the folder
    as the user `typed` it, as a single file is: a results file then says `photos/a.jpg` for
    both `classify photos/` and `classify photos/a.jpg`, not an absolute path for one."""
    return typed / found.relative_to(real) if found.is_relative_to(real) else found


def _lines(text: str) -> list[str]:
    """The non-blank lines of a list, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def _through(chain: tuple[str, ...]) -> str:
    """" (through a.txt -> b.txt -> a.txt)" for a cycle over several files, "" for one."""
    if len(chain) <= 2:
        return ""
    return " (through " + " -> ".join(os.path.basename(p) for p in chain) + ")"
