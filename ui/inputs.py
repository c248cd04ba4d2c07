"""The photos a command was given: files, folders, list files and stdin, as one listing.

`resolve_inputs` is kept here unchanged, in one place, so that it can become an import of
its future home in `embed` without touching its callers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embed.errors import SourceError
from embed.sources import IMAGE_EXTENSIONS, ImageListing, Rejected, list_images


def resolve_inputs(inputs: list[str], stdin: Any = None) -> ImageListing:
    """Photos to classify from files, folders (recursive), text files listing one path a line,
    and `-` (such a list on `stdin`). Entries that are no usable image become rejected rows."""
    paths: list[Path] = []
    rejected: list[Rejected] = []

    def add(entry: str) -> None:
        path = Path(entry).expanduser()
        if path.is_dir():
            listing = list_images(path)
            paths.extend(listing.paths)
            rejected.extend(listing.rejected)
        elif path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            paths.append(path)
        elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            for line in path.read_text().splitlines():
                if line.strip():
                    add(line.strip())
        else:
            rejected.append(Rejected(str(path), "no such file or folder" if not path.exists()
                                     else f"unsupported format {path.suffix or '(none)'}"))

    for entry in inputs:
        if entry == "-":
            for line in (stdin.read() if stdin is not None else "").splitlines():
                if line.strip():
                    add(line.strip())
        else:
            if len(inputs) == 1 and not Path(entry).expanduser().exists():
                raise SourceError(f"{entry} does not exist")
            add(entry)
    if not paths:
        raise SourceError(f"no images found in {', '.join(inputs)}")
    return ImageListing(paths, rejected)
