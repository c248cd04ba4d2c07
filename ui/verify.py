"""`embed-dogs verify`: every checksum, and that shards, metadata, index and heads agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from classify.heads import load_predictor
from embed.bundle import Bundle
from embed.errors import BundleError
from index.lookalikes import LookalikeIndex


@dataclass
class VerifyReport:
    problems: list[str]
    files: int
    bytes: int
    rows: int


def verify_bundle(bundle_dir: str | Path) -> VerifyReport:
    """Every checksum, and that shards, metadata, index and heads agree (`embed-dogs verify`)."""
    bundle = Bundle(bundle_dir)
    if not bundle.manifest_path.is_file():
        Bundle.open(bundle_dir)  # raises the usual "does not exist / not a bundle" message
    problems = bundle.check(full=True)
    files = bundle.manifest.get("files") or {}
    rows = int((bundle.manifest.get("counts") or {}).get("embedded") or 0)
    if not problems:
        for step in (lambda: LookalikeIndex(bundle),
                     *[lambda h=h: load_predictor(bundle, h, accepts_images=True)
                       for h in (bundle.manifest.get("heads") or {})]):
            try:
                step()
            except BundleError as exc:
                problems.append(str(exc))
    return VerifyReport(problems, len(files), sum(int(r.get("bytes", 0))
                                                   for r in files.values()), rows)
