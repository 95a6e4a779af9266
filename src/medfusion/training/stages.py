"""One training stage (pre-training, Stage 1, Stage 2) as data plus the function that runs it.

Each stage compiles afresh inside the strategy scope, computes its own steps_per_epoch
from its own dataset, logs its trainable parameter count, monitors validation QWK and
restores its best epoch. Freezing is explicit: backbones are frozen or unfrozen here and
nowhere else; BatchNorm layers stay frozen (and in inference mode) when unfrozen, except in
the pre-training of a from-scratch backbone (training/pretrain.py).
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medfusion.config import StageConfig
from medfusion.data.pipeline import eval_dataset, plan_batches, train_dataset
from medfusion.models.fusion import backbone_layers, fusion_layer
from medfusion.models.losses import focal_loss
from medfusion.models.metrics import CohenKappa
from medfusion.training.callbacks import BestOnMetric, EpochLog
from medfusion.runs import crash_point
from medfusion.training.checkpoint import StageCheckpoint

log = logging.getLogger("medfusion")


@dataclass
class StageResult:
    stage: str
    lr: float
    epochs_planned: int
    epochs_run: int
    best_epoch: int
    best_val_qwk: float
    start_val_qwk: float
    trainable_params: int
    total_params: int
    batch: int
    global_batch: int
    steps_per_epoch: int
    n_train: int
    n_val: int
    alpha: list
    seconds: float
    stopped_early: bool
    history: dict = field(default_factory=dict)
    backbone_change: float | None = None  # relative L2 change of backbone weights (Stage 2)
    fusion_rf_weight_start: float | None = None
    fusion_rf_weight_end: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def set_backbones_trainable(model: keras.Model, trainable: bool, unfreeze_top: int | None = None,
                            train_batchnorm: bool = False) -> None:
    """Freeze every backbone, or unfreeze it (all layers, or the top N weight-carrying non-BatchNorm ones).

    Frozen, a backbone runs fully in inference mode (models.backbones.Backbone). Unfrozen,
    BatchNorm stays frozen (inference mode, statistics fixed) unless ``train_batchnorm``: only
    the pre-training of a from-scratch backbone (weights: none) estimates its statistics; Stage 2
    and the fine-tune of pretrained weights keep them, because one fold's small batches wreck them.
    Recompile after calling this (run_stage does).
    """
    if train_batchnorm and unfreeze_top is not None:
        raise ValueError("train_batchnorm=True trains the whole backbone; it cannot be combined with unfreeze_top")
    for bb in backbone_layers(model):
        if not trainable:
            bb.trainable = False
            continue
        bb.trainable = True  # a functional model does not pass this on to its layers: set each one
        if train_batchnorm:
            for layer in bb.layers:
                layer.trainable = True  # every layer, BatchNorm included
            continue
        weighted = [layer for layer in bb.layers
                    if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)]
        chosen = set(id(layer) for layer in (weighted if unfreeze_top is None else weighted[-unfreeze_top:]))
        for layer in bb.layers:
            layer.trainable = id(layer) in chosen


def count_params(model: keras.Model) -> tuple[int, int]:
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    total = int(sum(np.prod(v.shape) for v in model.weights))
    return trainable, total


def backbone_snapshot(model: keras.Model) -> list[np.ndarray]:
    """Copies of every backbone kernel/bias (not BatchNorm statistics)."""
    out = []
    for bb in backbone_layers(model):
        for layer in bb.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                continue
            out.extend(np.array(w) for w in layer.get_weights())
    return out


def relative_change(before: list[np.ndarray], after: list[np.ndarray]) -> float:
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(after, before))
    den = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in before)
    return float(np.sqrt(num / den)) if den > 0 else float("nan")


def tensorboard_callback(log_dir: Path | str | None, stage: str) -> keras.callbacks.Callback | None:
    """keras.callbacks.TensorBoard writing per-epoch scalars (train/ and validation/) under log_dir, or None.

    Writing scalars needs the `tensorboard` package (TensorFlow 2.21 no longer installs it): without
    it the stage trains as usual and the log says how to get the event files.
    """
    if log_dir is None:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("  [%s] no TensorBoard event files: the tensorboard package is not installed "
                    "(pip install tensorboard)", stage)
        return None
    log.info("  [%s] TensorBoard event files: %s", stage, log_dir)
    return keras.callbacks.TensorBoard(log_dir=str(log_dir), histogram_freq=0, write_graph=False,
                                       update_freq="epoch", profile_batch=0)


def run_stage(stage: str, model: keras.Model, strategy: tf.distribute.Strategy, train: tuple, val: tuple,
              cfg: StageConfig, alpha, gamma: float, per_replica_batch: int, seed: int,
              augment: bool, checkpoint: StageCheckpoint | None = None,
              tensorboard_dir: Path | str | None = None) -> StageResult:
    """Compile and fit one stage; the model ends holding its best-epoch weights.

    With a checkpoint, a finished stage is loaded instead of trained, and an interrupted
    one continues from its last completed epoch (weights, optimizer, early-stopping state).
    With tensorboard_dir, the epochs trained here are written there as TensorBoard event files.
    """
    (x_train, y_train), (x_val, y_val) = train, val
    if checkpoint is not None and (done := checkpoint.completed()) is not None:
        checkpoint.load_final(model)
        result = StageResult(**done)
        log.info("  [%s] already completed in an earlier attempt: loaded its weights (best epoch %d, val QWK %.4f)%s",
                 stage, result.best_epoch, result.best_val_qwk,
                 "" if tensorboard_dir is None else "; no new TensorBoard events (nothing trained now)")
        return result
    plan = plan_batches(len(y_train), per_replica_batch, strategy.num_replicas_in_sync)
    if plan.clamped:
        log.info("  [%s] batch %d clamped to the dataset size %d", stage, plan.global_batch, plan.batch)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr),
                      loss=focal_loss(alpha, gamma),
                      # weighted: the rows eval_dataset pads for replicas carry weight 0 and are never counted
                      weighted_metrics=[CohenKappa(num_classes=3, weighting="quadratic", name="qwk"), "accuracy"])
    trainable, total = count_params(model)
    log.info("  [%s] lr=%g epochs<=%d patience=%d trainable params %d of %d (%.1f%%); n_train=%d n_val=%d "
             "global batch %d, steps_per_epoch %d; alpha=%s", stage, cfg.lr, cfg.epochs, cfg.patience, trainable,
             total, 100.0 * trainable / max(total, 1), len(y_train), len(y_val), plan.batch,
             plan.steps_per_epoch, np.round(np.asarray(alpha), 3).tolist())
    val_ds = eval_dataset(x_val, y_val, plan.batch, strategy.num_replicas_in_sync)
    fusion = fusion_layer(model)
    best = BestOnMetric("val_qwk", cfg.patience)
    epoch_log = EpochLog(stage, cfg.epochs, cfg.lr, fusion)
    progress = checkpoint.progress() if checkpoint is not None else None
    initial_epoch, seconds_before = 0, 0.0
    if progress is not None:
        with strategy.scope():  # the optimizer's slots are created here, under the strategy
            best_weights = checkpoint.restore_progress(model)
        best.restore(progress["best"], best_weights)
        epoch_log.history = progress["history"]
        initial_epoch, seconds_before = progress["epoch"], progress["seconds"]
        start_qwk, w_start = progress["start_val_qwk"], progress["fusion_rf_weight_start"]
        log.info("  [%s] resuming after epoch %d (best epoch %d, val QWK %.4f, patience used %d)", stage,
                 initial_epoch, best.best_epoch, best.best, best.wait)
    else:
        start_qwk = float(model.evaluate(val_ds, verbose=0, return_dict=True)["qwk"])
        w_start = fusion.rf_weight() if fusion is not None else None
    callbacks = [best, epoch_log]
    if checkpoint is not None:
        callbacks.append(SaveProgress(checkpoint, best, epoch_log, start_qwk, w_start, seconds_before))
    board = tensorboard_callback(tensorboard_dir, stage)
    if board is not None:
        callbacks.append(board)
    t0 = time.time()
    if initial_epoch < cfg.epochs and not (progress or {}).get("stopped", False):
        model.fit(train_dataset(x_train, y_train, plan, seed, augment, start_step=initial_epoch * plan.steps_per_epoch),
                  steps_per_epoch=plan.steps_per_epoch, initial_epoch=initial_epoch, epochs=cfg.epochs,
                  validation_data=val_ds, callbacks=callbacks, verbose=0,
                  shuffle=False)  # the dataset shuffles itself
    else:  # the interrupted attempt had already finished its epochs: only the restore is left
        best.set_model(model)
        best.on_train_end()
    seconds = seconds_before + time.time() - t0
    result = StageResult(
        stage=stage, lr=cfg.lr, epochs_planned=cfg.epochs, epochs_run=len(epoch_log.history.get("loss", [])),
        best_epoch=best.best_epoch, best_val_qwk=float(best.best), start_val_qwk=float(start_qwk),
        trainable_params=trainable, total_params=total, batch=plan.batch, global_batch=plan.global_batch,
        steps_per_epoch=plan.steps_per_epoch, n_train=len(y_train), n_val=len(y_val),
        alpha=[float(a) for a in alpha], seconds=round(seconds, 2), stopped_early=best.stopped_early,
        history=epoch_log.history, fusion_rf_weight_start=w_start,
        fusion_rf_weight_end=fusion.rf_weight() if fusion is not None else None)
    log.info("  [%s] done: best epoch %d of %d, val QWK %.4f (start %.4f), %.1fs%s", stage, result.best_epoch,
             result.epochs_run, result.best_val_qwk, result.start_val_qwk, seconds,
             "" if fusion is None else f", forest weight {w_start:.3f} -> {result.fusion_rf_weight_end:.3f}")
    if checkpoint is not None:
        checkpoint.save_final(model, result.to_dict())
    return result


class SaveProgress(keras.callbacks.Callback):
    """After every epoch, everything needed to continue the stage from the next one."""

    def __init__(self, checkpoint: StageCheckpoint, best: BestOnMetric, epoch_log: EpochLog, start_qwk: float,
                 w_start, seconds_before: float):
        super().__init__()
        self.checkpoint, self.best, self.epoch_log = checkpoint, best, epoch_log
        self.start_qwk, self.w_start, self.t0 = start_qwk, w_start, time.time() - seconds_before

    def on_epoch_end(self, epoch, logs=None):
        info = {"epoch": epoch + 1, "best": self.best.state(), "history": self.epoch_log.history,
                "start_val_qwk": self.start_qwk, "fusion_rf_weight_start": self.w_start,
                "stopped": bool(self.model.stop_training), "seconds": time.time() - self.t0}
        self.checkpoint.save_progress(self.model, info, self.best.best_weights)
        crash_point("epoch")
        crash_point(f"epoch_{self.checkpoint.folder.name}")  # e.g. epoch_stage2: after a Stage 2 epoch


def predict(model: keras.Model, inputs: dict, batch: int, replicas: int = 1) -> np.ndarray:
    """Probabilities for every row of `inputs`, in order (rows padded for replicas are dropped)."""
    n = len(next(iter(inputs.values())))
    out = model.predict(eval_dataset(inputs, None, batch, replicas), verbose=0)
    return np.asarray(out, dtype=np.float64)[:n]
