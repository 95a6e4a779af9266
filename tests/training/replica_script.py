"""Run by test_replicas.py in a fresh process (logical CPUs must be set before TensorFlow starts).

    python replica_script.py REPLICAS N [N ...]

For each dataset size N: one epoch of run_stage under MirroredStrategy, then evaluate and
predict; prints one JSON line per size with the streamed kappa, sklearn's kappa on the
predictions, and the largest difference to a single-device predict of the same weights.
"""

import json
import sys

import numpy as np
import tensorflow as tf

replicas, sizes = int(sys.argv[1]), [int(a) for a in sys.argv[2:]]
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)

import keras  # noqa: E402
from sklearn.metrics import cohen_kappa_score  # noqa: E402

from medfusion.config import ModelConfig, StageConfig  # noqa: E402
from medfusion.data.pipeline import eval_dataset  # noqa: E402
from medfusion.models.fusion import build_fusion_model  # noqa: E402
from medfusion.models.losses import equal_alpha  # noqa: E402
from medfusion.training.stages import predict, run_stage  # noqa: E402

mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")][:replicas])
single = tf.distribute.OneDeviceStrategy("/cpu:0")
cfg = ModelConfig(backbone="tiny", weights="none", head_units=8, dropout=0.0)
for n in sizes:
    rng = np.random.default_rng(n)
    y = rng.integers(0, 3, n)
    x = {"depth_rgb": (y[:, None, None, None] * 70 + rng.integers(0, 40, (n, 16, 16, 3))).astype(np.uint8),
         "metadata": rng.dirichlet([1, 1, 1], n).astype(np.float32)}
    keras.utils.set_random_seed(0)
    with mirrored.scope():
        model = build_fusion_model("metadata+depth_rgb", cfg, 16)
    result = run_stage("stage1", model, mirrored, (x, y), (x, y), StageConfig(epochs=1, lr=1e-2, patience=2),
                       equal_alpha(3), 2.0, 4, 0, ["flip"])
    proba = predict(model, x, 4, replicas)
    # the model is still compiled as run_stage compiled it: the stage's own kappa metric
    streamed = model.evaluate(eval_dataset(x, y, 4 * replicas, replicas), verbose=0, return_dict=True)["qwk"]
    with single.scope():
        twin = build_fusion_model("metadata+depth_rgb", cfg, 16)
    twin.set_weights(model.get_weights())
    ref = predict(twin, x, 4)
    print(json.dumps({"n": n, "rows": len(proba), "streamed_qwk": float(streamed),
                      "sklearn_qwk": float(cohen_kappa_score(y, proba.argmax(1), labels=[0, 1, 2], weights="quadratic")),
                      "max_diff_single": float(np.abs(proba - ref).max()), "steps": result.steps_per_epoch,
                      "batch": result.batch}), flush=True)
