"""TensorBoard event files: one folder per stage or pre-training phase, holding the epochs trained there."""

import logging

import numpy as np
import tensorflow as tf

from medfusion.config import Config, ModelConfig, PretrainConfig, TrainConfig
from medfusion.models.backbones import build_backbone
from medfusion.models.fusion import build_pretrain_model
from medfusion.training.pretrain import run_pretraining

S = 16


def _scalars(folder) -> dict:
    """tag -> [value per step] from every event file in folder (read with TensorFlow, not with Keras)."""
    out: dict = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, float(tf.make_ndarray(v.tensor))))
    return {tag: [x for _, x in sorted(vals)] for tag, vals in out.items()}


def test_each_pretraining_phase_writes_its_epochs_and_a_cached_one_writes_none(strategy, toy_images, tmp_path,
                                                                               caplog):
    weights = str(tmp_path / "tiny.weights.h5")  # any weights file: the warm-up + fine-tune recipe
    build_backbone("tiny", S, model_name="src_backbone").save_weights(weights)
    p = PretrainConfig(epochs=2, lr=1e-2, patience=5, warmup_epochs=2, warmup_lr=1e-2, finetune_lr=1e-3)
    cfg = Config(model=ModelConfig(backbone="tiny", weights=weights, head_units=8, dropout=0.0),
                 train=TrainConfig(batch_size=8, augment=(), pretrain=p))
    x, y = toy_images
    train, val = ({"depth_rgb": x}, y), ({"depth_rgb": x[:16]}, y[:16])
    board = tmp_path / "tensorboard" / "pretrain-depth_rgb" / "fold_0"
    with strategy.scope():
        model = build_pretrain_model("depth_rgb", cfg.model, S)
    result = run_pretraining("depth_rgb", model, strategy, train, val, cfg, seed=0,
                             checkpoint_dir=tmp_path / "cache", tensorboard_dir=board)
    assert sorted(p.name for p in board.iterdir()) == ["finetune", "warmup"]
    for phase, r in result.phases.items():
        train_tags, val_tags = _scalars(board / phase / "train"), _scalars(board / phase / "validation")
        np.testing.assert_allclose(train_tags["epoch_loss"], r.history["loss"], rtol=1e-5)
        np.testing.assert_allclose(val_tags["epoch_qwk"], r.history["val_qwk"], rtol=1e-5, atol=1e-6)
        assert len(val_tags["epoch_qwk"]) == r.epochs_run == 2
    before = sorted(str(p) for p in board.rglob("*"))
    with strategy.scope():
        again = build_pretrain_model("depth_rgb", cfg.model, S)
    with caplog.at_level(logging.INFO, logger="medfusion"):
        run_pretraining("depth_rgb", again, strategy, train, val, cfg, seed=0, checkpoint_dir=tmp_path / "cache",
                        tensorboard_dir=tmp_path / "tensorboard" / "second")
    assert sorted(str(p) for p in board.rglob("*")) == before
    assert not (tmp_path / "tensorboard" / "second").exists()
    assert "reused from the cache, so no TensorBoard events" in caplog.text
