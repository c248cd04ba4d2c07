"""`embed-dogs verify`: every checksum, and that shards, metadata, index and heads agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from classify.heads import head_problems
from embed.bundle import Bundle
from embed.errors import BundleError
from embed.integrity import serving_model_problems
from index.lookalikes import LookalikeIndex


@dataclass
class VerifyReport:
    problems: list[str]
    files: int
    bytes: int
    rows: int


def verify_bundle(bundle_dir: str | Path) -> VerifyReport:
    """Every checksum; every shard and table read; the index, every head and the serving
    model loaded and asked once. One line per problem, never an exception for a damaged
    bundle (a missing or unreadable manifest is one BundleError)."""
    from embed.staging import recover_interrupted

    if not Bundle(bundle_dir).manifest_path.is_file():
        recover_interrupted(bundle_dir)  # a commit a kill left half done
        Bundle.open(bundle_dir)  # raises the usual "does not exist / not a bundle" message
    bundle = Bundle(bundle_dir)
    manifest = bundle.manifest  # a damaged manifest is one BundleError naming the field
    problems = bundle.check(full=True)
    if not problems:
        try:
            LookalikeIndex(bundle)
        except BundleError as exc:
            problems.append(str(exc))
        problems += serving_model_problems(bundle)
        problems += head_problems(bundle)
    return VerifyReport(problems, len(manifest.files),
                        sum(r.bytes for r in manifest.files.values()), manifest.counts.embedded)
