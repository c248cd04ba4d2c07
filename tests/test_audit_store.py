"""The stored audit end to end on the tiny bundle: `embed-dogs audit` stores a checksummed
findings file, `add`/`remove` refresh it, a change that did not refresh it shows it stale,
`remove --from-file` takes its CSV, the Audit page reads it; and a build keeps near-duplicate
groups on one side of the split. Expectations come from what each test planted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from embed.bundle import Bundle
from index.duplicates import one_split_per_group
from tests.conftest import CLASSES, unboxed, write_dataset
from ui.audit_report import COLUMNS
from ui.audit_store import stored_audit
from ui.cli import app
from ui.facts import audit_facts

runner = CliRunner()
APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def copy_of(bundle: Path, tmp_path: Path, name: str = "bundle") -> Path:
    target = tmp_path / name
    shutil.copytree(bundle, target)
    return target


@pytest.fixture(scope="module")
def mislabelled(audited_bundle: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, list[str]]:
    """The audited bundle after `add` of 3 beagle-coloured photos filed under samoyed (the
    audit refreshed by add); returns (bundle, the planted photos' stored paths)."""
    root = tmp_path_factory.mktemp("mislabelled")
    bundle = copy_of(audited_bundle, root)
    extra = write_dataset(root / "extra", per_class=3, seed=7, name="planted_{i}",
                          classes={"samoyed": CLASSES["Beagle"]})
    result = invoke("add", "--bundle", bundle, "--source", extra, "--runtime", "keras")
    assert result.exit_code == 0, result.output
    planted = sorted(str(p.resolve()) for p in (extra / "samoyed").glob("*.jpg"))
    return bundle, planted


# ---- embed-dogs audit ------------------------------------------------------------------------
def test_audit_stores_a_checksummed_findings_file_listed_in_the_manifest(audited_bundle: Path):
    bundle = Bundle.open(audited_bundle)
    section = bundle.manifest.audit
    assert section is not None and section.refresh == "full"
    stored = audited_bundle / section.file
    record = bundle.manifest.files[section.file]
    assert record.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert section.fitted_on == bundle.manifest.rows
    findings = pd.read_csv(stored, keep_default_na=False)
    assert tuple(findings.columns) == COLUMNS
    assert section.counts["exact_duplicate"] == 0  # write_dataset draws every photo afresh
    assert sum(section.counts.values()) == len(findings)
    written = pd.read_csv(audited_bundle.parent / "audit.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(written, findings)
    said = unboxed((audited_bundle.parent / "audit-output.txt").read_text())
    assert f"{len(findings)} findings:" in said and "near-duplicate threshold" in said
    assert section.threshold.copies > 0 and section.threshold.calibrated_on == (
        bundle.manifest.rows)
    assert stored_audit(bundle).state == "current"
    assert invoke("verify", "--bundle", audited_bundle).exit_code == 0


def test_audit_refuses_an_existing_out_file_and_unknown_kinds(audited_bundle: Path,
                                                              tmp_path: Path):
    existing = tmp_path / "audit.csv"
    existing.write_text("keep me")
    result = invoke("audit", "--bundle", audited_bundle, "--out", existing)
    assert result.exit_code == 2 and "--overwrite" in unboxed(result.output)
    assert existing.read_text() == "keep me"
    result = invoke("audit", "--bundle", audited_bundle, "--kinds", "exact_duplicate,cats")
    assert result.exit_code == 2 and "unknown kind cats" in unboxed(result.output)


def test_audit_of_some_kinds_as_json_lines_on_stdout(audited_bundle: Path, tmp_path: Path):
    bundle = copy_of(audited_bundle, tmp_path)
    result = runner.invoke(app, ["-q", "audit", "--bundle", str(bundle), "--out", "-",
                                 "--json", "--kinds", "exact_duplicate,outlier"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert all(set(line) == set(COLUMNS) for line in lines)
    assert {line["issue"] for line in lines} <= {"exact_duplicate", "outlier"}
    section = Bundle.open(bundle).manifest.audit
    assert section.kinds == ["exact_duplicate", "outlier"] and section.threshold is None


def test_a_tampered_findings_file_is_not_shown(audited_bundle: Path, tmp_path: Path):
    bundle = copy_of(audited_bundle, tmp_path)
    stored = bundle / Bundle.open(bundle).manifest.audit.file
    stored.write_text(stored.read_text().replace("issue", "issuE", 1))  # same size
    audit = stored_audit(Bundle.open(bundle))
    assert audit.state == "damaged" and audit.findings is None


# ---- refresh and staleness ---------------------------------------------------------------------
def test_add_refreshes_the_audit_with_the_stored_threshold_and_finds_planted_labels(
        audited_bundle: Path, mislabelled: tuple[Path, list[str]]):
    bundle_dir, planted = mislabelled
    before = Bundle.open(audited_bundle).manifest.audit
    bundle = Bundle.open(bundle_dir)
    section = bundle.manifest.audit
    assert section.refresh == "vectors" and section.fitted_on == bundle.manifest.rows
    assert section.threshold.value == before.threshold.value  # reused, not recalibrated
    assert section.quality_checked_through == int(bundle.metadata()["row_id"].max())
    audit = stored_audit(bundle)
    assert audit.state == "current"
    labels = audit.findings[audit.findings["issue"] == "label"]
    found = set(labels["path"])
    assert sum(p in found for p in planted) >= 2  # of 3 planted
    assert set(labels.loc[labels["path"].isin(planted), "suggested_label"]) == {"beagle"}
    assert invoke("verify", "--bundle", bundle_dir).exit_code == 0


def test_train_refreshes_the_audit_for_the_refitted_gate(audited_bundle: Path, tmp_path: Path):
    bundle_dir = copy_of(audited_bundle, tmp_path)
    result = invoke("train", "--bundle", bundle_dir, "--head", "logreg")
    assert result.exit_code == 0, result.output
    bundle = Bundle.open(bundle_dir)
    assert bundle.manifest.history[-1]["op"] == "train"
    assert bundle.manifest.audit.refresh == "vectors"
    assert stored_audit(bundle).state == "current"


def test_rows_changed_without_a_refresh_show_the_audit_stale(audited_bundle: Path,
                                                             tmp_path: Path):
    from embed.build import remove_rows
    from embed.staging import change_bundle

    bundle_dir = copy_of(audited_bundle, tmp_path)
    with change_bundle(bundle_dir, "test") as staged:  # a writer that forgot the audit
        drop = np.zeros(len(staged.metadata()), bool)
        drop[0] = True
        remove_rows(staged, drop)
    bundle = Bundle.open(bundle_dir)
    assert "audit" in bundle.manifest.stale()
    audit = stored_audit(bundle)
    assert audit.state == "stale" and "stale" in audit.message
    assert dict(audit_facts(bundle.manifest))["audit"].startswith("STALE")


# ---- remove --from-file ------------------------------------------------------------------------
def test_remove_from_file_takes_the_audit_csv(mislabelled: tuple[Path, list[str]],
                                             tmp_path: Path):
    bundle_dir = copy_of(mislabelled[0], tmp_path)
    planted = mislabelled[1]
    findings = stored_audit(Bundle.open(bundle_dir)).findings
    csv = tmp_path / "audit.csv"
    extra = pd.DataFrame([{c: "" for c in COLUMNS} | {"issue": "label",
                                                      "path": "no/such/photo.jpg"}])
    pd.concat([findings, extra]).to_csv(csv, index=False)
    flagged = [p for p in planted if p in set(findings.loc[findings["issue"] == "label",
                                                           "path"])]
    rows_before = len(Bundle.open(bundle_dir).metadata())

    dry = invoke("remove", "--bundle", bundle_dir, "--from-file", csv, "--issue", "label",
                 "--dry-run")
    assert dry.exit_code == 0, dry.output
    said = unboxed(dry.output)
    assert all(p in said for p in flagged) and "no/such/photo.jpg" in said
    assert "(dry run: nothing changed)" in said  # as remove's glob dry run says it
    assert len(Bundle.open(bundle_dir).metadata()) == rows_before  # nothing changed

    done = invoke("remove", "--bundle", bundle_dir, "--from-file", csv, "--issue", "label")
    assert done.exit_code == 0, done.output
    labels = (findings["issue"] == "label").sum()
    assert f"removed {labels} images" in unboxed(done.output)
    assert "1 listed paths are not in it" in unboxed(done.output)
    assert "refitted on the remaining rows" in unboxed(done.output)
    assert set(flagged) <= set(done.output.split())  # lists what went, one a line
    bundle = Bundle.open(bundle_dir)
    left = set(bundle.metadata()["path"])
    assert len(left) == rows_before - labels and not any(p in left for p in flagged)
    assert bundle.manifest.audit.fitted_on == bundle.manifest.rows  # refreshed by remove
    assert not set(flagged) & set(stored_audit(bundle).findings["path"])
    bad = invoke("remove", "--bundle", bundle_dir, "--from-file", csv, "--issue", "cats")
    assert bad.exit_code == 2 and "unknown issue kind cats" in unboxed(bad.output)


# ---- near-duplicate groups in one split --------------------------------------------------------
def test_near_duplicate_groups_go_whole_to_one_side():
    #        0        1       2        3       4       5        6
    splits = ["train", "test", "train", "test", "test", "train", "none"]
    i = np.array([0, 1, 3, 5])  # groups {0,1,2}, {3,4}, {5,6}
    j = np.array([1, 2, 4, 6])
    moves, groups, crossed = one_split_per_group(i, j, np.array(splits, object))
    assert (groups, crossed) == (3, 1)
    assert moves == {1: "train"}  # 2 train vs 1 test; {3,4} is all test; "none" stays


def test_moving_rows_between_splits_changes_every_table(tiny_bundle: Path, tmp_path: Path):
    from embed.regroup import move_rows_to_split
    from embed.staging import change_bundle

    bundle_dir = copy_of(tiny_bundle, tmp_path)
    before = Bundle.open(bundle_dir)
    table = before.metadata()
    row = table[table["split"] == "test"].iloc[0]
    with change_bundle(bundle_dir, "test") as staged:
        assert move_rows_to_split(staged, {int(row["row_id"]): "train"}) == 1
    after = Bundle.open(bundle_dir)
    moved = after.metadata().set_index("row_id").loc[int(row["row_id"]), "split"]
    assert moved == "train"
    old, new = before.manifest.source.splits, after.manifest.source.splits
    assert new["test"] == old["test"] - 1 and new["train"] == old["train"] + 1
    problems = [line for line in invoke("verify", "--bundle", bundle_dir).output.splitlines()
                if line.startswith("problem:")]
    # files and tables agree; the head fitted on the old split is rightly stale (a build
    # moves rows before any head is fitted)
    assert len(problems) == 1 and "head logreg is stale" in problems[0]


# ---- the Audit page ----------------------------------------------------------------------------
def open_page(bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from streamlit.testing.v1 import AppTest

    from ui import core

    monkeypatch.setenv(core.BUNDLE_ENV, str(bundle))
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    at.switch_page("page_audit.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_audit_page_without_an_audit_says_how_to_make_one(tiny_bundle: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path):
    at = open_page(tiny_bundle, monkeypatch, tmp_path)
    assert any("No audit yet: run `embed-dogs audit --bundle" in i.value for i in at.info)


def test_audit_page_shows_label_issues_beside_typical_photos_and_downloads_them(
        mislabelled: tuple[Path, list[str]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path):
    bundle_dir, planted = mislabelled
    at = open_page(bundle_dir, monkeypatch, tmp_path)
    assert at.title[0].value == "Audit" and not at.warning
    kinds = at.multiselect(key="audit_kinds")
    assert "label" in kinds.value
    kinds.set_value(["label"]).run()
    captions = [c.value for c in at.caption]
    assert any(c == "typical beagle" for c in captions)
    assert any(c == "typical samoyed" for c in captions)
    assert any(c in planted for c in captions)
    box = next(c for c in at.checkbox if c.label == "select for removal")
    box.check().run()
    assert not at.exception
    downloads = [b for b in at.get("download_button")]
    assert downloads and "1 selected" in downloads[0].proto.label


def test_audit_page_says_stale(audited_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                               tmp_path: Path):
    from embed.build import remove_rows
    from embed.staging import change_bundle
    from ui.build_flow import index_bundle

    bundle_dir = copy_of(audited_bundle, tmp_path)
    with change_bundle(bundle_dir, "test") as staged:
        drop = np.zeros(len(staged.metadata()), bool)
        drop[-1] = True
        remove_rows(staged, drop)
        index_bundle(staged)  # the index follows; the audit does not
    at = open_page(bundle_dir, monkeypatch, tmp_path)
    assert any("Stale" in w.value for w in at.warning)


def test_the_build_and_the_audit_draw_the_same_near_copy_line(audited_bundle: Path):
    """A build keeps near-copies in one split with the threshold `audit` then calibrates on
    the same rows, so an audit right after a build finds no near-copy across the split."""
    bundle = Bundle.open(audited_bundle)
    built = bundle.manifest.source.get("near_duplicate_threshold")
    audited = bundle.manifest.audit.threshold
    assert built["value"] == pytest.approx(audited.value, abs=1e-6)
    assert built["copies"] == audited.copies  # the same photos copied the same ways
    assert bundle.manifest.audit.counts["split_leak"] == 0


def test_an_audit_of_a_bundle_moved_without_its_photos_reuses_the_builds_threshold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """On another machine the photos are not there: the near-copy calibration, which edits
    and embeds them, cannot run, so the threshold the build calibrated on the same photos with
    the same embedder serves, and the audit says so instead of failing."""
    from tests.conftest import TINY

    photos = write_dataset(tmp_path / "photos", per_class=4, seed=3)
    bundle = tmp_path / "bundle"
    built = invoke("build-index", "--source", photos, "--out", bundle, "--backbone", TINY,
                   "--weights", "none", "--runtime", "keras")
    assert built.exit_code == 0, built.output
    build_threshold = json.loads((bundle / "manifest.json").read_text())["source"][
        "near_duplicate_threshold"]["value"]
    shutil.rmtree(photos)
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(tmp_path / "fresh-cache"))  # no copy vectors
    result = invoke("audit", "--bundle", bundle)
    assert result.exit_code == 0, result.output
    said = unboxed(result.output)
    assert "can be read here" in said and "reusing the threshold" in said
    assert "the low-quality check skips them" in said
    section = Bundle.open(bundle).manifest.audit
    assert section.threshold.value == pytest.approx(build_threshold, abs=1e-6)
    # the build's own regrouping, which has nothing stored to fall back on, goes on without it
    from embed.embedder import serving_embedder
    from embed.staging import change_bundle
    from ui.build_grouping import keep_near_copies_together

    with change_bundle(bundle, "test") as staged:
        assert keep_near_copies_together(staged, serving_embedder(staged)) is None
