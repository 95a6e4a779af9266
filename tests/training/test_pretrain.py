"""The pre-training recipe: warm-up on a frozen backbone then fine-tune (pretrained weights), or one
from-scratch phase that trains BatchNorm (weights: none); BatchNorm fixed afterwards in Stage 1/2."""

import keras
import numpy as np
import pytest

from medfusion.config import Config, ConfigError, ModelConfig, PretrainConfig, StageConfig, TrainConfig, load_config
from medfusion.models.backbones import build_backbone
from medfusion.models.fusion import build_fusion_model, build_pretrain_model
from medfusion.models.losses import equal_alpha
from medfusion.training.checkpoint import StageCheckpoint
from medfusion.training.pretrain import PretrainResult, pretrain_phases, run_pretraining
from medfusion.training.stages import backbone_snapshot, count_params, run_stage, set_backbones_trainable
from medfusion.training.transfer import transfer_weights

S = 16


def _cfg(weights="none", **pretrain):
    p = PretrainConfig(**{"epochs": 2, "lr": 1e-2, "patience": 5, "warmup_epochs": 2, "warmup_lr": 1e-2,
                          "finetune_lr": 1e-3, **pretrain})
    model = ModelConfig(backbone="tiny", weights=weights, head_units=8, dropout=0.0)
    return Config(model=model, train=TrainConfig(batch_size=8, augment=(), pretrain=p))


def _bn_stats(model, modality="depth_rgb"):
    bb = model.get_layer(f"{modality}_backbone")
    return [keras.ops.convert_to_numpy(v).copy() for layer in bb.layers
            if isinstance(layer, keras.layers.BatchNormalization) for v in (layer.moving_mean, layer.moving_variance)]


def _head_params(model):
    return sum(int(np.prod(w.shape)) for n in ("depth_rgb_dense", "output") for w in model.get_layer(n).weights)


def _data(toy_images):
    x, y = toy_images
    return ({"depth_rgb": x}, y), ({"depth_rgb": x[:16]}, y[:16])


@pytest.fixture
def tiny_weights_file(tmp_path):
    """Stands in for pretrained weights: any weights file makes the transfer recipe apply."""
    path = str(tmp_path / "tiny_pretrained.weights.h5")
    build_backbone("tiny", S, model_name="src_backbone").save_weights(path)
    return path


def test_phases_follow_the_weights():
    assert [n for n, _ in pretrain_phases(_cfg("none"))] == ["scratch"]
    phases = dict(pretrain_phases(_cfg("imagenet")))
    assert list(phases) == ["warmup", "finetune"]
    assert phases["warmup"] == StageConfig(epochs=2, lr=1e-2, patience=5)
    assert phases["finetune"] == StageConfig(epochs=2, lr=1e-3, patience=5)
    assert [n for n, _ in pretrain_phases(_cfg("imagenet", warmup_epochs=0))] == ["finetune"]
    with pytest.raises(ValueError, match="no epochs"):
        pretrain_phases(_cfg("imagenet", warmup_epochs=0, epochs=0))


def test_config_reads_and_checks_the_pretrain_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  pretrain: {epochs: 3, lr: 0.001, patience: 2, warmup_epochs: 4, finetune_lr: 2e-5}\n")
    cfg = load_config(path)
    assert cfg.train.pretrain.warmup_epochs == 4 and cfg.train.pretrain.finetune_lr == 2e-5
    assert cfg.train.pretrain.warmup_lr == PretrainConfig().warmup_lr
    with pytest.raises(ConfigError, match="train.pretrain.warmup_epochs"):
        load_config(None, {"train.pretrain.warmup_epochs": -1})
    with pytest.raises(ConfigError, match="train.pretrain.finetune_lr"):
        load_config(None, {"train.pretrain.finetune_lr": 0})


def test_warmup_trains_only_the_head_then_finetune_the_backbone(tiny_weights_file, strategy, toy_images):
    cfg = _cfg(tiny_weights_file)
    with strategy.scope():
        model = build_pretrain_model("depth_rgb", cfg.model, S)
    bn0 = _bn_stats(model)
    train, val = _data(toy_images)
    result = run_pretraining("depth_rgb", model, strategy, train, val, cfg, seed=0)
    warm, fine = result.phases["warmup"], result.phases["finetune"]
    assert result.recipe == "warmup+finetune" and list(result.phases) == ["warmup", "finetune"]
    assert warm.trainable_params == _head_params(model)  # head only
    assert warm.backbone_change == 0.0 and warm.lr == 1e-2
    assert fine.trainable_params > warm.trainable_params and fine.lr == 1e-3
    assert fine.backbone_change > 0.0
    for a, b in zip(bn0, _bn_stats(model)):  # pretrained statistics never move, in either phase
        np.testing.assert_array_equal(a, b)
    record = result.to_dict()
    assert record["stage"] == "pretrain depth_rgb finetune" and set(record["phases"]) == {"warmup", "finetune"}
    assert record["phases"]["warmup"]["trainable_params"] == warm.trainable_params
    assert record["final_phase"] == ("finetune" if result.finetune_kept else "warmup")


def test_finetune_that_does_not_beat_warmup_is_reverted(tiny_weights_file, strategy, toy_images, tmp_path):
    cfg = _cfg(tiny_weights_file, finetune_lr=1e-9)  # a fine-tune that cannot improve anything
    with strategy.scope():
        model = build_pretrain_model("depth_rgb", cfg.model, S)
    train, val = _data(toy_images)
    result = run_pretraining("depth_rgb", model, strategy, train, val, cfg, seed=0, checkpoint_dir=tmp_path / "ck")
    assert result.finetune_kept is False and result.final_phase == "warmup"
    assert result.best_val_qwk == result.phases["warmup"].best_val_qwk
    with strategy.scope():
        warm = build_pretrain_model("depth_rgb", cfg.model, S)
    StageCheckpoint(tmp_path / "ck" / "warmup").load_final(warm)
    for u, v in zip(warm.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(u, v)  # the model holds the warm-up's weights again


def test_from_scratch_batchnorm_trains_in_pretraining_and_stays_fixed_in_stages(tiny_cfg, strategy, toy_images):
    cfg = _cfg("none")
    with strategy.scope():
        pre = build_pretrain_model("depth_rgb", cfg.model, S)
    bn0 = _bn_stats(pre)
    train, val = _data(toy_images)
    result = run_pretraining("depth_rgb", pre, strategy, train, val, cfg, seed=0)
    bn_layers = [l for l in pre.get_layer("depth_rgb_backbone").layers if isinstance(l, keras.layers.BatchNormalization)]
    assert result.recipe == "scratch" and all(l.trainable for l in bn_layers)
    stats = sum(int(np.prod(v.shape)) for l in bn_layers for v in (l.moving_mean, l.moving_variance))
    normalize = sum(int(np.prod(v.shape)) for v in pre.get_layer("depth_rgb_backbone").get_layer("tiny_normalize").weights)
    assert result.phases["scratch"].trainable_params == count_params(pre)[1] - stats - normalize  # gamma/beta train
    bn1 = _bn_stats(pre)
    assert all(not np.array_equal(a, b) for a, b in zip(bn0, bn1))  # statistics estimated on the data

    with strategy.scope():
        fusion = build_fusion_model("depth_rgb", cfg.model, S)
    assert transfer_weights(pre, fusion).ok
    for a, b in zip(bn1, _bn_stats(fusion)):
        np.testing.assert_array_equal(a, b)
    for stage, trainable in (("stage1", False), ("stage2", True)):
        set_backbones_trainable(fusion, trainable)
        run_stage(stage, fusion, strategy, train, val, StageConfig(epochs=1, lr=1e-3, patience=2), equal_alpha(3),
                  2.0, 8, seed=0, augment=False)
        for a, b in zip(bn1, _bn_stats(fusion)):
            np.testing.assert_array_equal(a, b)  # fixed in Stage 1 and Stage 2


def test_finished_pretraining_is_loaded_not_redone(tiny_weights_file, strategy, toy_images, tmp_path):
    cfg = _cfg(tiny_weights_file, epochs=1, warmup_epochs=1)
    train, val = _data(toy_images)
    with strategy.scope():
        a = build_pretrain_model("depth_rgb", cfg.model, S)
    first = run_pretraining("depth_rgb", a, strategy, train, val, cfg, seed=0, checkpoint_dir=tmp_path / "ck")
    assert (tmp_path / "ck" / "warmup" / "done.json").is_file() and (tmp_path / "ck" / "done.json").is_file()
    with strategy.scope():
        b = build_pretrain_model("depth_rgb", cfg.model, S)
    again = run_pretraining("depth_rgb", b, strategy, train, val, cfg, seed=0, checkpoint_dir=tmp_path / "ck")
    assert again.to_dict() == first.to_dict()
    for u, v in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(u, v)
    assert PretrainResult.from_dict(first.to_dict()).to_dict() == first.to_dict()


def test_a_done_file_that_is_no_pretraining_record_is_named(tiny_cfg, strategy, toy_images, tmp_path):
    from medfusion.training.checkpoint import CheckpointError, save_arrays

    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "done.json").write_text('{"best_epoch": 3}')
    save_arrays(tmp_path / "ck" / "final.npz", {"model": []})
    with strategy.scope():
        model = build_pretrain_model("depth_rgb", tiny_cfg, S)
    train, val = _data(toy_images)
    with pytest.raises(CheckpointError, match="not a pre-training record"):
        run_pretraining("depth_rgb", model, strategy, train, val, _cfg(), seed=0, checkpoint_dir=tmp_path / "ck")
