"""The bundle manifest as types: every section has a type and bounds, read and checked here.

Why pydantic: the manifest is JSON that users move between machines and may edit or damage;
pydantic checks types and bounds in one declaration per field, names the failing field in its
message (`backbone.image_size: less than or equal to 1024`), and round-trips JSON. Sections
keep extra keys they do not declare (figures, reports), so a record can carry detail without a
schema change, but every key that code reads is declared, typed and bounded.

Schema 3 adds `commit` (the id of the transaction that wrote the manifest), `rows` (the
fingerprint of the metadata's rows) and `fitted_on` on every fitted artifact. A schema-2
manifest is migrated on reading (its artifacts count as fitted on the rows they were
written with); older ones are refused with a message.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embed.errors import BundleError, IncompatibleBundleError

SCHEMA_VERSION = 3
MIGRATABLE = (2,)
MAX_IMAGE_SIZE = 1024  # the largest input any registered backbone takes is 600 px
MAX_DIM = 16384
REBUILD_HINT = "run `embed-dogs verify --bundle {root}` for details, or rebuild the bundle"


class Section(BaseModel):
    """A manifest section: declared keys are typed and bounded, others are kept as they are."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def get(self, key: str, default: Any = None) -> Any:
        """A declared or extra key's value (for reports that print every figure)."""
        return getattr(self, key, default)


class RowsFingerprint(Section):
    """Which rows an artifact was fitted on: their count and a digest of (row id, content
    sha256, label, split), so staleness is a comparison, not a guess."""

    rows: int = Field(ge=0)
    digest: str = Field(min_length=8)


class RuntimeRecord(Section):
    name: str = Field(min_length=1)
    # `--runtime auto`'s choice between float32 and int8 in one line (embed.int8_choice);
    # absent in bundles built before it, or with another runtime
    decision: str | None = Field(default=None, max_length=500)


class BackboneSection(Section):
    name: str = Field(min_length=1)
    keras_name: str = ""
    builder_kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int = Field(ge=8, le=MAX_IMAGE_SIZE)
    preprocessing: str = Field(min_length=1)
    dim: int = Field(ge=1, le=MAX_DIM)
    weights: str = "random"
    weights_sha256: str = ""
    decoder: int | None = Field(default=None, ge=1)
    runtime: RuntimeRecord = Field(default_factory=lambda: RuntimeRecord(name="keras"))
    weights_file: str | None = None
    serving_model: str | None = None
    lineage: dict[str, Any] | None = None


class SourceSection(Section):
    kind: str = ""
    location: str = ""
    splits: dict[str, int] = Field(default_factory=dict)
    breeds: int = Field(default=0, ge=0)
    images: int = Field(default=0, ge=0)
    rejected: int = Field(default=0, ge=0)
    test_fraction: float | None = Field(default=None, ge=0.0, lt=1.0)


class CountsSection(Section):
    images: int = Field(default=0, ge=0)
    embedded: int = Field(default=0, ge=0)
    skipped: int = Field(default=0, ge=0)


class ShardEntry(Section):
    file: str = Field(min_length=1)
    rows_file: str = Field(min_length=1)
    rows: int = Field(ge=0)
    items: int = Field(default=0, ge=0)
    first_row_id: int | None = Field(default=None, ge=0)
    last_row_id: int | None = Field(default=None, ge=0)


class EmbeddingsSection(Section):
    shards: list[ShardEntry] = Field(default_factory=list)
    rows_per_shard: int | None = Field(default=None, ge=1)
    dtype: Literal["float32"] = "float32"


class IndexSection(Section):
    kind: str = Field(min_length=1)
    factory: str = Field(min_length=1)
    metric: Literal["inner_product"] = "inner_product"
    rows: int = Field(ge=0)
    dim: int = Field(ge=1, le=MAX_DIM)
    requested: str | None = None
    memory_budget: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class HeadRecord(Section):
    kind: Literal["logreg", "finetune"]
    file: str = Field(min_length=1)
    serving_file: str | None = None
    dense_file: str | None = None
    input: Literal["vectors", "images"] = "vectors"
    breeds: int = Field(default=0, ge=0)
    classes: list[str] | None = None
    train_images: int = Field(default=0, ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)
    report: dict[str, str] = Field(default_factory=dict)
    fitted_on: RowsFingerprint | None = None


class GateHeadRecord(Section):
    top_probability_floor: float | None = Field(default=None, ge=0.0, le=1.0)


class GateSection(Section):
    """Version 1: the kNN-threshold gate (read, never served: it is refitted); version 2:
    the evidence gate (classify.gate_evidence), its arrays in `file`, its thresholds here."""

    version: int = Field(ge=1)
    signal: Literal["knn_similarity", "evidence"] = "knn_similarity"
    k: int = Field(ge=1, le=1000)
    dog_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    not_dog_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    thresholds: dict[str, float] = Field(default_factory=dict)
    file: str | None = None
    heads: dict[str, GateHeadRecord] = Field(default_factory=dict)
    figures: dict[str, Any] = Field(default_factory=dict)
    fitted_on: RowsFingerprint | None = None


class SpaceSection(Section):
    """The learned look-alike space (index.space): its arrays in `file`, what it is, and its
    raw-vs-learned figures on the test split."""

    kind: Literal["lda", "logit", "blend", "blend_logit"]
    file: str = Field(min_length=1)
    blend_weight: float | None = Field(default=None, gt=0.0, le=1.0)
    dim_in: int = Field(ge=1, le=MAX_DIM)
    dim_out: int = Field(ge=1, le=2 * MAX_DIM)
    learned_dims: int = Field(ge=1, le=MAX_DIM)
    figures: dict[str, Any] = Field(default_factory=dict)
    fitted_on: RowsFingerprint | None = None


class ComparisonSection(Section):
    best: str | None = None
    heads: dict[str, dict[str, Any]] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    fitted_on: RowsFingerprint | None = None


class AuditThresholdRecord(Section):
    """The near-duplicate cut and how it was set (index.duplicates.Threshold.as_dict)."""

    value: float = Field(ge=-1.0, le=1.0)
    copies: int = Field(default=0, ge=0)
    neighbours: int = Field(default=0, ge=0)
    copy_recall: float = Field(default=0.0, ge=0.0, le=1.0)
    neighbour_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    how: str = ""
    calibrated_on: RowsFingerprint | None = None  # the rows whose photos were copied


class AuditSection(Section):
    """The stored dataset audit (`embed-dogs audit`): its findings file, what it looked for,
    counts per kind, the near-duplicate threshold, and the rows it describes."""

    file: str = Field(min_length=1)
    kinds: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    threshold: AuditThresholdRecord | None = None
    refresh: Literal["full", "vectors"] = "full"  # vectors: the stored threshold was reused
    quality_checked_through: int | None = Field(default=None, ge=-1)  # largest row id seen
    test_with_train_copy: int | None = Field(default=None, ge=0)
    seconds: dict[str, float] = Field(default_factory=dict)
    fitted_on: RowsFingerprint | None = None


class FileRecord(Section):
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """The whole manifest. Unknown top-level sections are refused: a section this version
    does not know would be silently ignored by it, which is how a gate switched itself off."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    schema_version: Literal[3] = SCHEMA_VERSION
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(
        timespec="seconds"))
    commit: str | None = None
    backbone: BackboneSection
    source: SourceSection = Field(default_factory=SourceSection)
    counts: CountsSection = Field(default_factory=CountsSection)
    embeddings: EmbeddingsSection = Field(default_factory=EmbeddingsSection)
    index: IndexSection | None = None
    heads: dict[str, HeadRecord] = Field(default_factory=dict)
    gate: GateSection | None = None
    space: SpaceSection | None = None
    comparison: ComparisonSection | None = None
    audit: AuditSection | None = None
    files: dict[str, FileRecord] = Field(default_factory=dict)
    rows: RowsFingerprint | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    history: list[dict[str, Any]] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=False)

    def stale(self) -> list[str]:
        """Fitted artifacts whose rows are not the bundle's rows now ("head finetune", "gate",
        ...): they answer for data that is no longer the bundle's."""
        if self.rows is None:
            return []
        out = [f"head {name}" for name, head in self.heads.items()
               if head.fitted_on is not None and head.fitted_on != self.rows]
        for name, section in (("gate", self.gate), ("space", self.space),
                              ("comparison", self.comparison), ("audit", self.audit)):
            if section is not None and section.fitted_on not in (None, self.rows):
                out.append(name)
        return out

    def head_is_stale(self, name: str) -> bool:
        head = self.heads.get(name)
        return (head is not None and self.rows is not None and head.fitted_on is not None
                and head.fitted_on != self.rows)


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 -> 3: the sections are the same; the new fields start empty."""
    data = dict(data)
    data["schema_version"] = SCHEMA_VERSION
    for key in ("gate", "comparison", "index", "audit"):
        if data.get(key) == {}:
            data[key] = None
    return data


def _where(error: dict[str, Any]) -> str:
    return ".".join(str(part) for part in error.get("loc", ())) or "(top level)"


def parse_manifest(data: Any, root: str | Path) -> Manifest:
    """The manifest read from JSON data, typed and bounded, or one BundleError naming the
    first wrong field. Schema 2 is migrated; other versions are refused."""
    if not isinstance(data, dict):
        raise BundleError(f"the manifest of {root} is damaged: it is a JSON"
                          f" {type(data).__name__}, not an object;"
                          f" {REBUILD_HINT.format(root=root)}")
    version = data.get("schema_version")
    if version in MIGRATABLE:
        data = _migrate(data)
    elif version != SCHEMA_VERSION:
        raise IncompatibleBundleError(
            f"bundle {root} has schema version {version}, this embed-dogs reads versions"
            f" {', '.join(map(str, (*MIGRATABLE, SCHEMA_VERSION)))}; rebuild it with"
            " `embed-dogs build-index`"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        value = repr(first.get("input"))
        value = value if len(value) <= 60 else value[:57] + "..."
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        what = (f"{_where(first)} is missing" if first.get("type") == "missing" else
                f"{_where(first)} is {value}: {first.get('msg', 'invalid').lower()}")
        raise BundleError(f"the manifest of {root} is damaged: {what}{more};"
                          f" {REBUILD_HINT.format(root=root)}") from None


def new_manifest(backbone: dict[str, Any], source: dict[str, Any]) -> Manifest:
    """A fresh manifest for a build: backbone and source known, the versions of what
    produced it, everything else empty."""
    return Manifest(backbone=BackboneSection.model_validate(backbone),
                    source=SourceSection.model_validate(source), versions=library_versions())


def library_versions() -> dict[str, str]:
    """Versions of what produced the artifacts, for the manifest."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("embed-dogs", "tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets",
                 "faiss-cpu", "scikit-learn", "skops", "numpy", "pillow", "ai-edge-litert"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


BACKBONE_IDENTITY = ("name", "image_size", "preprocessing", "dim", "weights_sha256", "decoder")


def check_same_backbone(bundle_backbone: Any, query_backbone: Any) -> None:
    """Refuse query vectors from another backbone, naming both sides."""
    diffs = [
        k for k in BACKBONE_IDENTITY if bundle_backbone.get(k) != query_backbone.get(k)
    ]
    if diffs:
        def show(b: Any) -> str:
            sha = str(b.get("weights_sha256", ""))[:12]
            return (f"{b.get('name')} @ {b.get('image_size')}px, weights {b.get('weights')}"
                    f" ({sha}), decoder v{b.get('decoder')}")

        raise IncompatibleBundleError(
            f"the bundle was built with {show(bundle_backbone)} but the query embedder is"
            f" {show(query_backbone)} (differs in: {', '.join(diffs)}); rebuild the bundle or"
            " embed with the bundle's backbone"
        )
