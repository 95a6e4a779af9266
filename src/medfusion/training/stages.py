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
from medfusion.stopping import crash_point
from medfusion.training import feature_cache
from medfusion.training.checkpoint import (CheckpointError, StageCheckpoint, assign, changing_weights,
                                           frozen_fingerprint)

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
    feature_cache: dict | None = None  # {"used", "reason", "seconds", "estimated_saved_seconds"}
    jit_compile: bool | None = None  # XLA as passed to compile
    checkpoint: dict | None = None  # per-epoch checkpoints of this attempt: every, saves, bytes_total, bytes_per_save

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


def _compile(model: keras.Model, strategy, cfg: StageConfig, alpha, gamma: float, jit: bool) -> None:
    """Adam + focal loss + weighted metrics; XLA passed explicitly (Keras drops `auto` under a strategy scope)."""
    metrics = [CohenKappa(num_classes=3, weighting="quadratic", name="qwk"), "accuracy"]
    if strategy.num_replicas_in_sync > 1:
        # the loss tracker averages batch losses by batch size, pad rows included: this weighted mean does not
        metrics.append(keras.metrics.MeanMetricWrapper(per_sample_focal(alpha, gamma), name=EXACT_LOSS))
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.lr), loss=focal_loss(alpha, gamma),
                      # weighted: the rows eval_dataset pads for replicas carry weight 0 and are never counted
                      weighted_metrics=metrics, jit_compile=jit)


def per_sample_focal(alpha, gamma: float):
    """The stage's focal loss per row (no reduction), for the weighted validation loss under replicas."""
    loss = keras.losses.CategoricalFocalCrossentropy(alpha=[float(a) for a in alpha], gamma=float(gamma),
                                                     reduction=None)
    return lambda y_true, y_pred: loss(y_true, y_pred)


EXACT_LOSS = "loss_exact"  # metric name of the weighted loss; ExactValLoss puts it in val_loss


class ExactValLoss(keras.callbacks.Callback):
    """First callback: val_loss := the weighted mean over real rows (Keras' own counts the weight-0 pad rows)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and f"val_{EXACT_LOSS}" in logs:
            logs["val_loss"] = logs.pop(f"val_{EXACT_LOSS}")
            logs.pop(EXACT_LOSS, None)


def _resolve_jit(jit_compile) -> bool:
    if jit_compile is not None:
        return bool(jit_compile)
    from medfusion.training.precision import _gpu_capabilities, resolve_jit

    return resolve_jit("auto", _gpu_capabilities())


def _prepare_cache(stage, model, strategy, train, val, plan, augment, use_cache: bool):
    """(CachePlan, CachedData or None): the features of a frozen-backbone stage, computed once."""
    cache = feature_cache.plan(model, augment) if use_cache else feature_cache.CachePlan(False, "off (run_stage caller)")
    if not cache.use:
        if backbone_layers(model) and not any(bb.trainable for bb in backbone_layers(model)):
            log.info("  [%s] feature cache off: %s", stage, cache.reason)
        return cache, None
    data = feature_cache.build(model, cache, train[0], val[0], plan.batch, strategy)
    log.info("  [%s] feature cache on (%s): pooled backbone outputs of %s computed once in %.1fs", stage,
             cache.reason, ", ".join(cache.modalities), data.seconds)
    return cache, data


def run_stage(stage: str, model: keras.Model, strategy: tf.distribute.Strategy, train: tuple, val: tuple,
              cfg: StageConfig, alpha, gamma: float, per_replica_batch: int, seed: int,
              augment, checkpoint: StageCheckpoint | None = None,
              tensorboard_dir: Path | str | None = None, checkpoint_every: int = 1, jit_compile: bool | None = None,
              use_feature_cache: bool = True) -> StageResult:
    """Compile and fit one stage; the model ends holding its best-epoch weights.

    With a checkpoint, a finished stage is loaded instead of trained, and an interrupted
    one continues from its last checkpointed epoch (weights, optimizer, early-stopping state);
    checkpoints are written every `checkpoint_every` epochs and after the last.
    With every backbone frozen and a finite augmentation the heads train on cached features
    (training/feature_cache.py). `jit_compile` (precision.configure's) goes to compile; None = auto.
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
    replicas = strategy.num_replicas_in_sync
    plan = plan_batches(len(y_train), per_replica_batch, replicas)
    if plan.clamped:
        log.info("  [%s] batch %d clamped to the dataset size %d", stage, plan.global_batch, plan.batch)
    cache, data = _prepare_cache(stage, model, strategy, train, val, plan, augment, use_feature_cache)
    trained = model if data is None else data.head  # the model fit trains (shares the variables of `model`)
    jit = _resolve_jit(jit_compile)
    _compile(trained, strategy, cfg, alpha, gamma, jit)
    trainable, total = count_params(model)
    log.info("  [%s] lr=%g epochs<=%d patience=%d trainable params %d of %d (%.1f%%); n_train=%d n_val=%d "
             "global batch %d, steps_per_epoch %d; alpha=%s; XLA %s", stage, cfg.lr, cfg.epochs, cfg.patience,
             trainable, total, 100.0 * trainable / max(total, 1), len(y_train), len(y_val), plan.batch,
             plan.steps_per_epoch, np.round(np.asarray(alpha), 3).tolist(), "on" if jit else "off")
    val_ds = (eval_dataset(x_val, y_val, plan.batch, replicas) if data is None
              else feature_cache.val_dataset(data, y_val, plan.batch, replicas))

    def stream(start_step):
        if data is None:
            return train_dataset(x_train, y_train, plan, seed, augment, start_step=start_step)
        return feature_cache.train_dataset(data.train, y_train, plan, seed, cache.variants, start_step)

    fit = _fit(stage, model, trained, strategy, cfg, val_ds, stream, plan, checkpoint, checkpoint_every,
               tensorboard_dir, cache)
    result = _result(stage, model, cfg, plan, fit, (cache, data), alpha, (trainable, total), len(y_val), jit)
    if checkpoint is not None:
        checkpoint.save_final(model, result.to_dict())
    return result


def _result(stage, model, cfg, plan, fit, cached, alpha, params, n_val, jit) -> StageResult:
    """The StageResult of a stage just fit (and the log lines on the time the feature cache saved)."""
    (cache, data), (trainable, total) = cached, params
    best, epoch_log, fusion = fit["best"], fit["epoch_log"], fusion_layer(model)
    epochs_run = len(epoch_log.history.get("loss", []))
    cache_info = {"used": cache.use, "reason": cache.reason}
    if data is not None:
        epochs_now = epochs_run - fit["initial_epoch"]
        saved = feature_cache.saved_seconds(data, cache, epochs_now, plan.steps_per_epoch, plan.batch, n_val)
        cache_info.update(seconds=round(data.seconds, 2), estimated_saved_seconds=round(saved, 2))
        log.info("  [%s] feature cache saved about %.1fs (estimated: %d epochs of backbone passes at %.2g s per "
                 "image, minus %.1fs computing the cache)", stage, saved, epochs_now, data.per_sample, data.seconds)
    result = StageResult(
        stage=stage, lr=cfg.lr, epochs_planned=cfg.epochs, epochs_run=epochs_run,
        best_epoch=best.best_epoch, best_val_qwk=float(best.best), start_val_qwk=float(fit["start_qwk"]),
        trainable_params=trainable, total_params=total, batch=plan.batch, global_batch=plan.global_batch,
        steps_per_epoch=plan.steps_per_epoch, n_train=plan.n_samples, n_val=n_val,
        alpha=[float(a) for a in alpha], seconds=round(fit["seconds"], 2), stopped_early=best.stopped_early,
        history=epoch_log.history, fusion_rf_weight_start=fit["w_start"],
        fusion_rf_weight_end=fusion.rf_weight() if fusion is not None else None,
        feature_cache=cache_info, jit_compile=jit, checkpoint=fit["checkpoint"])
    log.info("  [%s] done: best epoch %d of %d, val QWK %.4f (start %.4f), %.1fs%s", stage, result.best_epoch,
             result.epochs_run, result.best_val_qwk, result.start_val_qwk, fit["seconds"],
             "" if fusion is None else f", forest weight {fit['w_start']:.3f} -> {result.fusion_rf_weight_end:.3f}")
    return result


def _fit(stage, model, trained, strategy, cfg, val_ds, stream, plan, checkpoint, every, tensorboard_dir, cache):
    """Resume or start, fit, restore the best epoch; returns the callbacks' state and timings."""
    fusion = fusion_layer(model)
    best = LeanBest(changing_weights(trained), "val_qwk", cfg.patience)
    epoch_log = EpochLog(stage, cfg.epochs, cfg.lr, fusion)
    progress = checkpoint.progress() if checkpoint is not None else None
    initial_epoch, seconds_before = 0, 0.0
    fingerprint = frozen_fingerprint(model) if checkpoint is not None else None
    if progress is not None:
        if bool(progress.get("feature_cache")) != cache.use:
            raise CheckpointError(f"checkpoint {checkpoint.folder} was trained {'with' if progress.get('feature_cache') else 'without'} "
                                  "the Stage 1 feature cache and this attempt differs; move the folder aside")
        with strategy.scope():  # the optimizer's slots are created here, under the strategy
            best_weights = checkpoint.restore_progress(model, trained, fingerprint)
        best.restore(progress["best"], best_weights)
        epoch_log.history = progress["history"]
        initial_epoch, seconds_before = progress["epoch"], progress["seconds"]
        start_qwk, w_start = progress["start_val_qwk"], progress["fusion_rf_weight_start"]
        log.info("  [%s] resuming after epoch %d (best epoch %d, val QWK %.4f, patience used %d)", stage,
                 initial_epoch, best.best_epoch, best.best, best.wait)
    else:
        start_qwk = float(trained.evaluate(val_ds, verbose=0, return_dict=True)["qwk"])
        w_start = fusion.rf_weight() if fusion is not None else None
    callbacks = [ExactValLoss(), best, epoch_log]
    saver = None
    if checkpoint is not None:
        saver = SaveProgress(checkpoint, best, epoch_log, start_qwk, w_start, seconds_before, model, every,
                             cfg.epochs, {"feature_cache": cache.use, "frozen_fingerprint": fingerprint})
        callbacks.append(saver)
    board = tensorboard_callback(tensorboard_dir, stage)
    if board is not None:
        callbacks.append(board)
    t0 = time.time()
    if initial_epoch < cfg.epochs and not (progress or {}).get("stopped", False):
        trained.fit(stream(initial_epoch * plan.steps_per_epoch), steps_per_epoch=plan.steps_per_epoch,
                    initial_epoch=initial_epoch, epochs=cfg.epochs, validation_data=val_ds, callbacks=callbacks,
                    verbose=0, shuffle=False)  # the dataset shuffles itself
    else:  # the interrupted attempt had already finished its epochs: only the restore is left
        best.set_model(trained)
        best.on_train_end()
    return {"best": best, "epoch_log": epoch_log, "start_qwk": start_qwk, "w_start": w_start,
            "initial_epoch": initial_epoch, "seconds": seconds_before + time.time() - t0,
            "checkpoint": saver.summary() if saver is not None else None}


class LeanBest(BestOnMetric):
    """BestOnMetric keeping only the best-epoch values of what trains (a frozen backbone's never change)."""

    def __init__(self, weights: list, monitor: str = "val_qwk", patience: int = 5):
        super().__init__(monitor, patience)
        self._weights = weights

    def on_epoch_end(self, epoch, logs=None):
        best_epoch = self.best_epoch
        super().on_epoch_end(epoch, logs)
        if self.best_epoch != best_epoch:
            self.best_weights = [np.array(v.numpy()) for v in self._weights]

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            assign(self._weights, self.best_weights, "best-epoch weights")

    def restore(self, state: dict, best_weights) -> None:
        if best_weights is not None and len(best_weights) != len(self._weights):
            raise CheckpointError(f"checkpoint holds {len(best_weights)} best-epoch tensors, the stage trains "
                                  f"{len(self._weights)}; move the folder aside to train the stage again")
        super().restore(state, best_weights)


class SaveProgress(keras.callbacks.Callback):
    """Every `every` epochs (and after the last or an early stop), what is needed to continue the stage."""

    def __init__(self, checkpoint: StageCheckpoint, best: BestOnMetric, epoch_log: EpochLog, start_qwk: float,
                 w_start, seconds_before: float, full_model: keras.Model, every: int, epochs: int, extra: dict):
        super().__init__()
        self.checkpoint, self.best, self.epoch_log = checkpoint, best, epoch_log
        self.start_qwk, self.w_start, self.t0 = start_qwk, w_start, time.time() - seconds_before
        self.full_model, self.every, self.epochs, self.extra = full_model, max(1, int(every)), epochs, extra
        self.bytes, self.saves = [], 0

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.epochs or bool(self.model.stop_training)
        if (epoch + 1) % self.every == 0 or last:
            info = {"epoch": epoch + 1, "best": self.best.state(), "history": self.epoch_log.history,
                    "start_val_qwk": self.start_qwk, "fusion_rf_weight_start": self.w_start,
                    "stopped": bool(self.model.stop_training), "seconds": time.time() - self.t0, **self.extra}
            self.bytes.append(self.checkpoint.save_progress(self.full_model, info, self.best.best_weights,
                                                            trained=self.model))
        crash_point("epoch")
        crash_point(f"epoch_{self.checkpoint.folder.name}")  # e.g. epoch_stage2: after a Stage 2 epoch

    def summary(self) -> dict:
        """Bytes written by this attempt's per-epoch checkpoints (final.npz not included)."""
        return {"every": self.every, "saves": len(self.bytes), "bytes_total": int(sum(self.bytes)),
                "bytes_per_save": int(self.bytes[-1]) if self.bytes else 0}


def predict(model: keras.Model, inputs: dict, batch: int, replicas: int = 1) -> np.ndarray:
    """Probabilities for every row of `inputs`, in order (rows padded for replicas are dropped)."""
    n = len(next(iter(inputs.values())))
    out = model.predict(eval_dataset(inputs, None, batch, replicas), verbose=0)
    return np.asarray(out, dtype=np.float64)[:n]
