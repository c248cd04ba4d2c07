"""The Streamlit app on the tiny bundle, driven by streamlit.testing.v1.AppTest, and its logic
(ui.core, ui.thumbnails) tested directly."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from ui import browse, core, facts
from ui.thumbnails import placeholder, thumbnail

APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"
BREEDS = {"beagle", "chihuahua", "samoyed"}
TIMEOUT = 120  # the first run loads TensorFlow and the model


@pytest.fixture(scope="module")
def ctx(tiny_bundle: Path):
    from ui.workflows import open_for_queries

    return open_for_queries(tiny_bundle, accepts_images=True)  # as the app opens it


@pytest.fixture
def app(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(core.BUNDLE_ENV, str(tiny_bundle))
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(tmp_path / "cache"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def jpeg_bytes(colour: tuple[int, int, int] = (200, 120, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), colour).save(buf, format="JPEG")
    return buf.getvalue()


def gallery_labels(at) -> list[str]:
    """The look-alikes' breeds; after the gate's refusal they are behind a toggle: open it."""
    for toggle in at.toggle:
        if toggle.label == "Show the closest dataset photos anyway" and not toggle.value:
            toggle.set_value(True).run()
    return [m.value.split("**")[1] for m in at.markdown if "· similarity" in m.value]


def use_buttons(at) -> list:
    return [b for b in at.button if b.label == "use as query"]


def query_caption(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Query:"))


def pick_first_dataset_image(at, breed: str = "beagle"):
    at.radio(key="identify_source").set_value("Dataset").run()
    at.selectbox(key="identify_pick_breed").set_value(breed).run()
    at.selectbox(key="identify_pick_row").select_index(0).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


# ---- AppTest: pages ----------------------------------------------------------------------------
def test_identify_starts_with_a_prompt(app):
    assert [p.label for p in app.radio] == ["Photo from"]
    assert len(app.file_uploader) == 1
    assert any("Upload one or several photos" in i.value for i in app.info)


def test_pick_dataset_image_shows_predictions_and_gallery(app):
    at = pick_first_dataset_image(app)
    assert "labelled **beagle**" in query_caption(at)
    # the tiny dataset's breeds are photos of distinct colours: a beagle of the bundle is a
    # known dog, and the head names its own folder's breed, sure of it
    (success,) = [e.value for e in at.success]
    assert re.fullmatch(r"\*\*beagle\*\* \((5\d|[6-9]\d|100)%\)", success), success
    assert not at.warning and not at.error
    assert any("not sure" in c.value and "50%" in c.value for c in at.caption)
    labels = gallery_labels(at)
    assert len(labels) == 12  # default k; the query itself is excluded from its look-alikes
    assert set(labels) <= BREEDS
    assert labels[:9] == ["beagle"] * 9  # its 9 fellow beagles are nearer than other breeds
    assert len(use_buttons(at)) == 12


def test_k_slider_sets_gallery_size(app):
    at = pick_first_dataset_image(app)
    at.slider(key="gallery_k").set_value(5).run()
    assert len(gallery_labels(at)) == 5


def test_breed_filter_changes_gallery(app):
    at = pick_first_dataset_image(app)
    verdict = (*at.success, *at.warning)[0].value
    # the predicted breed, or the photo's own label when the gate named none
    predicted = next((b for b in BREEDS if b in verdict), "beagle")
    at.radio(key="gallery_filter").set_value("same").run()
    same = gallery_labels(at)
    assert same and set(same) == {predicted}
    at.radio(key="gallery_filter").set_value("other").run()
    other = gallery_labels(at)
    assert other and predicted not in other
    assert same != other


def test_use_as_query_changes_the_query(app):
    at = pick_first_dataset_image(app)
    before = query_caption(at)
    first_name = next(c.value for c in at.caption if c.value.endswith(".jpg"))
    use_buttons(at)[0].click().run()
    assert not at.exception
    after = query_caption(at)
    assert after != before
    assert first_name in after


def test_upload_non_image_shows_message_and_app_keeps_working(app):
    app.file_uploader[0].set_value(("notes.jpg", b"this is not a photo", "image/jpeg")).run()
    assert not app.exception
    assert any("could not be read as a photo" in e.value for e in app.error)
    app.file_uploader[0].set_value(("dog.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert not app.exception
    assert not app.error
    assert "`dog.jpg` (your photo)" in query_caption(app)
    assert len(gallery_labels(app)) == 12


def test_upload_over_size_limit_is_refused(app, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(core.MAX_UPLOAD_ENV, "1")
    big = jpeg_bytes() + b"\0" * (1024 * 1024 + 1)
    app.run()
    app.file_uploader[0].set_value(("huge.jpg", big, "image/jpeg")).run()
    assert any("up to 1 MB" in e.value for e in app.error)
    assert not any(m.value.startswith("Query:") for m in app.markdown)


def test_camera_photo_becomes_the_query(app):
    app.radio(key="identify_source").set_value("Camera").run()
    app.camera_input[0].set_value(("shot.jpg", jpeg_bytes((235, 235, 230)), "image/jpeg")).run()
    assert not app.exception
    assert "`shot.jpg` (your photo)" in query_caption(app)
    assert len(gallery_labels(app)) == 12


def test_bundle_without_head_or_files(tiny_bundle: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch):
    """No breed head: no prediction, only the "all" filter; tfds rows: placeholders."""
    import shutil

    from streamlit.testing.v1 import AppTest

    from embed.bundle import Bundle

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bare"))
    bundle = Bundle(copy, writable=True)
    bundle.update_manifest(heads={})
    table = bundle.metadata()
    table["path"] = [f"tfds:stanford_dogs/train/{i}" for i in range(len(table))]
    bundle.write_metadata(table)
    bundle.record_files(bundle.metadata_path)
    monkeypatch.setenv(core.BUNDLE_ENV, str(copy))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    pick_first_dataset_image(at)
    assert any("no breed head" in i.value for i in at.info)
    assert not at.success and not at.warning
    # a dataset photo's own label stands in for the prediction
    assert at.radio(key="gallery_filter").options[1] == "Same breed as this photo (beagle)"
    at.radio(key="gallery_filter").set_value("same").run()
    assert set(gallery_labels(at)) == {"beagle"} and len(gallery_labels(at)) == 9
    assert len(at.image) == 10  # placeholders: the query and its 9 look-alikes
    at.radio(key="identify_source").set_value("Upload").run()
    at.file_uploader[0].set_value(("dog.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert not [r for r in at.radio if r.key == "gallery_filter"]  # no breed to filter by
    assert any(c.value == "Nearest photos of every breed." for c in at.caption)
    assert len(gallery_labels(at)) == 12


def test_browse_page_shows_breed_grid_and_lookalikes(app):
    app.switch_page("page_browse.py").run()
    assert not app.exception
    assert app.title[0].value == "Browse the dataset"
    app.selectbox(key="browse_breed").set_value("samoyed").run()
    names = [c.value for c in app.caption if c.value.endswith(".jpg")]
    assert len(names) == 10  # all samoyed photos fit on one page
    next(b for b in app.button if b.label == "look-alikes").click().run()
    assert "labelled **samoyed**" in query_caption(app)
    assert len(gallery_labels(app)) == 12


def test_map_page_renders_chart_and_picker(app):
    app.switch_page("page_map.py").run()
    assert not app.exception
    assert app.title[0].value == "Map of the embeddings"
    # 30 photos are too few for UMAP: the map says it shows PCA instead, and why
    assert any("30 photos projected with **PCA** (UMAP needs at least 50" in c.value
               for c in app.caption)
    assert not any(c.value.startswith("The black cross") for c in app.caption)
    app.selectbox(key="map_pick_breed").set_value("chihuahua").run()
    app.selectbox(key="map_pick_row").select_index(2).run()
    assert "labelled **chihuahua**" in query_caption(app)
    assert any(c.value.startswith("The black cross marks") for c in app.caption)
    spec = json.loads(app.get("vega_lite_chart")[0].proto.spec)
    marks = json.dumps(spec)
    assert '"cross"' in marks and "query: " in marks  # the query's marker layer
    # an own photo: placed among its nearest photos, and marked too
    app.file_uploader(key="map_upload").set_value(("own.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert "`own.jpg` (your photo)" in query_caption(app)
    assert any("among its 5 nearest photos" in c.value for c in app.caption)


def test_report_page_shows_metrics_and_manifest(app, tiny_bundle: Path):
    app.switch_page("page_report.py").run()
    assert not app.exception
    labels = [m.label for m in app.metric]
    assert labels == ["Top-1 accuracy", "Top-5 accuracy", "Test images"]
    assert app.metric[1].value == "100.0%"  # 3 classes: top-5 always hits
    per_breed = app.dataframe[0].value
    # column names in words, no raw keys
    assert list(per_breed.columns) == ["Breed", "Precision", "Recall", "F1", "Test photos"]
    assert sorted(per_breed["Breed"]) == sorted(BREEDS)
    facts = app.table[-1].value
    assert "tiny_test" in " ".join(facts["Value"]) and "None" not in " ".join(facts["Value"])
    subheaders = [h.value for h in app.subheader]
    assert "Misclassified test photos (0)" in subheaders  # the tiny breeds are told apart
    # the confusion matrix's cells: each breed's test photos on the diagonal (2 a breed:
    # round(20%) of 10), each opens its photos
    cell = app.selectbox(key="report_cell")
    assert sorted(cell.options) == sorted(f"{b} → {b} (2 photos)" for b in BREEDS)
    cell.set_value("samoyed|samoyed").run()
    shown = [c.value for c in app.caption if c.value.startswith("✓ samoyed → samoyed")]
    assert len(shown) == 2


def test_missing_bundle_shows_how_to_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(core.BUNDLE_ENV, str(tmp_path / "nowhere"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "does not exist" in at.error[0].value
    assert "embed-dogs build-index" in at.code[0].value


def test_incompatible_bundle_shows_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from streamlit.testing.v1 import AppTest

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text('{"schema_version": 0}')
    monkeypatch.setenv(core.BUNDLE_ENV, str(tmp_path / "old"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "schema version 0" in at.error[0].value


# ---- logic -------------------------------------------------------------------------------------
def test_bundle_from_args_prefers_command_line(tmp_path: Path):
    env = {core.BUNDLE_ENV: str(tmp_path / "env")}
    assert core.bundle_from_args(["--bundle", str(tmp_path / "arg")], env) == str(
        tmp_path / "arg")
    assert core.bundle_from_args(["-x", "--other"], env) == str(tmp_path / "env")
    assert core.bundle_from_args(["-h"], {}) is None


def test_query_from_upload(ctx):
    query = core.query_from_upload("dog.jpg", jpeg_bytes(), ctx.embedder)
    assert query.vector.shape == (16,) and np.isclose(np.linalg.norm(query.vector), 1.0)
    assert query.position is None and query.image and query.image[:2] == b"\xff\xd8"
    for data, message in [(b"", "empty"), (b"GIF89a broken", "could not be read"),
                          (jpeg_bytes()[:60], "could not be read")]:
        with pytest.raises(core.UploadRejected, match=message):
            core.query_from_upload("bad.jpg", data, ctx.embedder)
    with pytest.raises(core.UploadRejected, match="up to 1 MB"):
        core.query_from_upload("big.png", b"\0" * (1024 * 1024 + 1), ctx.embedder, limit_mb=1)


def test_max_upload_mb_reads_environment():
    assert core.max_upload_mb({}) == core.MAX_UPLOAD_MB
    assert core.max_upload_mb({core.MAX_UPLOAD_ENV: "3"}) == 3
    assert core.max_upload_mb({core.MAX_UPLOAD_ENV: "lots"}) == core.MAX_UPLOAD_MB


def test_shard_vectors_match_embeddings(ctx):
    vectors = core.ShardVectors(ctx.bundle)
    full = ctx.bundle.embeddings()
    assert len(vectors) == 30 and len(vectors.shards) == 5  # 7 rows per shard
    for position in (0, 6, 7, 29):
        np.testing.assert_array_equal(vectors.row(position), full[position])
    with pytest.raises(IndexError):
        vectors.row(30)


@pytest.mark.parametrize("mode", ["all", "same", "other"])
def test_lookalikes_filter(ctx, mode: str):
    vectors = core.ShardVectors(ctx.bundle)
    query = core.query_from_row(vectors, ctx.index.metadata, 0)
    hits = ctx.index.search_filtered(query.vector, 8, breed="beagle", mode=mode, exclude=0)
    assert 0 not in [h.position for h in hits]
    labels = {h.label for h in hits}
    if mode == "same":
        assert len(hits) == 8 and labels == {"beagle"}
    elif mode == "other":
        assert len(hits) == 8 and "beagle" not in labels
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    # asking for more than the filter can give returns what exists
    assert len(ctx.index.search_filtered(query.vector, 50, breed="beagle", mode="same",
                                         exclude=0)) == 9


def test_prediction_not_sure_below_threshold():
    assert core.Prediction([("beagle", 0.49), ("pug", 0.3)]).sure is False
    assert core.Prediction([("beagle", 0.5)]).sure is True
    no_head = SimpleNamespace(predictor=None, gate=None)
    assert core.predict(no_head, core.Query(np.zeros(3, np.float32), "x.jpg")) is None


def test_app_and_cli_give_the_same_answer_for_a_gallery_photo(tiny_bundle: Path, ctx,
                                                               dataset: Path):
    """One photo of the bundle, uploaded to the app and given to `search`: both find the
    photo itself first (similarity 1), call it a dog and name its folder's breed."""
    from typer.testing import CliRunner

    from ui.cli import app as cli

    photo = sorted((dataset / "samoyed").glob("*.jpg"))[0]
    run = CliRunner().invoke(cli, ["search", str(photo), "--bundle", str(tiny_bundle),
                                   "--json"])
    assert run.exit_code == 0, run.output
    answer = json.loads(run.stdout)
    query = core.query_from_upload(photo.name, photo.read_bytes(), ctx.embedder)
    prediction = core.predict(ctx, query)
    (first,) = ctx.index.search(query.vector, 1)[0]
    for path, score in ((answer["lookalikes"][0]["path"], answer["lookalikes"][0]["score"]),
                        (first.path, first.score)):
        assert Path(path).resolve() == photo.resolve() and score == pytest.approx(1.0, abs=1e-4)
    assert answer["verdict"] == prediction.verdict == "dog"
    assert answer["breeds"][0]["breed"] == prediction.breed == "samoyed"
    assert answer["breeds"][0]["probability"] == pytest.approx(prediction.probability, abs=1e-4)
    # the gate's kNN similarity is the raw space's, whatever space the look-alikes use
    from index.lookalikes import LookalikeIndex

    raw = LookalikeIndex(ctx.bundle).search(query.vector, ctx.gate.k)[0]
    assert answer["knn_similarity"] == pytest.approx(float(np.mean([h.score for h in raw])),
                                                     abs=1e-5)


def test_the_app_serves_an_image_input_head(tiny_bundle: Path, tmp_path: Path):
    """A fine-tuned head with an unfrozen backbone reads photos: the app gives it the upload's
    pixels, or reads a dataset photo's file, and answers as `search` does."""
    import shutil

    from classify.finetune import FinetuneParams
    from ui.queries import look_up_image, open_for_queries
    from ui.workflows import train_head

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    train_head(copy, "finetune", params=FinetuneParams(epochs=1, fine_tune_epochs=1,
                                                       batch_size=8, unfreeze=1))
    image_ctx = open_for_queries(copy, "finetune", accepts_images=True)
    assert image_ctx.predictor.needs_images
    row = image_ctx.index.metadata.iloc[0]
    photo = Path(str(row["path"]))
    expected = look_up_image(image_ctx, photo, top_breeds=5).breeds
    upload = core.query_from_upload(photo.name, photo.read_bytes(), image_ctx.embedder)
    from_row = core.query_from_row(core.ShardVectors(image_ctx.bundle),
                                   image_ctx.index.metadata, 0)
    for query in (upload, from_row):
        prediction = core.predict(image_ctx, query)
        assert prediction is not None and len(prediction.ranked) == len(expected) == 3
        assert [b for b, _ in prediction.ranked] == [b for b, _ in expected]
        np.testing.assert_allclose([p for _, p in prediction.ranked],
                                   [p for _, p in expected], atol=1e-4)


def test_breed_positions_and_paging(ctx):
    groups = browse.breed_positions(ctx.index.metadata)
    assert list(groups) == sorted(BREEDS) and all(len(v) == 10 for v in groups.values())
    rows, pages = browse.page_slice(np.arange(30), 4, 8)
    assert pages == 4 and rows.tolist() == [24, 25, 26, 27, 28, 29]
    assert browse.page_slice(np.arange(3), 9, 8)[0].tolist() == [0, 1, 2]


def test_map_table(ctx):
    table = browse.map_table(ctx.bundle)
    assert list(table.columns) == ["position", "x", "y", "breed", "file"]
    assert len(table) == 30 and set(table["breed"]) == BREEDS
    assert table["file"].str.endswith(".jpg").all()


def test_selected_position():
    assert browse.selected_position({"selection": {"dog": [{"position": 4}]}}) == 4
    assert browse.selected_position({"selection": {"dog": {"position": [7]}}}) == 7
    assert browse.selected_position({"selection": {"dog": []}}) is None
    assert browse.selected_position(None) is None


def test_head_reports_and_manifest_facts(ctx):
    (report,) = browse.head_reports(ctx.bundle)
    assert report.name == "logreg" and report.confusion_png is not None
    assert report.metrics["test_images"] == len(ctx.index.metadata.query("split == 'test'"))
    shown = dict(facts.manifest_facts(ctx.bundle.manifest))
    assert shown["recall@10 vs exact search"] == "1.0"
    assert shown["backbone"].startswith("tiny_test @ 32 px")


def test_thumbnails_are_made_once(dataset: Path, tmp_path: Path):
    photo = next((dataset / "samoyed").glob("*.jpg"))
    first = thumbnail(str(photo), "abc123", 24, cache_dir=tmp_path)
    assert first is not None and first.parent.name == "ab"
    with Image.open(first) as img:
        assert img.size == (24, 24)
    whole = thumbnail(str(photo), "abc123", 24, cache_dir=tmp_path, square=False)
    with Image.open(whole) as img:
        assert img.size == (24, 20)  # 48x40 photo, aspect kept
    stamp = first.stat().st_mtime_ns
    assert thumbnail(str(photo), "abc123", 24, cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_thumbnail_placeholder_for_rows_without_files(tmp_path: Path):
    assert thumbnail("tfds:stanford_dogs/train/17", "x", cache_dir=tmp_path) is None
    assert thumbnail(str(tmp_path / "gone.jpg"), "y", cache_dir=tmp_path) is None
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    assert thumbnail(str(broken), "z", cache_dir=tmp_path) is None
    assert placeholder()[:4] == b"\x89PNG"
    assert core.file_name("tfds:stanford_dogs/train/17") == "17"


def test_cli_ui_command_starts_streamlit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from typer.testing import CliRunner

    from ui.cli import app as cli

    calls = []
    monkeypatch.setattr(os, "execve", lambda exe, cmd, env: calls.append((exe, cmd, env)))
    result = CliRunner().invoke(cli, ["ui", "--bundle", str(tmp_path), "--port", "8765",
                                      "--headless"])
    assert result.exit_code == 0, result.output
    (exe, cmd, env), = calls
    assert exe == cmd[0] and cmd[1:4] == ["-m", "streamlit", "run"]
    assert cmd[4].endswith(os.path.join("ui", "app.py"))
    assert cmd[cmd.index("--server.port") + 1] == "8765"
    assert cmd[-3:] == ["--", "--bundle", str(tmp_path.resolve())]
    assert env[core.BUNDLE_ENV] == str(tmp_path.resolve())
    option = {cmd[i]: cmd[i + 1] for i in range(5, len(cmd) - 3, 2)}
    assert option["--server.address"] == "127.0.0.1"  # this machine only, unless --host
    assert option["--server.headless"] == "true"
    assert option["--server.showEmailPrompt"] == "false"
    assert option["--client.toolbarMode"] == "viewer"
    calls.clear()
    # without a terminal (CliRunner's stdin is not one) it runs headless by default
    CliRunner().invoke(cli, ["ui", "--bundle", str(tmp_path), "--host", "0.0.0.0"])
    (_, cmd, _), = calls
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"


def test_project_2d_fits_on_a_sample_of_large_collections(ctx, monkeypatch: pytest.MonkeyPatch):
    vectors = ctx.bundle.embeddings()
    full = browse.project_2d(vectors)
    monkeypatch.setattr(browse, "PCA_FIT_ROWS", 20)
    sampled = browse.project_2d(vectors)
    assert full.shape == sampled.shape == (30, 2)
    # the leading direction of the sample agrees with that of all rows (up to sign)
    assert abs(np.corrcoef(full[:, 0], sampled[:, 0])[0, 1]) > 0.9
    assert browse.project_2d(vectors[:2]).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_use_as_query_lets_go_of_the_uploaded_photo(app, dataset: Path):
    photo = (dataset / "Beagle" / "000.jpg").read_bytes()  # a dog: the look-alikes show
    app.file_uploader[0].set_value(("dog.jpg", photo, "image/jpeg")).run()
    assert "`dog.jpg` (your photo)" in query_caption(app)
    use_buttons(app)[0].click().run()
    assert "(dataset photo" in query_caption(app)
    assert len(app.file_uploader) == 1 and app.file_uploader[0].value in (None, [])


def test_uploads_accept_the_cli_formats_and_refuse_in_words(app):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (235, 235, 230)).save(buf, format="BMP")
    app.file_uploader[0].set_value(("dog.bmp", buf.getvalue(), "image/bmp")).run()
    assert "`dog.bmp` (your photo)" in query_caption(app)
    app.file_uploader[0].set_value(("scan.tiff", b"II*\0", "image/tiff")).run()
    assert any("scan.tiff is a .tiff file; upload a photo as JPG, PNG, WEBP, BMP, GIF"
               in e.value for e in app.error)


def test_a_small_file_claiming_a_huge_canvas_is_refused_before_decoding(app):
    """A PNG of 10000 x 10000 pixels compresses to kilobytes; decoding it would cost 300 MB."""
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 200_000
    app.file_uploader[0].set_value(("canvas.png", buf.getvalue(), "image/png")).run()
    assert any("image too large (10000x10000 pixels" in e.value for e in app.error)


def test_a_changed_bundle_is_picked_up(tiny_bundle: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch):
    import shutil

    from streamlit.testing.v1 import AppTest

    from ui.workflows import remove_from_bundle

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    monkeypatch.setenv(core.BUNDLE_ENV, str(copy))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert any("30 photos, 3 breeds" in m.value for m in at.sidebar.markdown)
    remove_from_bundle(copy, ["samoyed/00*.jpg"])
    at.run()
    assert not at.exception
    assert any("20 photos, 2 breeds" in m.value for m in at.sidebar.markdown)


# ---- a query per page, the clear button, several uploads, the sidebar -------------------------
def test_clear_button_forgets_the_query(app):
    at = pick_first_dataset_image(app)
    assert query_caption(at)
    next(b for b in at.button if b.label == "Clear").click().run()
    assert not at.exception
    assert not any(m.value.startswith("Query:") for m in at.markdown)
    assert any("Upload one or several photos" in i.value for i in at.info)
    assert at.selectbox(key="identify_pick_row").value is None


def test_the_query_belongs_to_its_page_and_source(app):
    app.file_uploader[0].set_value(("dog.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert "`dog.jpg` (your photo)" in query_caption(app)
    app.radio(key="identify_source").set_value("Camera").run()  # not the upload's answer
    assert not any(m.value.startswith("Query:") for m in app.markdown)
    app.switch_page("page_browse.py").run()
    assert "Selected photo" not in [h.value for h in app.subheader]
    app.switch_page("page_identify.py").run()
    app.radio(key="identify_source").set_value("Upload").run()
    assert "`dog.jpg` (your photo)" in query_caption(app)  # still there on its own page


def test_a_broken_upload_leaves_no_previous_answer(app):
    app.file_uploader[0].set_value(("dog.jpg", jpeg_bytes(), "image/jpeg")).run()
    assert "`dog.jpg` (your photo)" in query_caption(app)
    app.file_uploader[0].set_value(("broken.jpg", b"not a photo", "image/jpeg")).run()
    assert any("could not be read as a photo" in e.value for e in app.error)
    assert not any(m.value.startswith("Query:") for m in app.markdown)
    assert not [m for m in app.markdown if "· similarity" in m.value]


def test_several_uploads_give_a_table_and_a_csv(app, dataset: Path):
    files = [("a.jpg", (dataset / "Beagle" / "001.jpg").read_bytes(), "image/jpeg"),
             ("a.jpg", (dataset / "samoyed" / "002.jpg").read_bytes(), "image/jpeg"),
             ("c.jpg", b"not a photo", "image/jpeg")]  # two uploads may share a name
    app.file_uploader[0].set_value(files).run()
    assert not app.exception, [e.value for e in app.exception]
    table = app.dataframe[0].value
    assert table["file"].tolist() == ["a.jpg", "a.jpg", "c.jpg"]
    # the dataset's own photos: the nearest look-alike is the very photo, its breed its folder
    assert table["breed"].tolist()[:2] == ["beagle", "samoyed"]
    assert table["look-alike breed"].tolist()[:2] == ["beagle", "samoyed"]
    assert table["similarity"].tolist()[:2] == ["1.00", "1.00"]
    assert table["photo"].str.startswith("data:image/jpeg;base64,").tolist()[:2] == [True] * 2
    assert table["photo"][0] != table["photo"][1]  # each row its own photo
    assert table["problem"].tolist()[2] != "" and table["breed"].tolist()[2] == "-"
    assert [b.label for b in app.get("download_button")] == ["Download CSV"]
    assert not any(m.value.startswith("Query:") for m in app.markdown)


def test_batch_csv_is_what_classify_writes(ctx, dataset: Path, tmp_path: Path):
    """The app's download and `embed-dogs classify`'s CSV come from one function: equal but
    for the path column, which holds the upload's name instead of a path."""
    import pandas as pd
    from typer.testing import CliRunner

    from ui.batch import classify_uploads
    from ui.cli import app as cli

    photos = [dataset / "Beagle" / "003.jpg", dataset / "n02085620-Chihuahua" / "004.jpg"]
    answer = classify_uploads(ctx, [(p.name, p.read_bytes()) for p in photos])
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(cli, ["classify", *map(str, photos), "--bundle",
                                      str(ctx.bundle.root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    cli_table = pd.read_csv(out, keep_default_na=False)
    cli_table["path"] = [Path(p).name for p in cli_table["path"]]
    app_table = pd.read_csv(io.StringIO(answer.csv), keep_default_na=False)
    pd.testing.assert_frame_equal(app_table, cli_table)


def test_sidebar_lists_breeds_and_photos(app):
    (table,) = [d.value for d in app.sidebar.dataframe]
    assert dict(zip(table["breed"], table["photos"], strict=True)) == {b: 10 for b in BREEDS}
    assert not any("preprocessing" in m.value for m in app.sidebar.markdown)


def test_report_tables_and_test_predictions_logic(ctx):
    """A head that always says beagle: every non-beagle test photo is misclassified."""
    always = SimpleNamespace(needs_images=False, predict_top_k=lambda v, k, i: [
        [("beagle", 0.9)] for _ in range(len(v))])
    predictions = browse.test_predictions(ctx.bundle, always)
    test_rows = ctx.index.metadata.query("split == 'test'")
    assert len(predictions) == len(test_rows)
    wrong = predictions[predictions["true"] != predictions["predicted"]]
    assert len(wrong) == int((test_rows["label"] != "beagle").sum())
    cells = browse.confusion_cells(predictions)
    assert cells[0][2] >= cells[-1][2] and cells[-1][:2] == ("beagle", "beagle")
    assert browse.test_predictions(ctx.bundle, None) is None
    dev = browse.human_gate_dev(__import__("pandas").DataFrame([
        {"set": "test dogs", "kind": "dog", "images": 6, "knn_auroc": None,
         "knn_fpr_at_95": None, "dog": 1.0, "unknown_breed": 0.0, "not_a_dog": 0.0}]))
    assert "knn_fpr_at_95" not in dev.columns and "None" not in dev.to_string()
    assert dev.iloc[0]["kNN AUROC"] == "–" and dev.iloc[0]["Called a known breed"] == "100.0%"


def test_map_projection_palette_and_query_point(ctx):
    assert browse.projection_methods()[0] == "UMAP"  # a declared dependency
    assert browse.projection_for("UMAP", 30)[0] == "PCA"
    assert browse.projection_for("UMAP", 500) == ("UMAP", "")
    assert len(set(browse.PALETTE)) >= 20
    table = browse.map_table(ctx.bundle, thumbs=True)
    assert table["image"].str.startswith("data:image/jpeg").all()
    query = core.query_from_row(core.ShardVectors(ctx.bundle), ctx.index.metadata, 4)
    assert browse.query_point(table, query, []) == (table.iloc[4]["x"], table.iloc[4]["y"])
    own = SimpleNamespace(position=None)
    x, y = browse.query_point(table, own, [0, 1])
    assert x == pytest.approx(table.iloc[:2]["x"].mean())
