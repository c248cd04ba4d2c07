"""Shared fixtures: seeded synthetic dog-ish images in a few classes and a tiny backbone.

The tiny backbone has random (seeded) weights and is registered only for tests, so the core
suite needs neither downloads nor ../shared.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from embed.backbones import BackboneSpec, register_backbone  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
TINY = "tiny_test"
TINY_SIZE = 32
TINY_DIM = 16
CLASSES = {
    "Beagle": (200, 120, 60),
    "n02085620-Chihuahua": (60, 110, 210),
    "samoyed": (235, 235, 230),
}


def build_tiny_backbone(input_shape: tuple[int, int, int], weights: str | None = None):
    """A few conv layers and average pooling: fast, deterministic, image-sensitive."""
    import keras

    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(TINY_DIM, 3, strides=2, activation="relu")(x)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs, name="tiny_test")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model


register_backbone(
    BackboneSpec(TINY, "", TINY_SIZE, "tf", TINY_DIM, custom_builder=build_tiny_backbone),
    replace=True,
)


def make_image(colour: tuple[int, int, int], rng: np.random.Generator,
               size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy image dominated by one colour, with a bright square at a random place."""
    w, h = size
    arr = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    x, y = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y:y + h // 3, x:x + w // 3] = 255 - np.array(colour, dtype=np.uint8)
    return Image.fromarray(arr)


def write_dataset(root: Path, per_class: int = 10, seed: int = 0,
                  classes: dict[str, tuple[int, int, int]] | None = None,
                  name: str = "{i:03d}") -> Path:
    """ROOT/<class>/<name>.jpg for each class (all of CLASSES by default), deterministic."""
    rng = np.random.default_rng(seed)
    for breed, colour in (classes or CLASSES).items():
        folder = root / breed
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(colour, rng).save(folder / f"{name.format(i=i)}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 labelled images in 3 classes (10 each); never modified by tests."""
    return write_dataset(tmp_path_factory.mktemp("dataset") / "dogs")


@pytest.fixture(scope="session")
def tiny_bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete bundle of `dataset` built with the tiny backbone (read-only for tests)."""
    from ui.workflows import BuildConfig, build_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_bundle(BuildConfig(source=str(dataset), out=out, backbone=TINY, weights="none",
                             batch_size=8, runtime="keras", rows_per_shard=7))
    return out


@pytest.fixture(scope="session")
def litert_bundle(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle built with the LiteRT runtime: it carries its `.tflite` (read-only)."""
    from ui.workflows import BuildConfig, build_bundle

    root = tmp_path_factory.mktemp("litert")
    os.environ["EMBED_DOGS_CACHE"] = str(root / "cache")
    try:
        build_bundle(BuildConfig(source=str(dataset), out=root / "bundle", backbone=TINY,
                                 weights="none", batch_size=8, runtime="litert"))
    finally:
        os.environ.pop("EMBED_DOGS_CACHE", None)
    return root / "bundle"


@pytest.fixture(scope="session")
def audited_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny bundle with its audit stored by `embed-dogs audit` (read-only for
    tests: copy it to change it). Its CLI output is in `audit-output.txt` beside it."""
    import shutil

    from typer.testing import CliRunner

    from ui.cli import app

    root = tmp_path_factory.mktemp("audited")
    out = root / "bundle"
    shutil.copytree(tiny_bundle, out)
    result = CliRunner().invoke(app, ["audit", "--bundle", str(out), "--out",
                                      str(root / "audit.csv")])
    assert result.exit_code == 0, result.output
    (root / "audit-output.txt").write_text(result.output)
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Converted-model caches go to a per-session temp folder, never the user's home."""
    monkeypatch.setenv("EMBED_DOGS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def woof_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """../shared's 600 woof-sample photos built by the CLI with the dog-tuned mobilenet_v2 at
    160 px (read-only for tests: copy it to change it). test_real_data checks the build,
    test_gate measures the evidence gate on it: one real-weights build for both."""
    import subprocess
    import sys

    woof = shared_path("woof-sample")
    weights = shared_path("weights", "mobilenet_v2_160_dogs_no_top.weights.h5")
    out = tmp_path_factory.mktemp("woof") / "bundle"
    env = {**os.environ, "EMBED_DOGS_CACHE": str(tmp_path_factory.getbasetemp() / "cache")}
    run = subprocess.run([sys.executable, "-m", "ui", "build-index", "--source", str(woof),
                          "--out", str(out), "--backbone", "mobilenet_v2", "--image-size",
                          "160", "--weights", str(weights)], cwd=REPO, capture_output=True,
                         text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent (users' machines)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (only on the team's machines and CI)")
    return path


def unboxed(output: str) -> str:
    """Click's usage errors as one line: rich draws them in a wrapped box."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


def private_keras_home(tmp_path: Path) -> Path:
    """A writable copy of ../shared/data/keras-home: Keras writes keras.json into KERAS_HOME,
    and nothing may write into ../shared."""
    import shutil

    home = tmp_path / "keras-home"
    shutil.copytree(shared_path("keras-home"), home, copy_function=shutil.copyfile)
    for folder in (home, *(p for p in home.rglob("*") if p.is_dir())):
        folder.chmod(0o755)  # copytree copies the shared folders' read-only modes
    return home


# The fast subset (`pytest -m fast`, about a minute on 2 cores): every test that is neither
# slow nor a browser test, except the modules below, which drive the app, real backbones,
# runtime conversions or benchmark scripts. The full suite runs them all (and CI does).
NOT_FAST_MODULES = frozenset({
    "test_ui_app", "test_runtimes", "test_backbones", "test_audit_store", "test_finetune",
    "test_serving", "test_benchmarks", "test_audit_benchmarks",
})


# Under pytest-xdist (`-n 2 --dist loadgroup` in pyproject's addopts) a module's tests stay on
# one worker, so its module fixtures (a Ray cluster, a built bundle) are made once; tests that
# share a session fixture too costly to make twice share a group. The benchmark smoke runs
# share nothing: each goes to whichever worker is free.
SPREAD_MODULES = frozenset({"test_benchmarks"})
SHARED_GROUPS = {"woof_bundle": "woof-sample"}
# The longest modules first (seconds on 2 cores, serial), so the two workers end together
# rather than one finishing a long module alone; the rest keep their order.
LONGEST_FIRST = ("test_benchmarks", "test_ray_engine", "test_stress", "test_gate",
                 "test_real_data", "test_ui_app", "test_staging", "test_ui_browser",
                 "test_runtimes", "test_backbones")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """`-m fast` runs in one process unless `-n` is on the command line itself: its tests are
    CPU-bound TensorFlow in this process, and a second worker only repeats the session fixtures
    (measured on 2 cores: 77 s serial against 99-128 s on 2 workers)."""
    args = config.invocation_params.args
    asked = any(a in ("-n", "--numprocesses") or a.startswith(("-n", "--numprocesses="))
                for a in args)
    if config.option.markexpr == "fast" and not asked and hasattr(config.option, "dist"):
        config.option.dist, config.option.tx, config.option.numprocesses = "no", [], 0


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        heavy = item.get_closest_marker("slow") or item.get_closest_marker("browser")
        if not heavy and module not in NOT_FAST_MODULES:
            item.add_marker(pytest.mark.fast)
        group = next((g for f, g in SHARED_GROUPS.items() if f in item.fixturenames), None)
        if group or module not in SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(group or module))
    rank = {m: i for i, m in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Say so when xdist ignored the groups (then each worker builds every module fixture and
    shared bundle itself: slower, still correct). xdist marks a grouped test by its node id."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    grouped = [i for i in session.items if i.get_closest_marker("xdist_group")]
    if grouped and not any("@" in i.nodeid for i in grouped):
        warnings.warn(pytest.PytestWarning(
            f"pytest {pytest.__version__} with this pytest-xdist ignores --dist loadgroup"
            " (pytest-xdist#1386): install pytest<9.2, as the [test] extra pins"), stacklevel=1)


@pytest.fixture
def read_only_lock_folder(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Call it to make the bundle lock's file impossible to create, as on a read-only mount
    (root ignores chmod, so the one call that creates it is refused with EROFS)."""
    import errno

    def switch_on() -> None:
        real_open = os.open

        def refuse(path, *args, **kwargs):  # noqa: ANN001, ANN202
            if str(path).endswith(".lock"):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("embed.lock.os.open", refuse)

    return switch_on
