import keras
import numpy as np
import pytest

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


@pytest.mark.parametrize("top", [1, 2])
def test_unfreeze_top_n_layers(tiny_cfg, top):
    model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    set_backbones_trainable(model, True, unfreeze_top=top)
    bb = model.get_layer("depth_rgb_backbone")
    # computed here, independently: walk the backbone's layers in order, keep those that own weights and
    # are not BatchNorm, take the last `top` of them
    weighted_non_bn = []
    for layer in bb.layers:
        if len(layer.weights) > 0 and type(layer).__name__ != "BatchNormalization":
            weighted_non_bn.append(layer.name)
    assert len(weighted_non_bn) > top  # otherwise "the top N" is "all" and the test cannot tell
    expected = weighted_non_bn[len(weighted_non_bn) - top:]
    trainable = [l.name for l in bb.layers if l.trainable and l.weights]
    assert trainable == expected
    # and nothing else in the backbone trains: BatchNorm stays frozen, the lower layers too
    n_expected = sum(int(np.prod(w.shape)) for name in expected for w in bb.get_layer(name).trainable_weights)
    assert sum(int(np.prod(w.shape)) for w in bb.trainable_weights) == n_expected


class _ScriptedQWK(keras.callbacks.Callback):
    """Placed first in run_stage's callback list: overwrites the epoch's val_qwk with a scripted value
    (BestOnMetric and EpochLog read the same logs dict after it) and snapshots the weights."""

    script = [0.2, 0.6, 0.4, 0.3, 0.1, 0.1]

    def __init__(self):
        super().__init__()
        self.snapshots = []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_qwk"] = self.script[epoch]
        self.snapshots.append([np.array(w) for w in self.model.get_weights()])


def test_scripted_validation_qwk_best_epoch_early_stop_and_restore(tiny_cfg, strategy, toy_images, monkeypatch):
    scripted = _ScriptedQWK()
    real_fit = keras.Model.fit

    def fit(self, *args, callbacks=None, **kwargs):
        return real_fit(self, *args, callbacks=[scripted, *(callbacks or [])], **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    with strategy.scope():
        model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    result = _run(model, strategy, toy_images, StageConfig(epochs=6, lr=1e-2, patience=2), "stage1")
    # [.2, .6, .4, .3]: best epoch 2; epochs 3 and 4 do not improve -> patience 2 stops after epoch 4
    assert len(scripted.snapshots) == 4
    assert result.epochs_run == 4 and result.stopped_early
    assert result.best_epoch == 2 and result.best_val_qwk == pytest.approx(0.6)
    assert result.history["val_qwk"] == pytest.approx([0.2, 0.6, 0.4, 0.3])
    # the model holds epoch 2's weights, not the last epoch's
    epoch2, epoch4 = scripted.snapshots[1], scripted.snapshots[3]
    assert any(not np.array_equal(a, b) for a, b in zip(epoch2, epoch4))  # training moved the weights
    for a, b in zip(epoch2, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_patience_below_the_budget_with_no_improvement_stops_and_keeps_epoch_1(tiny_cfg, strategy, toy_images,
                                                                             monkeypatch):
    scripted = _ScriptedQWK()
    scripted.script = [0.5, 0.5, 0.4, 0.9, 0.9]  # equal is not better (min_delta): stops after epoch 3
    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, callbacks=None, **k: real_fit(
        self, *a, callbacks=[scripted, *(callbacks or [])], **k))
    with strategy.scope():
        model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    result = _run(model, strategy, toy_images, StageConfig(epochs=5, lr=1e-2, patience=2), "stage1")
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (3, 1, True)
    for a, b in zip(scripted.snapshots[0], model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_restored_best_epoch_reproduces_its_recorded_qwk(tiny_cfg, strategy, toy_images):
    """The recorded best validation QWK is what sklearn computes from the restored model's predictions."""
    from sklearn.metrics import cohen_kappa_score

    from medfusion.training.stages import predict

    with strategy.scope():
        model = build_fusion_model("depth_rgb", tiny_cfg, 16)
    result = _run(model, strategy, toy_images, StageConfig(epochs=3, lr=1e-2, patience=10), "stage1")
    x, y = toy_images
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
