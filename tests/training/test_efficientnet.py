"""EfficientNetB3, the real backbone: built, pre-trained, transferred and trained one step per stage."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from medfusion.config import ModelConfig, StageConfig
from medfusion.models.fusion import build_fusion_model, build_pretrain_model
from medfusion.models.losses import equal_alpha, focal_alpha
from medfusion.training.stages import (backbone_snapshot, relative_change, run_stage,
                                       set_backbones_trainable)
from medfusion.training.transfer import transfer_weights


@pytest.mark.slow
def test_efficientnet_b3_fusion_one_step_per_stage():
    cfg = ModelConfig(backbone="efficientnet_b3", weights="none", head_units=16, dropout=0.0)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    rng = np.random.default_rng(0)
    n = 8
    x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2, 1, 1])
    meta = rng.dirichlet(np.ones(3), n).astype(np.float32)
    one_step = StageConfig(epochs=1, lr=1e-3, patience=1)

    with strategy.scope():
        pre = build_pretrain_model("depth_rgb", cfg, 32)
    backbone_params = pre.get_layer("depth_rgb_backbone").count_params()
    assert 10_000_000 < backbone_params < 11_500_000  # EfficientNetB3 without top: ~10.8 M
    r = run_stage("pretrain", pre, strategy, ({"depth_rgb": x}, y), ({"depth_rgb": x}, y), one_step,
                  equal_alpha(3), 2.0, n, seed=0, augment=False)
    assert r.steps_per_epoch == 1 and r.epochs_run == 1

    with strategy.scope():
        fusion = build_fusion_model("metadata+depth_rgb", cfg, 32)
    report = transfer_weights(pre, fusion)
    assert report.ok and report.verified and "output" in report.excluded
    np.testing.assert_array_equal(pre.get_layer("depth_rgb_backbone").get_weights()[0],
                                  fusion.get_layer("depth_rgb_backbone").get_weights()[0])

    data = ({"depth_rgb": x, "metadata": meta}, y)
    alpha = focal_alpha(y, 3, 3.0)
    set_backbones_trainable(fusion, False)
    before = backbone_snapshot(fusion)
    s1 = run_stage("stage1", fusion, strategy, data, data, one_step, alpha, 2.0, n, seed=0, augment=False)
    assert relative_change(before, backbone_snapshot(fusion)) == 0.0
    set_backbones_trainable(fusion, True)
    s2 = run_stage("stage2", fusion, strategy, data, data, StageConfig(epochs=1, lr=1e-3, patience=1), alpha, 2.0, n,
                   seed=0, augment=False)
    assert s2.trainable_params > s1.trainable_params * 10
    assert relative_change(before, backbone_snapshot(fusion)) > 0.0


def _features(model, x, training):
    feats = keras.Model(model.inputs, model.get_layer("depth_rgb_pool").output)
    return keras.ops.convert_to_numpy(feats(x, training=training))


def test_frozen_efficientnet_runs_in_inference_mode_whatever_the_training_flag():
    """Keras 3 hands the outer training flag to nested models; a frozen backbone must ignore it."""
    cfg = ModelConfig(backbone="efficientnet_b0", weights="none", head_units=8, dropout=0.0)
    model = build_pretrain_model("depth_rgb", cfg, 32)
    bb = model.get_layer("depth_rgb_backbone")
    assert any(isinstance(l, keras.layers.Dropout) and l.rate > 0 for l in bb.layers)  # stochastic depth exists
    rng = np.random.default_rng(0)
    x = {"depth_rgb": rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")}
    y = np.eye(3, dtype="float32")[[0, 1, 2, 0]]

    set_backbones_trainable(model, True)  # unfrozen: stochastic depth is active in training mode
    assert not np.allclose(_features(model, x, True), _features(model, x, True))

    set_backbones_trainable(model, False)
    reference = _features(model, x, False)
    bn = [l for l in bb.layers if isinstance(l, keras.layers.BatchNormalization)]
    stats = [keras.ops.convert_to_numpy(l.moving_mean).copy() for l in bn]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    for _ in range(2):  # two training steps on the same batch
        model.train_on_batch(x, y)
        np.testing.assert_array_equal(_features(model, x, True), reference)
    for layer, before in zip(bn, stats):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.moving_mean), before)
