"""Saliency maps: a planted quadrant is found, a constant model gives flat (flagged) maps, layers by name."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medfusion.config import ModelConfig
from medfusion.explain.saliency import METHODS, default_target_layer, quadrant_mass, saliency
from medfusion.models.backbones import build_backbone
from medfusion.models.fusion import build_pretrain_model

SIZE, HALF = 64, 32
LEVELS = np.array([40.0, 128.0, 215.0])  # the planted quadrant's flat grey level per class
PLANTED = 3  # bottom-right, in quadrant_mass order (top-left, top-right, bottom-left, bottom-right)
# Grad-CAM's mean share of the map in the planted quadrant must be at least this (0.25 is chance). Measured
# with this recipe (64 px, the tiny backbone's last feature map 8x8, one cell = 8 px with a 15 px receptive
# field, so some mass spills over the quadrant's border): 0.49 and 0.57 planted bottom-right, 0.66 and 0.75
# planted top-left (training seeds 0 and 1). At 32 px (a 4x4 map) the bottom-right share fell to 0.30-0.36.
MIN_PLANTED_MASS = 0.40


def planted_quadrant_data(n: int, seed: int, planted: int = PLANTED):
    """Crops of pixel noise; the planted quadrant is flat at the class's grey level (LEVELS), nothing else is."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32)
    a, b = divmod(planted, 2)
    x[:, a * HALF:(a + 1) * HALF, b * HALF:(b + 1) * HALF] = LEVELS[y][:, None, None, None] + rng.normal(
        0, 8, (n, HALF, HALF, 3))
    return np.clip(x, 0, 255), y


@pytest.fixture(scope="module")
def planted_model():
    """The tiny backbone's pre-training model (as medfusion builds it), trained directly on planted crops."""
    keras.utils.set_random_seed(0)
    x, y = planted_quadrant_data(384, seed=0)
    model = build_pretrain_model("depth_rgb", ModelConfig(backbone="tiny", weights="none", head_units=16,
                                                          dropout=0.0), SIZE)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit({"depth_rgb": x}, y, epochs=8, batch_size=32, verbose=0)
    return model


def test_gradcam_mass_lies_in_the_planted_quadrant(planted_model):
    x, y = planted_quadrant_data(60, seed=1)  # fresh crops
    pred = planted_model.predict({"depth_rgb": x}, verbose=0).argmax(1)
    assert (pred == y).mean() > 0.9  # the model did learn the planted signal
    sal = saliency(planted_model, {"depth_rgb": x}, "depth_rgb", pred, "gradcam")
    assert sal.target_layer == "tiny_relu3" and sal.maps.shape == (60, SIZE, SIZE)
    mass = np.array([quadrant_mass(m) for m in sal.maps if m.max() > 0])
    assert len(mass) >= 50
    assert mass[:, PLANTED].mean() >= MIN_PLANTED_MASS, mass.mean(axis=0)
    assert (mass.argmax(axis=1) == PLANTED).mean() >= 0.6  # the planted quadrant is the hottest for most samples
    plus = np.array([quadrant_mass(m) for m in saliency(planted_model, {"depth_rgb": x[:20]}, "depth_rgb",
                                                          pred[:20], "gradcam++").maps])
    assert plus.mean(axis=0).argmax() == PLANTED, plus.mean(axis=0)  # weaker (0.44-0.47), still the top quadrant
    # integrated gradients (black baseline) is NOT asserted to localise: it weighs by the pixel values, and the
    # bright noise outside the planted quadrant gets about as much attribution as the planted signal (0.28 vs 0.25)


def _constant_model():
    """Same layer names as a pre-training model, but the output layer ignores its input (zero kernel)."""
    inp = keras.Input((SIZE, SIZE, 3), name="depth_rgb")
    feats = build_backbone("tiny", SIZE, "none", model_name="depth_rgb_backbone")(inp)
    pooled = keras.layers.GlobalAveragePooling2D(name="depth_rgb_pool")(feats)
    out = keras.layers.Dense(3, activation="softmax", kernel_initializer="zeros",
                             bias_initializer=keras.initializers.Constant([0.2, 0.5, 0.3]), name="output")(pooled)
    return keras.Model({"depth_rgb": inp}, out)  # inputs as build_pretrain_model names them


@pytest.mark.parametrize("method", METHODS)
def test_constant_output_model_gives_all_zero_flagged_maps(method):
    x, _ = planted_quadrant_data(4, seed=2)
    sal = saliency(_constant_model(), {"depth_rgb": x}, "depth_rgb", [0, 1, 2, 1], method)
    assert np.all(sal.maps == 0.0)
    assert all(f.startswith("zero gradient") for f in sal.flags), sal.flags


def test_target_layer_by_name_and_a_wrong_name_lists_the_layers(planted_model):
    x, y = planted_quadrant_data(3, seed=3)
    sal = saliency(planted_model, {"depth_rgb": x}, "depth_rgb", y, "gradcam", target_layer="tiny_conv2")
    assert sal.target_layer == "tiny_conv2" and sal.maps.shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="not a layer of .depth_rgb_backbone.*tiny_relu2"):
        saliency(planted_model, {"depth_rgb": x}, "depth_rgb", y, "gradcam", target_layer="block7_conv")
    with pytest.raises(ValueError, match="not a feature map.*tiny_relu3"):
        saliency(planted_model, {"depth_rgb": x}, "depth_rgb", y, "gradcam", target_layer="depth_rgb_backbone_input")
    with pytest.raises(ValueError, match="no 'thermal_map' image branch"):
        saliency(planted_model, {"depth_rgb": x}, "thermal_map", y, "gradcam")


@pytest.mark.slow
def test_efficientnet_target_is_found_by_name_and_explained():
    model = build_pretrain_model("depth_rgb", ModelConfig(backbone="efficientnet_b0", weights="none",
                                                          head_units=8, dropout=0.0), SIZE)
    assert default_target_layer(model.get_layer("depth_rgb_backbone")) == "top_activation"
    x, _ = planted_quadrant_data(2, seed=4)
    sal = saliency(model, {"depth_rgb": x}, "depth_rgb", [0, 2], "gradcam")
    assert sal.target_layer == "top_activation" and sal.maps.shape == (2, SIZE, SIZE)
    assert np.isfinite(sal.maps).all() and sal.maps.min() >= 0.0 and sal.maps.max() <= 1.0
