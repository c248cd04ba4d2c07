"""The CLI end to end, into temporary folders: exact counts, files and manifest contents."""

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from embed.bundle import SCHEMA_VERSION
from tests.conftest import REPO, TINY, unboxed, write_dataset
from ui.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def messy_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic classes plus one bad file of each kind and one unlabelled image."""
    root = write_dataset(tmp_path_factory.mktemp("messy") / "dogs", per_class=6, seed=3)
    (root / "beagle_extra").mkdir()
    (root / "samoyed" / "empty.jpg").write_bytes(b"")
    (root / "samoyed" / "notes.png").write_text("not an image at all")
    full = (root / "Beagle" / "000.jpg").read_bytes()
    (root / "Beagle" / "truncated.jpg").write_bytes(full[: len(full) // 3])
    Image.new("CMYK", (40, 32), (0, 200, 200, 0)).save(root / "Beagle" / "cmyk.jpg")
    Image.new("LA", (40, 32), (90, 128)).save(root / "n02085620-Chihuahua" / "grey_alpha.png")
    Image.new("RGB", (40, 32), (9, 9, 9)).save(root / "unlabelled.jpg")
    return root


@pytest.fixture(scope="module")
def built(messy_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "bundle"
    result = invoke("build-index", "--source", messy_dataset, "--out", out, "--backbone", TINY,
                    "--weights", "none", "--batch-size", "5", "--runtime", "keras")
    assert result.exit_code == 0, result.output
    assert "images embedded" in result.output and "recall@10" in result.output
    assert "test top-1 / top-5" in result.output
    assert "near-duplicate groups kept in one split" in " ".join(result.output.split())
    # the summary's total time, its images/s explained, and what to run next
    assert "total time" in result.output and "images/s once running" in result.output
    assert f"next: embed-dogs ui --bundle {out}" in " ".join(result.output.split())
    return out


def test_build_index_counts_files_and_manifest(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    # 18 good synthetic + cmyk + grey_alpha + unlabelled = 21 embedded; 3 bad files skipped
    assert manifest["counts"] == {"images": 24, "embedded": 21, "skipped": 3}
    assert manifest["source"]["kind"] == "folder"
    # hold-out of round(20%) per breed: beagle 8 -> 2, chihuahua 7 -> 1, samoyed 8 -> 2
    assert manifest["source"]["splits"] == {"train": 18, "test": 5, "none": 1}
    assert manifest["backbone"]["runtime"]["name"] == "keras"
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["rows"] == 21
    skipped = pd.read_csv(built / "skipped.csv")
    reasons = dict(zip(skipped["path"].map(lambda p: Path(p).name), skipped["reason"],
                       strict=True))
    assert reasons.keys() == {"empty.jpg", "notes.png", "truncated.jpg"}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["notes.png"].startswith("not an image")
    assert reasons["truncated.jpg"].startswith("corrupt or truncated")
    meta = pd.read_parquet(built / "metadata.parquet")
    assert len(meta) == 21 and meta["label"].isna().sum() == 1
    assert sorted(meta["label"].dropna().unique()) == ["beagle", "chihuahua", "samoyed"]
    assert manifest["heads"]["logreg"]["metrics"]["test_images"] == int(
        (meta["split"] == "test").sum()
    )


def test_classify_writes_one_row_per_image_with_errors(built: Path, messy_dataset: Path,
                                                       tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("001.jpg", "002.jpg"):
        shutil.copy(messy_dataset / "samoyed" / name, photos / f"s{name}")
    shutil.copy(messy_dataset / "Beagle" / "001.jpg", photos / "nested.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xffnope")
    out = tmp_path / "preds.csv"
    result = invoke("classify", photos, "--bundle", built, "--out", out, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "3 of 4 images classified, 1 could not be read" in result.output
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 4
    assert list(table.columns) == ["path", "error", "verdict", "sure", "breed_1", "prob_1",
                                   "breed_2",
                                   "prob_2", "lookalike_path", "lookalike_breed",
                                   "lookalike_score"]
    broken = table[table["path"].str.endswith("broken.jpg")].iloc[0]
    assert broken["error"] and broken["breed_1"] == "" and broken["verdict"] == ""
    assert set(table.loc[table["error"] == "", "verdict"]) <= {"dog", "unknown_breed",
                                                               "not_a_dog"}
    assert "verdicts: dog " in result.output
    good = table[table["error"] == ""]
    assert (good["prob_1"].astype(float) >= good["prob_2"].astype(float)).all()
    # copies of dataset images find themselves as nearest look-alike
    same = good[good["path"].str.endswith("s001.jpg")].iloc[0]
    assert Path(same["lookalike_path"]).name == "001.jpg"
    assert float(same["lookalike_score"]) == pytest.approx(1.0, abs=1e-4)


def test_search_json(built: Path, messy_dataset: Path) -> None:
    image = messy_dataset / "samoyed" / "004.jpg"
    result = invoke("search", image, "--bundle", built, "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert list(answer) == ["verdict", "knn_similarity", "why", "sure", "breeds", "lookalikes",
                            "space", "space_note"]
    assert answer["verdict"] == "dog"  # a photo of the bundle itself
    # the mean similarity of the 5 nearest rows: at most the best of the 4 shown
    assert 0 < answer["knn_similarity"] <= answer["lookalikes"][0]["score"] + 1e-6
    assert len(answer["breeds"]) == 3 and set(answer["breeds"][0]) == {"breed", "probability"}
    hits = answer["lookalikes"]
    assert len(hits) == 4 and hits[0]["path"] == str(image.resolve())
    assert hits[0]["label"] == "samoyed" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_info_and_evaluate(built: Path) -> None:
    info = invoke("info", "--bundle", built)
    assert info.exit_code == 0 and "tiny_test" in info.output and "recall@10" in info.output
    raw = json.loads(invoke("info", "--bundle", built, "--json").output)
    assert raw["schema_version"] == SCHEMA_VERSION
    evaluation = invoke("evaluate", "--bundle", built)
    assert evaluation.exit_code == 0
    for breed in ("beagle", "chihuahua", "samoyed"):
        assert breed in evaluation.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build-index", "--source", "/no/such/folder"], "does not exist"),
        (["build-index", "--backbone", "vgg99", "--source", "{empty}"], "no images found"),
        (["build-index", "--backbone", "vgg99", "--source", "{dataset}"],
         "unknown backbone 'vgg99'; known backbones:"),
        (["build-index", "--source", "{dataset}", "--weights", "/no/w.h5"],
         "weights file /no/w.h5 does not exist"),
        (["search", "{image}", "--bundle", "/no/bundle"], "does not exist; build one"),
        (["classify", "/no/photos", "--bundle", "{bundle}"], "/no/photos does not exist"),
        (["info", "--bundle", "{empty}"], "not a complete bundle"),
        (["build-index", "--index", "annoy", "--source", "{dataset}"],
         "'annoy' is not one of 'auto', 'flat', 'hnsw', 'ivf'"),
        (["build-index", "--runtime", "fast", "--source", "{dataset}"],
         "'fast' is not one of 'auto', 'litert', 'litert-int8', 'keras'"),
        (["build-index", "--memory-budget", "lots", "--source", "{dataset}"],
         "cannot read memory budget 'lots'"),
        (["build-index", "--memory-budget", "200", "--source", "{dataset}", "--backbone",
          TINY, "--weights", "none"], "raise --memory-budget"),
    ],
)
def test_expected_failures_are_one_clear_line(args, message, built: Path, dataset: Path,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out lands here, never in the checkout
    (tmp_path / "empty").mkdir()
    fill = {"{empty}": str(tmp_path / "empty"), "{dataset}": str(dataset),
            "{bundle}": str(built), "{image}": str(next(dataset.rglob("*.jpg")))}
    result = runner.invoke(app, [fill.get(a, a) for a in args])
    assert result.exit_code == 2
    assert message in unboxed(result.output)
    assert "Traceback" not in result.output


def test_existing_bundle_is_not_overwritten_by_accident(built: Path, dataset: Path) -> None:
    result = runner.invoke(app, ["build-index", "--source", str(dataset), "--out", str(built),
                                 "--backbone", TINY, "--weights", "none"])
    assert result.exit_code == 2 and "already exists; pass --overwrite" in result.output


def test_query_with_another_backbone_is_refused(built: Path, dataset: Path,
                                                tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["backbone"]["weights_sha256"] = "0" * 64  # as if built with other weights
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["search", str(next(dataset.rglob("*.jpg"))), "--bundle",
                                 str(copy)])
    assert result.exit_code == 2
    assert "the bundle was built with tiny_test" in result.output
    assert "differs in: weights_sha256" in result.output


def test_help_is_instant_and_imports_no_tensorflow() -> None:
    code = ("import sys; from ui.cli import app; from typer.main import get_command;"
            "get_command(app); print('tensorflow' in sys.modules, 'faiss' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
    help_run = subprocess.run([sys.executable, "-m", "ui", "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "build-index" in help_run.stdout


def test_search_table_names_the_breed_and_look_alikes(built: Path, messy_dataset: Path) -> None:
    image = messy_dataset / "samoyed" / "004.jpg"
    result = invoke("search", image, "--bundle", built, "-k", "2")
    assert result.exit_code == 0, result.output
    assert "breed (logreg head): " in result.output
    assert "look-alikes of" in result.output and result.output.count("samoyed") >= 2


def test_evaluate_a_head_without_test_images(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["heads"]["logreg"].update(
        report={}, metrics={"test_images": 0, "top1": None, "top5": None})
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["evaluate", "--bundle", str(copy)])
    assert result.exit_code == 0, result.output
    assert "head logreg: no test images to evaluate on" in result.output


def test_classify_takes_files_folders_lists_and_stdin(built: Path, messy_dataset: Path,
                                                      tmp_path: Path) -> None:
    one = messy_dataset / "samoyed" / "001.jpg"
    listed = tmp_path / "list.txt"
    listed.write_text(f"{messy_dataset / 'Beagle' / '002.jpg'}\n\n{tmp_path / 'gone.jpg'}\n")
    result = runner.invoke(app, ["classify", str(one), str(messy_dataset / "n02085620-Chihuahua"),
                                 str(listed), "-", "--bundle", str(built), "--out", "-"],
                           input=f"{messy_dataset / 'samoyed' / '002.jpg'}\n")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    names = [Path(p).name for p in table["path"]]
    # 1 file + 7 chihuahua photos (6 + grey_alpha.png) + 1 listed + 1 missing + 1 from stdin
    assert len(table) == 11 and names.count("gone.jpg") == 1
    assert dict(zip(names, table["error"], strict=True))["gone.jpg"] == "no such file or folder"
    assert (table["error"] == "").sum() == 10 and table.loc[table["error"] == "",
                                                             "breed_1"].ne("").all()

    lines = runner.invoke(app, ["classify", str(one), "--bundle", str(built), "--out", "-",
                                "--json"])
    assert lines.exit_code == 0, lines.output
    (row,) = [json.loads(line) for line in lines.stdout.splitlines() if line.strip()]
    assert row["path"] == str(one) and row["error"] == "" and row["breed_1"]


def test_version_and_help_fit_80_columns() -> None:
    from importlib import metadata

    assert runner.invoke(app, ["--version"]).output.strip() == (
        f"embed-dogs {metadata.version('embed-dogs')}")
    for command in (["--help"], ["build-index", "--help"], ["classify", "--help"]):
        text = runner.invoke(app, command, terminal_width=80).output
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    listing = runner.invoke(app, ["--help"], terminal_width=80).output.split("Commands:")[1]
    assert not [line for line in listing.splitlines() if line.rstrip().endswith("...")]


def test_backbones_table_keeps_its_cells_whole_at_80_columns() -> None:
    text = runner.invoke(app, ["backbones"], env={"COLUMNS": "80"}).output
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert "alpha=0.25" in text and "alpha=0.5" in text  # mobilenet_025 and _050 told apart


def test_help_has_no_type_placeholders_and_keeps_defaults_whole() -> None:
    for command in ("build-index", "classify", "remove", "search", "train", "evaluate"):
        text = runner.invoke(app, [command, "--help"], terminal_width=80).output
        assert not re.search(r"<(str|int|float|path|list|bool)", text), text
        assert "{" not in text and "list[str]" not in text, text
        assert max(len(line) for line in text.splitlines()) <= 80
    text = runner.invoke(app, ["build-index", "--help"], terminal_width=80).output
    assert "[default: dogs-bundle]" in text and "[default: tfds:stanford_dogs]" in text
    usage = runner.invoke(app, ["classify", "--help"], terminal_width=80).output
    assert "classify [OPTIONS] INPUTS..." in usage


def test_quiet_and_verbose_work_after_the_command_name(built: Path) -> None:
    loud = runner.invoke(app, ["info", "--bundle", str(built)])
    quiet = runner.invoke(app, ["info", "--bundle", str(built), "-q"])
    also_quiet = runner.invoke(app, ["info", "-q", "--bundle", str(built)])
    assert loud.exit_code == quiet.exit_code == also_quiet.exit_code == 0
    assert "tiny_test" in loud.output and quiet.output == also_quiet.output == ""
    assert runner.invoke(app, ["info", "--bundle", str(built), "--verbose"]).exit_code == 0


def test_info_lists_breeds_and_their_counts(built: Path) -> None:
    text = " ".join(invoke("info", "--bundle", built).output.split())
    # messy_dataset: 6 good photos a breed, plus cmyk.jpg (Beagle) and grey_alpha.png
    # (Chihuahua) that decode, plus one unlabelled photo at the top level
    assert "breeds (3), photos each:" in text
    for shown in ("beagle 7", "chihuahua 7", "samoyed 6", "(unlabelled) 1"):
        assert shown in text, text
    assert "images images" not in text and "24 found, 21 embedded, 3 skipped" in text


def test_classify_writes_stdout_by_default_and_never_overwrites(
        built: Path, messy_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    one = messy_dataset / "samoyed" / "001.jpg"
    result = runner.invoke(app, ["classify", str(one), "--bundle", str(built)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    assert table["path"].tolist() == [str(one)]
    assert "1 of 1 images classified" in result.stderr and "wrote stdout" in result.stderr
    assert not list(tmp_path.iterdir())  # no predictions.csv appeared
    lines = runner.invoke(app, ["classify", str(one), "--bundle", str(built), "--json"])
    assert json.loads(lines.stdout.splitlines()[0])["path"] == str(one)

    out = tmp_path / "p.csv"
    out.write_text("twenty rows of an earlier batch\n")
    refused = runner.invoke(app, ["classify", str(one), "--bundle", str(built), "--out",
                                  str(out)])
    assert refused.exit_code == 2 and "pass --overwrite" in refused.output
    assert out.read_text() == "twenty rows of an earlier batch\n"
    replaced = runner.invoke(app, ["classify", str(one), "--bundle", str(built), "--out",
                                   str(out), "--overwrite"])
    assert replaced.exit_code == 0 and len(pd.read_csv(out)) == 1
    for bad, said in ((tmp_path, "is a folder"), (tmp_path / "no" / "p.csv", "does not exist")):
        # refused before any work: even before the (missing) bundle is opened
        early = runner.invoke(app, ["classify", str(one), "--bundle", str(tmp_path / "none"),
                                    "--out", str(bad)])
        assert early.exit_code == 2 and said in unboxed(early.output), early.output


def test_search_shows_paths_relative_to_the_source(built: Path, messy_dataset: Path) -> None:
    image = messy_dataset / "samoyed" / "004.jpg"
    result = runner.invoke(app, ["search", str(image), "--bundle", str(built), "-k", "3"],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if ".jpg" in line and "│" in line]
    assert len(rows) == 3 and str(messy_dataset) not in "".join(rows)
    assert all(len(line) <= 80 for line in result.output.splitlines() if line[:1] in "┏┃┡│└")
    hits = json.loads(invoke("search", image, "--bundle", built, "--json").output)["lookalikes"]
    assert all(Path(h["path"]).is_absolute() for h in hits)  # --json keeps them absolute


def test_remove_dry_run_lists_then_remove_and_add_say_what_changed(
        built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    before = (copy / "manifest.json").read_bytes()
    dry = invoke("remove", "--bundle", copy, "Beagle/00[01].jpg", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "Beagle/000.jpg" in dry.output and "Beagle/001.jpg" in dry.output
    assert "would remove 2 images" in dry.output
    assert (copy / "manifest.json").read_bytes() == before  # nothing changed

    gone = invoke("remove", "--bundle", copy, "Beagle/00[01].jpg")
    assert gone.exit_code == 0, gone.output
    assert "Beagle/000.jpg" in gone.output and "removed 2 images" in gone.output
    assert ("refitted on the remaining rows: head logreg, open-set gate, look-alike space"
            in unboxed(gone.output))

    new = write_dataset(tmp_path / "new", per_class=4, seed=9,
                        classes={"corgi": (250, 180, 40)})
    added = invoke("add", "--bundle", copy, "--source", new)
    assert added.exit_code == 0, added.output
    assert "added 4 images" in added.output and "new breed: corgi" in added.output


@pytest.mark.parametrize(("command", "said"), [
    ("classify", "No results file was written"),
    ("add", "The bundle is as it was before the command"),
])
def test_a_stopped_command_says_what_it_left_for_that_command(
        command: str, said: str, tiny_bundle: Path, dataset: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (a container stop) in the middle of the work: exit 143, and a line that fits
    the command (a classify has no build to continue)."""
    from ui import workflows
    from ui.cli_common import Terminated

    def stopped(*args: object, **kwargs: object) -> None:
        raise Terminated

    monkeypatch.setattr(workflows, "classify_images" if command == "classify"
                        else "add_to_bundle", stopped)
    out = tmp_path / "predictions.csv"
    args = (["classify", str(dataset), "--bundle", str(tiny_bundle), "--out", str(out)]
            if command == "classify" else ["add", "--bundle", str(tiny_bundle), "--source",
                                           str(dataset)])
    result = runner.invoke(app, args)
    assert result.exit_code == 143
    text = " ".join(result.output.split())
    assert "interrupted" in text and said in text and "build-index" not in text
    assert not out.exists()
