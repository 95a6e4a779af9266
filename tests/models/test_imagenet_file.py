"""model.weights: <path> builds exactly the network weights="imagenet" builds from Keras' cache.

ImageNet weights cannot be downloaded here, so the tests write a synthetic ImageNet-style file
(an EfficientNetB0 without top, random weights, saved in the legacy h5 format keras.applications
ships) under the name Keras looks for, in a temporary Keras home.
"""

import h5py
import keras
import numpy as np
import pytest
from keras.src.backend import config as keras_config
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from medfusion.models.backbones import (WeightsError, build_backbone, keras_cache_file, uses_pretrained_weights,
                                        weights_file_sha256, weights_kind)

S = 32


def _write_imagenet_style_file(path):
    base = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(S, S, 3))
    rng = np.random.default_rng(3)
    # positive values everywhere keep Normalization variances and BatchNorm variances valid
    base.set_weights([rng.uniform(0.05, 0.3, w.shape).astype(w.dtype) for w in base.get_weights()])
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    return path


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """A temporary Keras home holding a synthetic efficientnetb0_notop.h5; no network, no hash check."""
    home = tmp_path / "keras_home"
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    monkeypatch.setattr(file_utils, "validate_file", lambda *a, **k: True)  # not Google's file: hash differs

    def no_network(*a, **k):
        raise AssertionError("the test must not download anything")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    _write_imagenet_style_file(home / "models" / "efficientnetb0_notop.h5")
    return home


def _layer_list(model):
    """(class, config without the auto-generated name) per layer: the architecture, independent of naming."""
    out = []
    for layer in model.layers:
        cfg = {k: v for k, v in layer.get_config().items() if k != "name"}
        out.append((type(layer).__name__, repr(cfg)))
    return out


def _batch():
    return np.random.default_rng(0).uniform(0, 255, (2, S, S, 3)).astype("float32")


def test_weights_kind_and_pretrained():
    assert weights_kind("none") == weights_kind(None) == weights_kind("") == "none"
    assert weights_kind("ImageNet") == "imagenet" and weights_kind("/x/y.h5") == "file"
    assert not uses_pretrained_weights("none") and uses_pretrained_weights("imagenet")
    assert uses_pretrained_weights("~/w.h5") and weights_file_sha256("imagenet") is None


def test_file_builds_the_imagenet_network_with_the_same_outputs(keras_home):
    cached = keras_home / "models" / "efficientnetb0_notop.h5"
    assert keras_cache_file("efficientnetb0_notop.h5") == str(cached)
    ref = build_backbone("efficientnet_b0", S, weights="imagenet", model_name="a_backbone")
    from_file = build_backbone("efficientnet_b0", S, weights=str(cached), model_name="b_backbone")
    assert _layer_list(from_file) == _layer_list(ref)
    x = _batch()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(from_file(x, training=False)),
                               keras.ops.convert_to_numpy(ref(x, training=False)), atol=1e-6, rtol=0)
    # the ImageNet-only input scaling is there: one Rescaling more than the weights=None network
    plain = build_backbone("efficientnet_b0", S, weights="none", model_name="c_backbone")
    n_rescaling = [sum(isinstance(l, keras.layers.Rescaling) for l in m.layers) for m in (from_file, plain)]
    assert n_rescaling[0] == n_rescaling[1] + 1
    assert all(not l.trainable for l in from_file.layers if isinstance(l, keras.layers.BatchNormalization))


def test_home_relative_path_works(keras_home, tmp_path, monkeypatch):
    home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(home))
    target = home / "weights" / "efficientnetb0_notop.h5"
    target.parent.mkdir(parents=True)
    target.write_bytes((keras_home / "models" / "efficientnetb0_notop.h5").read_bytes())
    model = build_backbone("efficientnet_b0", S, weights="~/weights/efficientnetb0_notop.h5", model_name="d_backbone")
    ref = build_backbone("efficientnet_b0", S, weights="imagenet", model_name="e_backbone")
    x = _batch()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), keras.ops.convert_to_numpy(ref(x)), atol=1e-6)
    assert weights_file_sha256("~/weights/efficientnetb0_notop.h5") == weights_file_sha256(str(target))


def test_file_that_does_not_fit_names_file_and_backbone(tmp_path):
    tiny = build_backbone("tiny", S, model_name="t_backbone")
    path = tmp_path / "tiny_legacy.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, tiny)
    with pytest.raises(WeightsError) as e:
        build_backbone("efficientnet_b0", S, weights=str(path))
    assert "tiny_legacy.h5" in str(e.value) and "efficientnet_b0" in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone("efficientnet_b0", S, weights=str(tmp_path / "efficientnetb0_notop.h5"))
