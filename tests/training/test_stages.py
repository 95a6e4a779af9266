import keras
import numpy as np

from medfusion.config import StageConfig
from medfusion.models.fusion import build_fusion_model
from medfusion.models.losses import equal_alpha
from medfusion.training.stages import (backbone_snapshot, count_params, relative_change, run_stage,
                                       set_backbones_trainable)


def _bn_stats(model):
    bb = model.get_layer("depth_rgb_backbone")
    return [np.array(v) for layer in bb.layers if isinstance(layer, keras.layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


def _run(model, strategy, data, stage_cfg, name):
    x, y = data
    return run_stage(name, model, strategy, ({"depth_rgb": x}, y), ({"depth_rgb": x[:16]}, y[:16]), stage_cfg,
                     equal_alpha(3), 2.0, 8, seed=0, augment=False)


def test_stage1_freezes_the_backbone_and_stage2_changes_it_with_bn_fixed(tiny_cfg, strategy, toy_images):
    with strategy.scope():
        model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    set_backbones_trainable(model, False)
    trainable, total = count_params(model)
    head_only = sum(int(np.prod(w.shape)) for n in ("depth_rgb_dense", "output")
                    for w in model.get_layer(n).weights)
    assert trainable == head_only and total > trainable

    before, bn_before = backbone_snapshot(model), _bn_stats(model)
    s1 = _run(model, strategy, toy_images, StageConfig(epochs=2, lr=1e-2, patience=5), "stage1")
    assert s1.trainable_params == head_only and s1.epochs_run == 2
    for a, b in zip(before, backbone_snapshot(model)):
        np.testing.assert_array_equal(a, b)  # frozen: bit-for-bit identical

    set_backbones_trainable(model, True)
    bb = model.get_layer("depth_rgb_backbone")
    assert all(not l.trainable for l in bb.layers if isinstance(l, keras.layers.BatchNormalization))
    assert count_params(model)[0] > head_only
    before = backbone_snapshot(model)
    s2 = _run(model, strategy, toy_images, StageConfig(epochs=2, lr=1e-3, patience=5), "stage2")
    change = relative_change(before, backbone_snapshot(model))
    assert s2.trainable_params > s1.trainable_params
    assert change > 1e-4, change  # the backbone moved
    for a, b in zip(bn_before, _bn_stats(model)):
        np.testing.assert_array_equal(a, b)  # BatchNorm statistics untouched (inference mode)


def test_unfreeze_top_n_layers(tiny_cfg):
    model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    set_backbones_trainable(model, True, unfreeze_top=1)
    bb = model.get_layer("depth_rgb_backbone")
    trainable = [l.name for l in bb.layers if l.trainable and l.weights]
    weighted_non_bn = [l.name for l in bb.layers if l.weights and not isinstance(l, keras.layers.BatchNormalization)]
    assert len(trainable) == 1 and trainable[0] in weighted_non_bn


def test_best_epoch_is_restored_and_recorded(tiny_cfg, strategy, toy_images):
    with strategy.scope():
        model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    result = _run(model, strategy, toy_images, StageConfig(epochs=4, lr=1e-2, patience=10), "stage1")
    assert 1 <= result.best_epoch <= result.epochs_run == 4
    assert result.best_val_qwk == max(result.history["val_qwk"])
    # the model now holds the best epoch's weights: evaluating reproduces the best validation QWK
    x, y = toy_images
    from medfusion.training.stages import predict
    from sklearn.metrics import cohen_kappa_score
    proba = predict(model, {"depth_rgb": x[:16]}, 8)
    assert abs(cohen_kappa_score(y[:16], proba.argmax(1), weights="quadratic") - result.best_val_qwk) < 1e-5


def test_relative_change_formula():
    before = [np.ones((2, 2)), np.zeros(3)]
    after = [np.ones((2, 2)) * 1.1, np.zeros(3)]
    assert abs(relative_change(before, after) - 0.1) < 1e-12


def test_train_batchnorm_unfreezes_batchnorm_too_and_refuses_a_partial_unfreeze(tiny_cfg):
    import pytest

    model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    bb = model.get_layer("depth_rgb_backbone")
    set_backbones_trainable(model, True, train_batchnorm=True)
    assert all(l.trainable for l in bb.layers if l.weights)
    set_backbones_trainable(model, True)  # Stage 2 after a from-scratch pre-training: BatchNorm frozen again
    assert all(not l.trainable for l in bb.layers if isinstance(l, keras.layers.BatchNormalization))
    with pytest.raises(ValueError, match="unfreeze_top"):
        set_backbones_trainable(model, True, unfreeze_top=1, train_batchnorm=True)
