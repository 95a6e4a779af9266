"""Run by test_lean_checkpoint.py in a fresh process (a crash_point SIGKILLs it).

    python lean_resume_script.py CHECKPOINT_DIR OUT_NPZ

Stage 1 (frozen backbone, flips: the feature cache is on, a checkpoint every epoch) then Stage 2
(backbone unfrozen, a checkpoint every 2 epochs) of a tiny fusion model, deterministic; writes the
final weights and both StageResults to OUT_NPZ.
"""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

tf.config.experimental.enable_op_determinism()
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

from medfusion.config import ModelConfig, StageConfig  # noqa: E402
from medfusion.models.fusion import build_fusion_model  # noqa: E402
from medfusion.models.losses import focal_alpha  # noqa: E402
from medfusion.training.checkpoint import StageCheckpoint  # noqa: E402
from medfusion.training.stages import run_stage, set_backbones_trainable  # noqa: E402

logging.basicConfig(level=logging.INFO, format="%(message)s")  # the test reads the resume line
folder, out = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
y = np.arange(40) % 3
x = {"depth_rgb": (y[:, None, None, None] * 70 + rng.integers(0, 60, (40, 16, 16, 3))).astype(np.uint8),
     "metadata": rng.dirichlet([1, 1, 1], 40).astype(np.float32)}
x["depth_rgb"][:, :3, :5] = 255  # asymmetric: flips change the input
train = ({k: v[:28] for k, v in x.items()}, y[:28])
val = ({k: v[28:] for k, v in x.items()}, y[28:])
strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_fusion_model("metadata+depth_rgb", ModelConfig(backbone="tiny", weights="none", head_units=8,
                                                                 dropout=0.3), 16)
alpha = focal_alpha(train[1])
set_backbones_trainable(model, False)
s1 = run_stage("stage1", model, strategy, train, val, StageConfig(epochs=4, lr=1e-2, patience=9), alpha, 2.0, 8, 0,
               ["flip"], checkpoint=StageCheckpoint(folder / "stage1"), checkpoint_every=1)
set_backbones_trainable(model, True)
s2 = run_stage("stage2", model, strategy, train, val, StageConfig(epochs=4, lr=1e-3, patience=9), alpha, 2.0, 8, 1,
               ["flip"], checkpoint=StageCheckpoint(folder / "stage2"), checkpoint_every=2)
np.savez(out, *model.get_weights(), results=json.dumps([s1.to_dict(), s2.to_dict()]))
