import keras
import numpy as np
import pytest
import tensorflow as tf

from medfusion.config import ModelConfig
from medfusion.models.fusion import (
    LearnableFusionWeights, backbone_layers, build_fusion_model, build_pretrain_model, fusion_layer,
)

S = 16


@pytest.fixture
def cfg():
    return ModelConfig(backbone="tiny", weights="none", head_units=8, dropout=0.1)


def _probs(rng, n):
    p = rng.random((n, 3)).astype("float32")
    return p / p.sum(1, keepdims=True)


def _inputs(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name in model.input:
        out[name] = _probs(rng, n) if name == "metadata" else rng.uniform(0, 255, (n, S, S, 3)).astype("float32")
    return out


def test_fusion_layer_math_and_initial_weight():
    rng = np.random.default_rng(0)
    layer = LearnableFusionWeights(init_rf_weight=0.7, logit_scale=10.0)
    p_rf, p_img = _probs(rng, 5), _probs(rng, 5)
    out = keras.ops.convert_to_numpy(layer([p_rf, p_img]))
    assert layer.rf_weight() == pytest.approx(0.70, abs=1e-6)
    np.testing.assert_allclose(out, 0.7 * p_rf + 0.3 * p_img, rtol=1e-5, atol=1e-6)
    layer.logit.assign(-0.05)
    s = 1 / (1 + np.exp(-10.0 * -0.05))
    out = keras.ops.convert_to_numpy(layer([p_rf, p_img]))
    np.testing.assert_allclose(out, s * p_rf + (1 - s) * p_img, rtol=1e-5, atol=1e-6)
    assert layer.rf_weight() == pytest.approx(s, rel=1e-6)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-5)


def test_fusion_logit_gets_a_gradient():
    """dL/dlogit = scale * s(1-s) * mean_i[-(p_rf - p_img)_y / p_mix_y] for L = mean cross-entropy."""
    p_rf = np.full((4, 3), 1 / 3, "float32")
    p_img = (np.eye(3, dtype="float32")[[0, 1, 2, 0]] * 0.8 + 0.2 / 3).astype("float32")
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    layer = LearnableFusionWeights(init_rf_weight=0.7, logit_scale=10.0)
    layer([p_rf, p_img])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.categorical_crossentropy(tf.constant(y), layer([p_rf, p_img])))
    (g,) = tape.gradient(loss, layer.trainable_variables)
    s = 0.7
    mix = (s * p_rf + (1 - s) * p_img)[y.astype(bool)]
    expected = 10.0 * s * (1 - s) * np.mean(-(p_rf - p_img)[y.astype(bool)] / mix)
    assert abs(float(g)) > 0
    assert float(g) == pytest.approx(expected, rel=1e-4)


def test_fusion_layer_config_has_every_arg():
    layer = LearnableFusionWeights(init_rf_weight=0.6, logit_scale=5.0, name="fusion")
    cfg = layer.get_config()
    assert cfg["init_rf_weight"] == 0.6 and cfg["logit_scale"] == 5.0
    clone = LearnableFusionWeights.from_config(cfg)
    assert clone.rf_weight() == pytest.approx(0.6) and clone.name == "fusion"


def test_fusion_layer_rejects_bad_init():
    with pytest.raises(ValueError):
        LearnableFusionWeights(init_rf_weight=1.0)


def test_fusion_model_save_load_round_trip(cfg, tmp_path):
    model = build_fusion_model("metadata+depth_rgb", cfg, S)
    fusion_layer(model).logit.assign(0.02)
    x = _inputs(model)
    before = model.predict(x, verbose=0)
    path = tmp_path / "fusion.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-6, atol=1e-7)
    assert fusion_layer(loaded).rf_weight() == pytest.approx(fusion_layer(model).rf_weight(), rel=1e-7)
    assert fusion_layer(loaded).rf_weight() != pytest.approx(0.7)


def test_pretrain_model_ends_in_output(cfg):
    m = build_pretrain_model("thermal_map", cfg, S)
    assert m.name == "pretrain_thermal_map"
    assert m.layers[-1].name == "output"
    assert list(m.input) == ["thermal_map"]
    assert m.predict(_inputs(m), verbose=0).shape == (4, 3)
    assert [b.name for b in backbone_layers(m)] == ["thermal_map_backbone"]


def test_fusion_with_metadata_ends_in_fusion(cfg):
    m = build_fusion_model("metadata+depth_rgb+thermal_map", cfg, S)
    names = [l.name for l in m.layers]
    assert m.layers[-1].name == "fusion" and "image_classifier" in names and "output" not in names
    assert "image_concat" in names
    assert set(m.input) == {"metadata", "depth_rgb", "thermal_map"}
    assert [b.name for b in backbone_layers(m)] == ["depth_rgb_backbone", "thermal_map_backbone"]
    p = m.predict(_inputs(m), verbose=0)
    assert p.shape == (4, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    # the branch layer names are those of the pre-training model, so weights transfer by name
    pre = {l.name for l in build_pretrain_model("depth_rgb", cfg, S).layers} - {"output"}
    assert pre <= set(names)


def test_image_only_fusion_ends_in_output(cfg):
    m = build_fusion_model("depth_rgb", cfg, S)
    names = [l.name for l in m.layers]
    assert names[-1] == "output" and "fusion" not in names and "image_concat" not in names
    m2 = build_fusion_model("depth_map+thermal_rgb", cfg, S)
    assert m2.layers[-1].name == "output" and "image_concat" in [l.name for l in m2.layers]
    assert fusion_layer(m2) is None


def test_metadata_only_combination_is_refused(cfg):
    with pytest.raises(ValueError, match="no network is trained"):
        build_fusion_model("metadata", cfg, S)


def test_backbone_batchnorm_stays_in_inference_mode(cfg):
    """A fit step on the (fully trainable) pre-training model trains the convs but leaves BN statistics alone.

    Keras 3 passes the outer training=True into nested models despite backbone(x, training=False),
    so the builders also freeze BatchNorm layers; this checks the combined effect.
    """
    m = build_pretrain_model("depth_rgb", cfg, S)
    bb = backbone_layers(m)[0]
    bn, conv = bb.get_layer("tiny_bn1"), bb.get_layer("tiny_conv1")
    assert not bn.trainable and conv.trainable
    mean0 = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    kernel0 = keras.ops.convert_to_numpy(conv.kernel).copy()
    m(_inputs(m), training=True)
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    x = _inputs(m, n=8)
    m.train_on_batch(x, np.eye(3, dtype="float32")[np.arange(8) % 3])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), mean0)
    assert not np.array_equal(keras.ops.convert_to_numpy(conv.kernel), kernel0)


@pytest.mark.slow
def test_efficientnet_b3_fusion_model_builds():
    cfg = ModelConfig(backbone="efficientnet_b3", weights="none", head_units=16)
    m = build_fusion_model("metadata+depth_rgb", cfg, 32)
    (bb,) = backbone_layers(m)
    assert bb.name == "depth_rgb_backbone"
    assert 10.5e6 < bb.count_params() < 11.0e6
    assert m.layers[-1].name == "fusion"
    x = {"metadata": np.full((1, 3), 1 / 3, "float32"), "depth_rgb": np.zeros((1, 32, 32, 3), "float32")}
    assert m.predict(x, verbose=0).shape == (1, 3)
