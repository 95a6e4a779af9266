import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from medfusion.models.backbones import BACKBONES, WeightsError, build_backbone, load_backbone_weights


def _assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(u), keras.ops.convert_to_numpy(v))


def test_registry_has_expected_backbones():
    assert {"efficientnet_b3", "efficientnet_b0", "tiny"} <= set(BACKBONES)


def test_tiny_maps_pixels_to_feature_map_and_takes_caller_name():
    m = build_backbone("tiny", 32, model_name="depth_rgb_backbone")
    assert m.name == "depth_rgb_backbone"
    out = m(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32"))
    assert len(out.shape) == 4 and out.shape[0] == 2
    assert m.get_layer("tiny_rescale").scale == pytest.approx(1 / 255)
    assert all(not l.name.startswith(("conv2d", "batch_normalization", "re_lu")) for l in m.layers)


def test_efficientnet_b0_is_renamed_and_returns_one_feature_map():
    m = build_backbone("efficientnet_b0", 32, model_name="thermal_map_backbone")
    assert m.name == "thermal_map_backbone"
    out = m(keras.Input((32, 32, 3)), training=False)
    assert not isinstance(out, (list, tuple)) and len(out.shape) == 4
    # frozen at build; only a from-scratch pre-training unfreezes it, explicitly (training/pretrain.py)
    assert all(not l.trainable for l in m.layers if isinstance(l, keras.layers.BatchNormalization))


def test_pretrained_weights_come_with_batchnorm_frozen(tmp_path):
    src = build_backbone("tiny", 32, model_name="a_backbone")
    path = str(tmp_path / "tiny.weights.h5")
    src.save_weights(path)
    m = build_backbone("tiny", 32, weights=path, model_name="b_backbone")
    assert all(not l.trainable for l in m.layers if isinstance(l, keras.layers.BatchNormalization))


def test_unknown_backbone_lists_registered_names():
    with pytest.raises(ValueError) as e:
        build_backbone("resnet9000", 32)
    for name in ("efficientnet_b3", "efficientnet_b0", "tiny"):
        assert name in str(e.value)


def test_imagenet_tiny_is_refused():
    with pytest.raises(WeightsError, match="no pretrained ImageNet"):
        build_backbone("tiny", 32, weights="imagenet")


def test_imagenet_offline_explains_how_to_supply_the_file(monkeypatch, tmp_path):
    """Simulate the offline download deterministically (never touches the network, cannot hang)."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def offline(fname, origin=None, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsError) as e:
        build_backbone("efficientnet_b0", 32, weights="imagenet")
    msg = str(e.value)
    assert "could not be obtained" in msg
    assert "efficientnetb0_notop.h5" in msg
    assert "model.weights: /path/to/" in msg and "none" in msg


def test_missing_weights_path_is_named(tmp_path):
    path = str(tmp_path / "nope.weights.h5")
    with pytest.raises(WeightsError, match="nope.weights.h5"):
        build_backbone("tiny", 32, weights=path)


def test_weights_file_from_one_tiny_backbone_loads_into_another(tmp_path):
    src = build_backbone("tiny", 32, model_name="a_backbone")
    path = str(tmp_path / "tiny.weights.h5")
    src.save_weights(path)
    dst = build_backbone("tiny", 32, weights=path, model_name="b_backbone")
    _assert_same_weights(src, dst)


def test_legacy_h5_weights_file_loads(tmp_path):
    """The format keras.applications ships (efficientnetb3_notop.h5) is a legacy topological .h5."""
    src = build_backbone("tiny", 32, model_name="a_backbone")
    path = str(tmp_path / "tiny_legacy.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, src)
    dst = build_backbone("tiny", 32, weights=path, model_name="b_backbone")
    _assert_same_weights(src, dst)


def test_weights_file_that_does_not_fit_names_file_and_backbone(tmp_path):
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="d")])
    path = str(tmp_path / "other.weights.h5")
    other.save_weights(path)
    with pytest.raises(WeightsError) as e:
        build_backbone("tiny", 32, weights=path)
    assert "other.weights.h5" in str(e.value) and "tiny" in str(e.value)


def test_load_is_confirmed_by_values(tmp_path, monkeypatch):
    """If Keras silently loads nothing, the value check must catch it."""
    src = build_backbone("tiny", 32, model_name="a_backbone")
    path = str(tmp_path / "tiny.weights.h5")
    src.save_weights(path)
    dst = build_backbone("tiny", 32, model_name="b_backbone")
    monkeypatch.setattr(dst, "load_weights", lambda *a, **k: None)
    with pytest.raises(WeightsError, match="did not load"):
        load_backbone_weights(dst, path, "tiny")


def test_backbone_survives_a_keras_save_round_trip(tmp_path):
    from medfusion.models.backbones import Backbone

    inp = keras.Input((32, 32, 3), name="depth_rgb")
    bb = build_backbone("tiny", 32, model_name="depth_rgb_backbone")
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D(name="pool")(bb(inp)))
    bb.trainable = False
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("depth_rgb_backbone"), Backbone)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-6)
