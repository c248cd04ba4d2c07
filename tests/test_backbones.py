import os
import subprocess
import sys
from pathlib import Path

import pytest

from embed.backbones import (
    build_backbone,
    get_backbone,
    known_backbones,
    preprocess,
    resolve_image_size,
    weights_sha256,
)
from embed.errors import UnknownBackboneError, WeightsUnavailableError
from tests.conftest import REPO, TINY, private_keras_home

REQUIRED = ["mobilenet_v2", "mobilenet", "mobilenet_v3_large", "efficientnet_b0",
            "efficientnet_v2_b0", "resnet50"]


@pytest.mark.parametrize("name", [n for n in known_backbones() if n != TINY])
def test_every_registered_backbone_builds_with_its_recorded_dim(name: str) -> None:
    spec = get_backbone(name)
    model = build_backbone(spec, 64, None)
    assert model.output_shape == (None, spec.dim)


def test_required_backbones_are_registered() -> None:
    assert set(REQUIRED) <= set(known_backbones())
    assert get_backbone("mobilenet_025").builder_kwargs == {"alpha": 0.25}


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(UnknownBackboneError, match="known backbones: .*mobilenet_v2"):
        get_backbone("vgg99")


def test_image_size_rules() -> None:
    spec = get_backbone("mobilenet_v2")
    assert resolve_image_size(spec, None, "imagenet") == 224
    assert resolve_image_size(spec, 160, "imagenet") == 160
    assert resolve_image_size(spec, 200, None) == 200  # random weights: any size
    with pytest.raises(UnknownBackboneError, match="only for image sizes"):
        resolve_image_size(spec, 200, "imagenet")


def test_preprocessing_modes() -> None:
    import numpy as np

    x = np.array([[[[0.0, 127.5, 255.0]]]])
    np.testing.assert_allclose(preprocess(x, "tf"), [[[[-1.0, 0.0, 1.0]]]])
    np.testing.assert_allclose(preprocess(x, "caffe"), [[[[255 - 103.939, 127.5 - 116.779,
                                                           -123.68]]]])
    np.testing.assert_allclose(preprocess(x, "none"), x)


def test_random_weights_are_reproducible_and_hashed() -> None:
    spec = get_backbone(TINY)
    a, b = build_backbone(spec, 32, None), build_backbone(spec, 32, None)
    assert weights_sha256(a) == weights_sha256(b)


# Keras warns once per layer container it cannot match (~100 for mobilenet_v2) before failing
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_weights_file_that_does_not_fit_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "tiny.weights.h5"
    build_backbone(get_backbone(TINY), 32, None).save_weights(path)
    with pytest.raises(WeightsUnavailableError, match="does not fit backbone mobilenet_v2"):
        build_backbone(get_backbone("mobilenet_v2"), 96, str(path))


def _run(code: str, keras_home: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_HOME": keras_home, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.shared
def test_imagenet_weights_load_offline_through_keras_cache(tmp_path: Path) -> None:
    """The real `weights="imagenet"` path: Keras finds its own cache under KERAS_HOME."""
    home = private_keras_home(tmp_path)
    code = (
        "from embed.embedder import load_embedder\n"
        "e = load_embedder('mobilenet_025', 'imagenet', runtime='keras')\n"
        "print(e.dim, e.weights, e.weights_hash)\n"
    )
    result = _run(code, str(home))
    assert result.returncode == 0, result.stderr[-2000:]
    dim, weights, digest = result.stdout.split()[-3:]
    assert (dim, weights, len(digest)) == ("256", "imagenet", 64)
    assert (home / "keras.json").is_file()  # Keras wrote its config into the copy


def test_imagenet_weights_offline_without_cache_is_a_clear_error(tmp_path) -> None:
    code = (  # the network is cut in the child, so an online machine never downloads
        "import socket\n"
        "def cut(*a, **k):\n"
        "    raise OSError('network is unreachable (cut by the test)')\n"
        "socket.create_connection = socket.getaddrinfo = socket.socket.connect = cut\n"
        "from embed.backbones import build_backbone, get_backbone\n"
        "from embed.errors import WeightsUnavailableError\n"
        "try:\n"
        "    build_backbone(get_backbone('mobilenet_025'), 128, 'imagenet')\n"
        "    print('LOADED')\n"
        "except WeightsUnavailableError as exc:\n"
        "    print('CLEAR', exc)\n"
    )
    result = _run(code, str(tmp_path / "empty-keras-home"))
    assert "CLEAR could not download the ImageNet weights for mobilenet_025" in result.stdout
    assert "--weights PATH" in result.stdout
