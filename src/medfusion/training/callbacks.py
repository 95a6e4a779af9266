"""Callbacks: best-epoch tracking on validation kappa, and per-epoch log lines."""

from __future__ import annotations

import logging
import math

import keras

log = logging.getLogger("medfusion")


class BestOnMetric(keras.callbacks.Callback):
    """Early stopping + restore-best on a validation metric (default val_qwk).

    Written out instead of keras.callbacks.EarlyStopping so the best epoch is always
    restored (also when the epoch budget ends first) and recorded for the logs.
    """

    def __init__(self, monitor: str = "val_qwk", patience: int = 5, min_delta: float = 1e-4):
        super().__init__()
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best = -math.inf
        self.best_epoch = 0  # 1-based; 0 = no epoch run
        self.best_weights = None
        self.wait = 0
        self.stopped_early = False

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise KeyError(f"metric {self.monitor!r} not in the epoch logs {sorted(logs or {})}")
        value = float(value)
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch + 1, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_early = True
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def state(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait, "stopped_early": self.stopped_early}

    def restore(self, state: dict, best_weights) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.wait, self.stopped_early = int(state["wait"]), bool(state["stopped_early"])
        self.best_weights = list(best_weights) if best_weights is not None else None


class EpochLog(keras.callbacks.Callback):
    """One line per epoch into the fold log (and the console at verbosity >= 1); keeps the history."""

    def __init__(self, stage: str, epochs: int, lr: float, fusion_layer=None):
        super().__init__()
        self.stage, self.epochs, self.lr, self.fusion_layer = stage, epochs, lr, fusion_layer
        self.history: dict[str, list] = {}

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        logs["lr"] = self.lr
        if self.fusion_layer is not None:
            logs["fusion_rf_weight"] = self.fusion_layer.rf_weight()
        for k, v in logs.items():
            self.history.setdefault(k, []).append(float(v))
        shown = " ".join(f"{k}={float(logs[k]):.4f}" for k in
                         ("loss", "qwk", "accuracy", "val_loss", "val_qwk", "val_accuracy", "fusion_rf_weight") if k in logs)
        log.info("    [%s] epoch %d/%d %s", self.stage, epoch + 1, self.epochs, shown)
