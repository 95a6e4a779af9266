"""Cohen's kappa as a streaming Keras metric, and the sklearn scores reported per fold.

Early stopping monitors validation kappa because a degenerate one-class predictor scores 0
there, while its accuracy or loss can still look acceptable.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from medfusion.constants import CLASSES


@keras.saving.register_keras_serializable(package="medfusion")
class CohenKappa(keras.metrics.Metric):
    """Cohen's kappa from a streamed (K, K) confusion matrix (rows: true, columns: predicted).

    The matrix is a float variable with aggregation "sum", so per-replica counts add up under
    tf.distribute.MirroredStrategy. When the expected disagreement is zero (e.g. truth and
    prediction are both a single class) kappa is undefined; sklearn returns nan there by default,
    this metric returns 0 so early stopping never sees nan.
    """

    def __init__(self, num_classes: int = 3, weighting: str = "quadratic", name: str = "cohen_kappa", dtype=None, **kwargs):
        super().__init__(name=name, dtype=dtype, **kwargs)
        if weighting not in ("quadratic", "none"):
            raise ValueError(f"weighting must be 'quadratic' or 'none', got {weighting!r}")
        self.num_classes = int(num_classes)
        self.weighting = weighting
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="float32",
            aggregation="sum", name="confusion_matrix",
        )
        k = self.num_classes
        i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        if weighting == "quadratic":
            self._weights = ((i - j) ** 2 / max((k - 1) ** 2, 1)).astype("float32")
        else:
            self._weights = (i != j).astype("float32")

    def update_state(self, y_true, y_pred, sample_weight=None):
        k = self.num_classes
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == k and k > 1:
            t = ops.argmax(y_true, axis=-1)  # one-hot
        else:
            t = ops.cast(ops.reshape(y_true, (-1,)), "int32")  # integer labels
        p = ops.argmax(y_pred, axis=-1)
        t = ops.one_hot(ops.reshape(t, (-1,)), k, dtype="float32")
        p = ops.one_hot(ops.reshape(p, (-1,)), k, dtype="float32")
        if sample_weight is not None:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1, 1))
            t = t * w
        self.confusion.assign_add(ops.matmul(ops.transpose(t), p))

    def result(self):
        c = ops.convert_to_tensor(self.confusion)
        w = ops.convert_to_tensor(self._weights)
        n = ops.sum(c)
        expected = ops.outer(ops.sum(c, axis=1), ops.sum(c, axis=0)) / ops.maximum(n, 1e-12)
        observed_d = ops.sum(w * c)
        expected_d = ops.sum(w * expected)
        safe = ops.where(expected_d > 0, expected_d, 1.0)
        return ops.where(expected_d > 0, 1.0 - observed_d / safe, 0.0)

    def reset_state(self):
        self.confusion.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "weighting": self.weighting})
        return config


def score_predictions(y_true, proba, rule: dict | None = None) -> dict:
    """Fold scores of the rule's decisions (argmax by default); labels=[0, 1, 2] so absent classes count as 0."""
    from medfusion.evaluation.decisions import decide

    y = np.asarray(y_true)
    proba = np.asarray(proba)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    y = y.astype(int)
    pred = decide(proba, rule)
    labels = list(range(len(CLASSES)))
    per_class = f1_score(y, pred, labels=labels, average=None, zero_division=0)
    out = {
        "qwk": float(cohen_kappa_score(y, pred, labels=labels, weights="quadratic", replace_undefined_by=0.0)),
        "kappa": float(cohen_kappa_score(y, pred, labels=labels, replace_undefined_by=0.0)),
        "accuracy": float(accuracy_score(y, pred)),
        "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
    }
    for i, name in enumerate(CLASSES):
        out[f"f1_{name}"] = float(per_class[i])
    return out
