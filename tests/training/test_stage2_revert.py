"""Stage 2 is kept only if its selection QWK beats Stage 1's; otherwise the model goes back to Stage 1's weights
(README "Training"; jobs._stage2). The selection QWK of Stage 2 is scripted, so the decision is known in advance."""

from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from medfusion.config import load_config, replace
from medfusion.models.fusion import build_fusion_model
from medfusion.models.losses import equal_alpha
from medfusion.training.checkpoint import StageCheckpoint

ROOT = Path(__file__).resolve().parents[2]


class _Scripted(keras.callbacks.Callback):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs=None):
        logs["val_qwk"] = self.values[epoch]


@pytest.mark.parametrize("stage2_qwk,kept", [([0.3, 0.55], True), ([0.3, 0.5], False), ([0.2, 0.1], False)])
def test_stage2_kept_only_when_it_beats_stage1(tmp_path, monkeypatch, toy_images, strategy, stage2_qwk, kept):
    from medfusion import jobs

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    cfg = replace(cfg, "model.head_units", 8)
    cfg = replace(cfg, "train.stage2", replace(cfg.train.stage2, "epochs", 2))
    cfg = replace(cfg, "train.stage2", replace(cfg.train.stage2, "lr", 1e-2))
    cfg = replace(cfg, "train.stage2", replace(cfg.train.stage2, "patience", 5))
    x, y = toy_images
    with strategy.scope():
        model = build_fusion_model("depth_rgb", cfg.model, 16)
    ckpt_dir = tmp_path / "checkpoints" / "depth_rgb" / "fold_0"
    s1_ckpt = StageCheckpoint(ckpt_dir / "stage1")
    s1_ckpt.save_final(model, {"stage": "stage1"})
    stage1_weights = [np.array(w) for w in model.get_weights()]
    s1 = SimpleNamespace(best_val_qwk=0.5)  # Stage 1's selection QWK; Stage 2 must beat it strictly

    real_fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, callbacks=None, **k: real_fit(
        self, *a, callbacks=[_Scripted(stage2_qwk), *(callbacks or [])], **k))
    ctx = SimpleNamespace(cfg=cfg, strategy=strategy, run_dir=tmp_path)
    job = {"stages": {}}
    out = jobs._stage2(ctx, model, ckpt_dir, ({"depth_rgb": x}, y), ({"depth_rgb": x[:16]}, y[:16]), equal_alpha(3),
                       0, s1, s1_ckpt, job)
    assert job["stage2_kept"] is kept
    assert job["stages"]["stage2"]["best_val_qwk"] == pytest.approx(max(stage2_qwk))
    after = model.get_weights()
    same = all(np.array_equal(a, b) for a, b in zip(stage1_weights, after))
    assert same is (not kept)  # reverted: bit-for-bit Stage 1; kept: Stage 2 moved the weights
    if not kept:
        assert out is None
