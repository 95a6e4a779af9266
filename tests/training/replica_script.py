"""Run by test_replicas.py in a fresh process (logical CPUs must be set before TensorFlow starts).

    python replica_script.py REPLICAS N [N ...]

For each dataset size N: one epoch of run_stage under MirroredStrategy (backbone trainable, BatchNorm
frozen), then one epoch of a frozen-backbone Stage 1 on cached features; the same two stages from the
same initial weights on one device. Prints one JSON line per size with the streamed kappa, sklearn's
kappa on the predictions, the largest difference to a single-device predict of the same weights and to
the single-device run's predictions, and the stage's val_loss next to a numpy focal loss.
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
from medfusion.training.stages import predict, run_stage, set_backbones_trainable  # noqa: E402

GAMMA = 2.0


def numpy_focal(y, p, alpha, gamma=GAMMA):
    """Mean over rows of -sum_k alpha_k y_k (1 - p_k)^gamma log p_k, p clipped as Keras clips it (1e-7)."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    onehot = np.eye(3)[y]
    return float(np.mean(np.sum(-np.asarray(alpha) * onehot * (1 - p) ** gamma * np.log(p), axis=1)))


def two_stages(strategy, weights, x, y, per_replica):
    """Stage "a" (backbone trainable, BatchNorm frozen) then Stage 1 on cached features; returns (model, results)."""
    with strategy.scope():
        model = build_fusion_model("metadata+depth_rgb", cfg, 16)
    model.set_weights(weights)
    a = run_stage("a", model, strategy, (x, y), (x, y), StageConfig(epochs=1, lr=1e-2, patience=2), equal_alpha(3),
                  GAMMA, per_replica, 0, ["flip"])
    proba_a = predict(model, x, 4, strategy.num_replicas_in_sync)
    set_backbones_trainable(model, False)
    b = run_stage("b", model, strategy, (x, y), (x, y), StageConfig(epochs=1, lr=1e-2, patience=2), equal_alpha(3),
                  GAMMA, per_replica, 1, ["flip"])
    return model, (a, proba_a, b)


mirrored = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")][:replicas])
single = tf.distribute.OneDeviceStrategy("/cpu:0")
cfg = ModelConfig(backbone="tiny", weights="none", head_units=8, dropout=0.0)
for n in sizes:
    rng = np.random.default_rng(n)
    y = rng.integers(0, 3, n)
    x = {"depth_rgb": (y[:, None, None, None] * 70 + rng.integers(0, 40, (n, 16, 16, 3))).astype(np.uint8),
         "metadata": rng.dirichlet([1, 1, 1], n).astype(np.float32)}
    keras.utils.set_random_seed(0)
    init = build_fusion_model("metadata+depth_rgb", cfg, 16).get_weights()
    model, (result, proba_a, cached) = two_stages(mirrored, init, x, y, 4)
    proba = predict(model, x, 4, replicas)
    # the model is still compiled as run_stage compiled it: the stage's own kappa metric
    streamed = model.evaluate(eval_dataset(x, y, 4 * replicas, replicas), verbose=0, return_dict=True)["qwk"]
    with single.scope():
        twin = build_fusion_model("metadata+depth_rgb", cfg, 16)
    twin.set_weights(model.get_weights())
    ref = predict(twin, x, 4)
    # one device, the batch the replicas used (4 x replicas, or less where the dataset clamped it)
    solo, (_, solo_a, _) = two_stages(single, init, x, y, result.batch)
    print(json.dumps({"n": n, "rows": len(proba), "streamed_qwk": float(streamed),
                      "sklearn_qwk": float(cohen_kappa_score(y, proba.argmax(1), labels=[0, 1, 2], weights="quadratic")),
                      "max_diff_single": float(np.abs(proba - ref).max()),
                      "max_diff_single_run": float(np.abs(proba - predict(solo, x, 4)).max()),
                      "max_diff_single_run_a": float(np.abs(proba_a - solo_a).max()),
                      "val_loss": result.history["val_loss"][0], "numpy_val_loss": numpy_focal(y, proba_a, equal_alpha(3)),
                      "cache_used": cached.feature_cache["used"], "steps": result.steps_per_epoch,
                      # fewer samples than replicas: the replicas' batch (one per replica) exceeds the dataset, which
                      # one device clamps to the dataset size, so the two runs train on different batches
                      "comparable": result.batch <= n,
                      "batch": result.batch}), flush=True)
