"""Breed names cleaned one way for every source: `n02085620-Chihuahua` -> `chihuahua`; and
said one way to people: `english_foxhound` -> `english foxhound`."""

from __future__ import annotations

import re

_WNID_PREFIX = re.compile(r"^n\d{8}[-_]")


def clean_breed_name(raw: str) -> str:
    """Drop a WordNet id prefix, lower-case, and join words with underscores."""
    name = _WNID_PREFIX.sub("", raw.strip())
    name = re.sub(r"[\s\-]+", "_", name.lower())
    return re.sub(r"_+", "_", name).strip("_")


def spoken_breed(label: object) -> str:
    """A breed label as people read it (`old_english_sheepdog` -> `old english sheepdog`), in
    the app and in the gate's sentences; CSV and JSON fields keep the label itself."""
    return str(label).replace("_", " ")
