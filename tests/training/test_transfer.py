import keras
import numpy as np
import pytest

from medfusion.config import ModelConfig
from medfusion.models.fusion import build_fusion_model, build_pretrain_model
from medfusion.training.transfer import TransferError, transfer_weights


def _perturb(model):
    """Make every weight distinct from a fresh initialisation so a copy is detectable."""
    rng = np.random.default_rng(1)
    model.set_weights([w + rng.normal(0, 0.1, w.shape).astype(w.dtype) for w in model.get_weights()])


def test_transfer_copies_every_layer_except_output(tiny_cfg):
    src = build_pretrain_model("depth_rgb", tiny_cfg, 16)
    _perturb(src)
    dst = build_fusion_model("metadata+depth_rgb", tiny_cfg, 16)
    before_classifier = [w.copy() for w in dst.get_layer("image_classifier").get_weights()]
    report = transfer_weights(src, dst)
    assert report.ok and report.verified and report.excluded == ["output"]
    assert {name for name, _ in report.matched} == {"depth_rgb_backbone", "depth_rgb_dense"}
    for name in ("depth_rgb_backbone", "depth_rgb_dense"):
        for a, b in zip(src.get_layer(name).get_weights(), dst.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # the new classifier keeps its own initialisation: `output` was not copied into it
    for a, b in zip(before_classifier, dst.get_layer("image_classifier").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_output_is_not_copied_into_an_image_only_model(tiny_cfg):
    src = build_pretrain_model("depth_rgb", tiny_cfg, 16)
    _perturb(src)
    dst = build_fusion_model("depth_rgb", tiny_cfg, 16)
    before = [w.copy() for w in dst.get_layer("output").get_weights()]
    transfer_weights(src, dst)
    for a, b, s in zip(before, dst.get_layer("output").get_weights(), src.get_layer("output").get_weights()):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(b, s)


def test_shape_mismatch_aborts_and_names_the_layer(tiny_cfg):
    src = build_pretrain_model("depth_rgb", tiny_cfg, 16)
    wider = ModelConfig(backbone="tiny", weights="none", head_units=16, dropout=0.0)
    dst = build_fusion_model("metadata+depth_rgb", wider, 16)
    with pytest.raises(TransferError, match="depth_rgb_dense"):
        transfer_weights(src, dst)


def test_missing_layer_aborts(tiny_cfg):
    src = build_pretrain_model("thermal_map", tiny_cfg, 16)
    dst = build_fusion_model("metadata+depth_rgb", tiny_cfg, 16)  # no thermal branch at all
    with pytest.raises(TransferError, match="missing in target: thermal_map_backbone"):
        transfer_weights(src, dst)


def test_two_branches_each_get_their_own_source(tiny_cfg):
    a, b = build_pretrain_model("depth_rgb", tiny_cfg, 16), build_pretrain_model("thermal_map", tiny_cfg, 16)
    _perturb(a)
    _perturb(b)
    dst = build_fusion_model("depth_rgb+thermal_map", tiny_cfg, 16)
    transfer_weights(a, dst)
    transfer_weights(b, dst)
    np.testing.assert_array_equal(a.get_layer("depth_rgb_dense").get_weights()[0],
                                  dst.get_layer("depth_rgb_dense").get_weights()[0])
    np.testing.assert_array_equal(b.get_layer("thermal_map_dense").get_weights()[0],
                                  dst.get_layer("thermal_map_dense").get_weights()[0])
