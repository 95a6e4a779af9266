"""Stage 1 on cached features: the flips of the stream, the same weights as the uncached path, the cache off
(with its reason) for continuous augmentation."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from medfusion.config import StageConfig
from medfusion.data.pipeline import _augment, flip_codes
from medfusion.data.rows import flip_variant
from medfusion.models.fusion import build_fusion_model
from medfusion.models.losses import focal_alpha
from medfusion.training.stages import run_stage, set_backbones_trainable

# cached and uncached runs compute the same float32 ops on differently shaped batches (the backbone runs on
# batches of one variant at a time): weights agree to float32 rounding, not bit for bit
WEIGHT_ATOL = 1e-5


def test_flip_codes_name_the_flips_the_stream_applies():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (13, 6, 6, 3)).astype(np.float32)
    for step in (0, 1, 7):
        flipped = _augment({"x": tf.constant(images)}, seed=11, step=step, ops=("flip",))["x"].numpy()
        codes = flip_codes(11, step, 13).numpy()
        assert set(codes) <= {0, 1, 2, 3} and len(set(codes)) > 1
        expected = np.stack([flip_variant(images[i:i + 1], int(c))[0] for i, c in enumerate(codes)])
        np.testing.assert_array_equal(flipped, expected)


def _data(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = {"depth_rgb": (y[:, None, None, None] * 70 + rng.integers(0, 60, (n, 16, 16, 3))).astype(np.uint8),
         "thermal_map": rng.integers(0, 255, (n, 16, 16, 3)).astype(np.uint8),
         "metadata": rng.dirichlet([1, 1, 1], n).astype(np.float32)}
    # an asymmetric mark, so a flipped image gives the backbone a different input
    x["depth_rgb"][:, :3, :5] = 255
    return x, y


def _stage1(tiny_cfg, strategy, augment, use_cache):
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = build_fusion_model("metadata+depth_rgb+thermal_map", tiny_cfg, 16)
    set_backbones_trainable(model, False)
    (xt, yt), (xv, yv) = _data(30, 0), _data(11, 1)
    result = run_stage("stage1", model, strategy, (xt, yt), (xv, yv), StageConfig(epochs=3, lr=1e-2, patience=5),
                       focal_alpha(yt), 2.0, 8, seed=5, augment=augment, use_feature_cache=use_cache)
    return model, result


def test_cached_stage1_gives_the_uncached_weights(tiny_cfg, strategy):
    tiny_cfg = type(tiny_cfg)(**{**tiny_cfg.__dict__, "dropout": 0.2})  # dropout on: its random stream must match
    plain, r_plain = _stage1(tiny_cfg, strategy, ["flip"], use_cache=False)
    cached, r_cached = _stage1(tiny_cfg, strategy, ["flip"], use_cache=True)
    assert r_cached.feature_cache["used"] and not r_plain.feature_cache["used"]
    assert "4 augmentation variant" in r_cached.feature_cache["reason"]
    assert r_cached.feature_cache["seconds"] > 0 and "estimated_saved_seconds" in r_cached.feature_cache
    for a, b in zip(plain.get_weights(), cached.get_weights()):  # same seed: both started from the same weights
        np.testing.assert_allclose(a, b, atol=WEIGHT_ATOL, rtol=0)
    assert r_cached.best_epoch == r_plain.best_epoch
    np.testing.assert_allclose(r_cached.history["loss"], r_plain.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(r_cached.history["val_qwk"], r_plain.history["val_qwk"], atol=1e-6)


def test_the_head_really_trained(tiny_cfg, strategy):
    """Guards the test above against two runs that both left the head untouched."""
    keras.utils.set_random_seed(3)
    with strategy.scope():
        fresh = build_fusion_model("metadata+depth_rgb+thermal_map", tiny_cfg, 16)
    cached, _ = _stage1(tiny_cfg, strategy, ["flip"], use_cache=True)
    diff = np.abs(fresh.get_layer("image_classifier").get_weights()[0]
                  - cached.get_layer("image_classifier").get_weights()[0]).max()
    assert diff > 1e-3
    for a, b in zip(fresh.get_layer("depth_rgb_backbone").get_weights(),
                    cached.get_layer("depth_rgb_backbone").get_weights()):
        np.testing.assert_array_equal(a, b)  # the backbone is untouched


@pytest.mark.parametrize("augment, word", [(["flip", "rotate"], "rotate"), (["zoom"], "zoom")])
def test_continuous_augmentation_turns_the_cache_off_and_says_why(tiny_cfg, strategy, caplog, augment, word):
    with caplog.at_level(logging.INFO, logger="medfusion"):
        _, result = _stage1(tiny_cfg, strategy, augment, use_cache=True)
    assert result.feature_cache["used"] is False
    assert word in result.feature_cache["reason"] and "finite" in result.feature_cache["reason"]
    assert any("feature cache off" in r.message and word in r.message for r in caplog.records)


def test_cache_under_mixed_float16_matches_the_uncached_path(tiny_cfg, strategy):
    """float16 features (the pool's dtype under the policy) feed the heads as the uncached graph does."""
    from types import SimpleNamespace

    from medfusion.training import precision

    before = keras.config.dtype_policy().name
    try:
        precision.configure(SimpleNamespace(precision="mixed_float16", jit_compile="false"))
        plain, r_plain = _stage1(tiny_cfg, strategy, ["flip"], use_cache=False)
        cached, r_cached = _stage1(tiny_cfg, strategy, ["flip"], use_cache=True)
    finally:
        keras.config.set_dtype_policy(before)
    assert r_cached.feature_cache["used"]
    assert cached.get_layer("depth_rgb_dense").compute_dtype == "float16"
    for a, b in zip(plain.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, atol=WEIGHT_ATOL, rtol=0)
