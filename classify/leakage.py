"""Saying when test accuracy is optimistic because the backbone has seen the test photos.

Stanford Dogs' images (and Imagewoof's) come from ImageNet. A backbone pretrained on ImageNet
has trained on many of them, whatever the split says, so the test split is not unseen.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from embed.bundle import Bundle
from embed.manifest import Manifest

# ImageNet's file names: the WordNet id of the synset, an underscore, a number
IMAGENET_NAME = re.compile(r"^n\d{8}_\d+\.jpe?g$", re.IGNORECASE)
IMAGENET_SHARE = 0.5  # a folder source is called ImageNet-derived above this share of names


def imagenet_source(manifest: Manifest, paths: list[str] | None = None) -> str | None:
    """Why the bundle's photos come from ImageNet, or None when nothing says so."""
    source = manifest.source
    if source.kind == "tfds" and "stanford_dogs" in source.location:
        return "Stanford Dogs' images come from ImageNet"
    if paths:
        named = sum(bool(IMAGENET_NAME.match(PurePath(p).name)) for p in paths)
        if named / len(paths) > IMAGENET_SHARE:
            return (f"{named} of {len(paths)} photos carry ImageNet file names (nXXXXXXXX_N.jpg),"
                    " so the source is ImageNet-derived, as Stanford Dogs and Imagewoof are")
    return None


def imagenet_backbone(manifest: Manifest) -> str | None:
    """'pretrained on ImageNet', 'from a weights file', or None (random weights)."""
    backbone = manifest.backbone
    weights = backbone.weights
    base = ((backbone.lineage or {}).get("base_backbone") or {}).get("weights")
    if weights == "imagenet" or base == "imagenet":
        return "pretrained on ImageNet"
    if weights and weights not in ("random", "none"):
        return "from a weights file whose training photos the bundle does not record"
    return None


def leakage_warning(bundle: Bundle) -> str | None:
    """One sentence for reports and `evaluate`, or None when there is no reason to warn."""
    manifest = bundle.manifest
    backbone = imagenet_backbone(manifest)
    if backbone is None:
        return None
    paths = None
    if manifest.source.kind == "folder":
        paths = bundle.metadata()["path"].astype(str).tolist()
    source = imagenet_source(manifest, paths)
    if source is None:
        return None
    if backbone == "pretrained on ImageNet":
        return (f"Leakage: {source}, and the backbone was {backbone}, so it has probably seen"
                " many of the test photos in training: test accuracy is optimistic. Measure"
                " on photos from outside ImageNet for an honest figure.")
    return (f"Possible leakage: {source}; the backbone's weights come from a file that does"
            " not record what it was trained on: if on ImageNet or on dog photos taken from"
            " it, test accuracy is optimistic. Measure on photos from outside ImageNet for an"
            " honest figure.")
