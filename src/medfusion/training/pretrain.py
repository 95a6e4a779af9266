"""Image pre-training of one modality's branch: the transfer recipe of the keras-io fine-tuning guide.

With pretrained backbone weights (model.weights: imagenet or a file) a randomly initialised
head must not drive the first updates of the backbone: a warm-up phase trains only the head
on a frozen backbone (fully in inference mode), then a fine-tune phase unfreezes the backbone,
BatchNorm kept frozen, at its own lower LR; the fine-tune is kept only if it beats the warm-up
on validation QWK. A from-scratch backbone (weights: none) has nothing to protect and BatchNorm
statistics to estimate: one phase trains everything, BatchNorm included.

Phases checkpoint in sub-folders of ``checkpoint_dir`` (warmup/, finetune/ or scratch/); the
folder itself holds the final weights and the PretrainResult once the whole pre-training is done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import keras
import tensorflow as tf

from medfusion.config import Config, StageConfig
from medfusion.models.backbones import uses_pretrained_weights
from medfusion.models.losses import equal_alpha
from medfusion.training.checkpoint import CheckpointError, StageCheckpoint
from medfusion.training.precision import jit_for
from medfusion.training.stages import (StageResult, backbone_snapshot, count_params, relative_change, run_stage,
                                       set_backbones_trainable)

log = logging.getLogger("medfusion")

RECIPE_SCRATCH = "scratch"  # weights: none: one phase, whole model and BatchNorm trainable
RECIPE_TRANSFER = "warmup+finetune"  # pretrained weights: head on a frozen backbone, then the backbone


@dataclass
class PretrainResult:
    """Every phase's StageResult plus what the pre-training ended with.

    ``to_dict()`` is the job record: the fields of the phase that trained the backbone at top
    level (what review reads as the pre-training stage), every phase under ``phases``.
    """

    modality: str
    recipe: str
    phases: dict = field(default_factory=dict)  # phase name -> StageResult, in run order
    finetune_kept: bool | None = None  # transfer recipe: fine-tune beat the warm-up on validation QWK
    final_phase: str = ""  # the phase whose weights the model ends with

    @property
    def main(self) -> StageResult:
        """The phase that trained the backbone (fine-tune or scratch); the warm-up when it is the only one."""
        for name in ("finetune", "scratch", "warmup"):
            if name in self.phases:
                return self.phases[name]
        raise ValueError(f"pre-training of {self.modality} ran no phase (every phase has 0 epochs)")

    @property
    def best_val_qwk(self) -> float:
        return self.phases[self.final_phase].best_val_qwk

    def to_dict(self) -> dict:
        return {**self.main.to_dict(), "modality": self.modality, "recipe": self.recipe, "finetune_kept": self.finetune_kept,
                "final_phase": self.final_phase, "final_val_qwk": self.best_val_qwk,
                "phases": {name: r.to_dict() for name, r in self.phases.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "PretrainResult":
        phases = {name: StageResult(**r) for name, r in d["phases"].items()}
        return cls(d["modality"], d["recipe"], phases, d.get("finetune_kept"), d["final_phase"])


def pretrain_phases(cfg: Config) -> list[tuple[str, StageConfig]]:
    """The (phase, StageConfig) list the config asks for; phases with 0 epochs are left out."""
    p = cfg.train.pretrain
    if not uses_pretrained_weights(cfg.model.weights):
        phases = [("scratch", StageConfig(epochs=p.epochs, lr=p.lr, patience=p.patience))]
    else:
        phases = [("warmup", StageConfig(epochs=p.warmup_epochs, lr=p.warmup_lr, patience=p.patience)),
                  ("finetune", StageConfig(epochs=p.epochs, lr=p.finetune_lr, patience=p.patience))]
    phases = [(name, st) for name, st in phases if st.epochs > 0]
    if not phases:
        raise ValueError("train.pretrain asks for no epochs at all (epochs and warmup_epochs are 0); "
                         "set train.pretrain.epochs >= 1")
    return phases


def _freeze_for(phase: str, model: keras.Model) -> None:
    if phase == "warmup":
        set_backbones_trainable(model, False)  # head only; backbone in inference mode
    elif phase == "finetune":
        set_backbones_trainable(model, True)  # BatchNorm stays frozen (pretrained statistics)
    else:
        set_backbones_trainable(model, True, train_batchnorm=True)  # from scratch: BatchNorm learns too


def run_pretraining(modality: str, model: keras.Model, strategy: tf.distribute.Strategy, train: tuple, val: tuple,
                    cfg: Config, seed: int, checkpoint_dir: Path | None = None,
                    tensorboard_dir: Path | None = None) -> PretrainResult:
    """Pre-train ``model`` (build_pretrain_model) per the recipe its weights call for; equal focal alpha.

    The model ends holding the chosen weights with its backbone left trainable as in the last
    phase (the fusion model it is transferred into sets its own freezing). With
    ``checkpoint_dir`` a finished pre-training is loaded, an interrupted one continues. With
    ``tensorboard_dir`` each phase trained here writes event files to ``tensorboard_dir/<phase>``.
    """
    final = StageCheckpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if final is not None and (done := final.completed()) is not None:
        try:
            result = PretrainResult.from_dict(done)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(
                f"{Path(checkpoint_dir) / 'done.json'} is not a pre-training record ({type(exc).__name__}: {exc}); "
                "it was written by another medfusion version or edited: move the folder aside to recompute it"
            ) from exc
        final.load_final(model)
        log.info("  [pretrain %s] already completed: loaded its weights (%s, final phase %s, val QWK %.4f)%s",
                 modality, result.recipe, result.final_phase, result.best_val_qwk,
                 "" if tensorboard_dir is None else "; reused from the cache, so no TensorBoard events in this run")
        return result
    recipe = RECIPE_TRANSFER if uses_pretrained_weights(cfg.model.weights) else RECIPE_SCRATCH
    result = PretrainResult(modality, recipe)
    t = cfg.train
    after_warmup = None
    for i, (phase, stage_cfg) in enumerate(pretrain_phases(cfg)):
        _freeze_for(phase, model)
        trainable, total = count_params(model)
        log.info("  [pretrain %s] phase %s (%s): backbone %s, %d of %d parameters trainable, lr %g", modality,
                 phase, recipe, {"warmup": "frozen, inference mode", "finetune": "unfrozen, BatchNorm frozen",
                                 "scratch": "unfrozen, BatchNorm trained"}[phase], trainable, total, stage_cfg.lr)
        before = backbone_snapshot(model)
        ckpt = StageCheckpoint(Path(checkpoint_dir) / phase) if checkpoint_dir is not None else None
        r = run_stage(f"pretrain {modality} {phase}" if recipe == RECIPE_TRANSFER else f"pretrain {modality}",
                      model, strategy, train, val, stage_cfg, equal_alpha(3), t.focal_gamma, t.batch_size,
                      seed + i, t.augment, checkpoint=ckpt, checkpoint_every=t.checkpoint_every,
                      jit_compile=jit_for(cfg.runtime),
                      tensorboard_dir=None if tensorboard_dir is None else Path(tensorboard_dir) / phase)
        r.backbone_change = relative_change(before, backbone_snapshot(model))
        result.phases[phase] = r
        if phase == "warmup":
            after_warmup = model.get_weights()
    result.final_phase = list(result.phases)[-1]
    if "warmup" in result.phases and "finetune" in result.phases:
        result.finetune_kept = result.phases["finetune"].best_val_qwk > result.phases["warmup"].best_val_qwk
        if not result.finetune_kept:
            model.set_weights(after_warmup)
            result.final_phase = "warmup"
        log.info("  [pretrain %s] fine-tune val QWK %.4f vs warm-up %.4f -> %s", modality,
                 result.phases["finetune"].best_val_qwk, result.phases["warmup"].best_val_qwk,
                 "kept the fine-tuned backbone" if result.finetune_kept else "reverted to the warm-up weights")
    if final is not None:
        final.save_final(model, result.to_dict())
    return result
