"""Better answers wired into the bundle and the commands: the learned look-alike space as a
stored, refitted artifact (`--space raw|learned`, never served stale), the evidence gate's
"maybe <breed>", and `build-index --fine-tune` end to end on the tiny backbone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embed.bundle import Bundle
from index.lookalikes import LookalikeIndex
from index.quality import bundle_precision_at_k
from index.space import LearnedSpace
from index.space_store import LearnedLookalikes
from tests.conftest import TINY, write_dataset
from ui import core
from ui.cli import app
from ui.cli_output import verdict_line
from ui.queries import ImageAnswer

runner = CliRunner()


def test_build_stores_a_current_space_with_its_figures(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    section = bundle.manifest.space
    assert section is not None and section.kind == "blend" and section.blend_weight == 0.5
    assert section.fitted_on == bundle.manifest.rows and "space" not in bundle.manifest.stale()
    path = bundle.checked_file(section.file)  # listed in the manifest with its sha256
    assert path is not None and path.name.endswith(".npz")
    space = LearnedSpace.load(path)
    # 3 breeds: LDA has 2 dimensions, beside the 16 raw ones
    assert (section.dim_in, section.learned_dims, section.dim_out) == (16, 2, 18)
    test = section.figures["test_split"]
    assert (test["queries"], test["base"]) == (6, 24)
    # the raw figure is the one the plain precision@k (numpy exact search) gives
    assert test["raw"]["precision@5"] == bundle_precision_at_k(bundle)["precision@5"]
    assert 0.0 <= test["learned"]["within_breed_overlap@10"] <= 1.0
    assert space.apply(bundle.embeddings()[:2]).shape == (2, 18)


def test_space_choice_default_learned_and_raw_on_request(tiny_bundle: Path) -> None:
    from ui.workflows import open_for_queries

    learned = open_for_queries(tiny_bundle)
    assert learned.space == "learned" and isinstance(learned.index, LearnedLookalikes)
    assert learned.space_note == ""
    raw = open_for_queries(tiny_bundle, space="raw")
    assert raw.space == "raw" and type(raw.index) is LookalikeIndex
    rows = Bundle.open(tiny_bundle).embeddings()
    # a stored photo's nearest look-alike is itself, in either space, as the same row
    for ctx in (learned, raw):
        found = ctx.index.search(rows[:3], 1)
        assert [hits[0].position for hits in found] == [0, 1, 2]
    # the gate's kNN signal is the raw space's in both: the same numbers
    np.testing.assert_allclose(learned.index.raw_similarities(rows[:3], 5),
                               raw.index.raw_similarities(rows[:3], 5))


def test_search_and_classify_take_space(tiny_bundle: Path, dataset: Path) -> None:
    image = next((dataset / "Beagle").glob("*.jpg"))
    said = runner.invoke(app, ["search", str(image), "-b", str(tiny_bundle), "--space", "raw",
                               "--json"])
    assert said.exit_code == 0, said.output
    assert json.loads(said.output)["space"] == "raw"
    said = runner.invoke(app, ["search", str(image), "-b", str(tiny_bundle)],
                         terminal_width=200)
    assert said.exit_code == 0 and "(learned space)" in " ".join(said.output.split())
    said = runner.invoke(app, ["classify", str(image), "-b", str(tiny_bundle), "-o", "-",
                               "--space", "learned"])
    assert said.exit_code == 0, said.output
    assert "look-alikes: learned space" in said.output and ",sure," in said.output
    bad = runner.invoke(app, ["search", str(image), "-b", str(tiny_bundle), "--space", "lda"])
    assert bad.exit_code == 2


def test_a_stale_space_is_never_served(tiny_bundle: Path, dataset: Path,
                                       tmp_path: Path) -> None:
    from ui.workflows import open_for_queries

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "stale"))
    bundle = Bundle(copy, writable=True)
    section = bundle.manifest.model_dump()["space"]
    bundle.update_manifest(space={**section, "fitted_on": {"rows": 29, "digest": "0" * 64}})
    assert "space" in Bundle.open(copy).manifest.stale()
    for wanted in (None, "learned"):
        ctx = open_for_queries(copy, space=wanted)
        assert ctx.space == "raw" and type(ctx.index) is LookalikeIndex
        assert "stale" in ctx.space_note and "train --head logreg" in ctx.space_note
    image = next((dataset / "samoyed").glob("*.jpg"))
    said = runner.invoke(app, ["search", str(image), "-b", str(copy)], terminal_width=300)
    text = " ".join(said.output.split())
    assert said.exit_code == 0 and "look-alikes in the raw space" in text
    assert "(raw space)" in text


def test_add_and_remove_refit_the_space(tiny_bundle: Path, tmp_path: Path) -> None:
    from ui.workflows import add_to_bundle, remove_from_bundle

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))

    def base() -> int:
        manifest = Bundle.open(copy).manifest
        assert manifest.space.fitted_on == manifest.rows  # refitted on the rows of now
        return manifest.space.figures["rows"]

    before = base()
    more = write_dataset(tmp_path / "more", per_class=10, seed=5, name="extra_{i}",
                         classes={"beagle": (200, 120, 60), "samoyed": (235, 235, 230)})
    add_to_bundle(copy, str(more), runtime="keras")
    assert base() == before + 16  # 8 of each new folder's 10 photos go to the train split
    remove_from_bundle(copy, ["beagle/extra_*.jpg"])
    assert base() == before + 8


def test_maybe_breed_when_the_head_and_lookalikes_disagree() -> None:
    answer = ImageAnswer([], [("beagle", 0.62), ("basset", 0.2)], "dog", 0.8,
                         "the head says beagle, 1 of 5 look-alikes agree", confident=False)
    line = verdict_line(answer)
    assert "maybe beagle" in line and "not sure" in line
    sure = ImageAnswer([], [("beagle", 0.9)], "dog", 0.8, "", confident=True)
    assert "maybe" not in verdict_line(sure) and "verdict: [bold]dog" in verdict_line(sure)
    p = core.Prediction([("n02088364-beagle", 0.95)], verdict="dog", confident=False)
    assert not p.sure and p.names_a_breed and p.maybe.startswith("maybe ")
    assert core.Prediction([("beagle", 0.95)], verdict="dog").maybe == ""


def test_unlabelled_bundles_keep_the_raw_space(tmp_path: Path) -> None:
    from ui.workflows import BuildConfig, build_bundle, open_for_queries

    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (write_dataset(tmp_path / "src", per_class=3)).rglob("*.jpg"):
        shutil.copy(p, flat / f"{p.parent.name}_{p.name}")
    out = tmp_path / "bundle"
    built = build_bundle(BuildConfig(source=str(flat), out=out, backbone=TINY, weights="none",
                                     batch_size=8, runtime="keras"))
    assert built.manifest.space is None and built.manifest.gate is None
    ctx = open_for_queries(out)
    assert ctx.space == "raw" and ctx.space_note == ""  # nothing to say: no labels
    assert "no learned space" in open_for_queries(out, space="learned").space_note


@pytest.mark.slow
def test_build_index_fine_tune_end_to_end(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    said = runner.invoke(app, [
        "build-index", "--source", str(dataset), "--out", str(out), "--backbone", TINY,
        "--weights", "none", "--runtime", "keras", "--batch-size", "8", "--fine-tune",
        "--unfreeze", "1", "--head-epochs", "2", "--tune-epochs", "1", "--keep-tuned"],
        terminal_width=200)
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())
    for words in ("before", "after", "top1", "precision@5 learned", "time per stage",
                  "fine-tune the backbone's top", "total", "held out of tuning",
                  "judge on the held-out train photos", "tuned backbone"):
        assert words in text
    assert "2/2 epochs" in text and "fine tune" in text and "epoch 1/2" not in text
    base, tuned = Bundle.open(tmp_path / "tuned-base"), Bundle.open(out)
    lineage = tuned.manifest.backbone.lineage
    assert lineage["bundle"] == str(base.root.resolve()) and lineage["unfrozen_layers"] == 1
    assert tuned.manifest.backbone.weights_sha256 != base.manifest.backbone.weights_sha256
    assert "finetune" in base.manifest.heads
    for bundle in (base, tuned):  # both fully built: head, gate, space, the same split
        assert bundle.manifest.space is not None and bundle.manifest.gate is not None
        assert "logreg" in bundle.manifest.heads
    assert base.manifest.source.splits == tuned.manifest.source.splits
    # the tuned build takes the base's split photo by photo (no regrouping on tuned vectors)
    sides = [dict(zip(b.metadata()["path"], b.metadata()["split"], strict=True))
             for b in (base, tuned)]
    assert sides[0] == sides[1] and tuned.manifest.source.get("split_from") == str(
        tmp_path / "tuned-base")
    refused = runner.invoke(app, ["build-index", "--source", str(dataset), "--out",
                                  str(tmp_path / "x"), "--fine-tune", "--backbone-from",
                                  str(out)])
    assert refused.exit_code == 2 and "--backbone-from" in refused.output


def test_fine_tune_that_does_not_pay_keeps_the_plain_backbone(dataset: Path,
                                                                tmp_path: Path) -> None:
    """A "tuning" that leaves the backbone as it was (nothing unfrozen) cannot be better on
    the held-out train photos, so OUT is rebuilt with the plain backbone, and says so."""
    out = tmp_path / "out"
    said = runner.invoke(app, [
        "build-index", "--source", str(dataset), "--out", str(out), "--backbone", TINY,
        "--weights", "none", "--runtime", "keras", "--batch-size", "8", "--fine-tune",
        "--unfreeze", "0", "--head-epochs", "1", "--tune-epochs", "0"], terminal_width=200)
    assert said.exit_code == 0, said.output
    text = " ".join(said.output.split())
    for words in ("held out of tuning", "Tuning did not pay", "tuned (not kept)",
                  "plain backbone", "tuning did not pay: rebuild with the plain backbone"):
        assert words in text
    # the head phase as a bar, as `train` shows it, not a line per epoch
    assert "head" in text and "1/1 epochs" in text and "epoch 1/1" not in text
    base, final = Bundle.open(tmp_path / "out-base"), Bundle.open(out)
    assert final.manifest.backbone.lineage is None
    assert final.manifest.backbone.weights_sha256 == base.manifest.backbone.weights_sha256
    assert final.manifest.source.get("split_from") == str(tmp_path / "out-base")


def test_tuning_pays_only_when_better_where_users_look() -> None:
    from ui.finetune_flow import tuning_paid

    plain = {"top1": 0.9, "precision@5 learned": 0.9}
    assert tuning_paid(plain, {"top1": 0.9, "precision@5 learned": 0.91})
    assert tuning_paid(plain, {"top1": 0.88, "precision@5 learned": 0.95})  # net gain
    assert not tuning_paid(plain, {"top1": 0.85, "precision@5 learned": 0.92})  # net loss
    assert not tuning_paid(plain, {"top1": 0.95, "precision@5 learned": 0.9})  # look-alikes
    assert not tuning_paid(plain, dict(plain))


def test_judge_on_photos_held_out_of_tuning(tiny_bundle: Path) -> None:
    """The same vectors judged against themselves are equal, so tuning cannot pay; with no
    slice held out there is nothing to judge on (the tuned backbone is kept unjudged)."""
    from classify.finetune import FinetuneParams
    from ui.finetune_flow import judge, tuning_paid

    figures = judge(tiny_bundle, tiny_bundle, FinetuneParams(validation_fraction=0.25))
    assert figures["plain"] == figures["tuned"] and figures["plain"]["photos"] > 0
    assert 0.0 <= figures["plain"]["precision@5 learned"] <= 1.0
    assert not tuning_paid(figures["plain"], figures["tuned"])
    assert judge(tiny_bundle, tiny_bundle, FinetuneParams(validation_fraction=0.0)) == {}
