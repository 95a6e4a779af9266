"""What each job of a search computes: the fold's forest, an image pre-training, a fusion model.

Each is a function of its declared inputs (the fold's sample indices and labels, the crops, its
slice of the config) plus `ctx`, the search that holds them (cfg, strategy, manifest, crops,
run_dir, cache_dir). The search decides what runs; these functions decide what a job is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from medfusion.config import config_to_dict, unfreeze_layers
from medfusion.constants import CLASSES, image_modalities_of
from medfusion.data.rows import Rows
from medfusion.evaluation.decisions import fit_fusion_weight
from medfusion.models.fusion import fusion_layer
from medfusion.models.losses import focal_alpha
from medfusion.runs import RunFolderError, atomic_write_json, read_run_arrays, set_aside, stage_folder_problem
from medfusion.training.checkpoint import StageCheckpoint, load_arrays, save_arrays
from medfusion.training.precision import jit_for, resolved as resolved_numerics
from medfusion.training.stages import backbone_snapshot, predict, relative_change, run_stage, set_backbones_trainable
from medfusion.training.transfer import transfer_weights

log = logging.getLogger("medfusion")


def fold_inputs(crops: dict, idx: np.ndarray, modalities, metadata_proba: np.ndarray | None) -> dict:
    """A model's inputs for the samples `idx`: image crops per modality (rows of the run's arrays, not copies)
    and the forest's probabilities."""
    x = {m: Rows(crops[m], idx) for m in modalities}
    if metadata_proba is not None:
        x["metadata"] = metadata_proba.astype(np.float32)
    return x


def forest_job(ctx, k, tr, va, seed) -> np.ndarray:
    """Forest probabilities for every sample of fold k (NaN elsewhere), computed once and kept.

    Fit on one row per training visit (a visit's views share its metadata row, so per-view
    rows would be duplicates weighted by view count); training visits get out-of-fold
    probabilities from an inner patient-grouped split; every view gets its visit's row.
    """
    path = ctx.run_dir / "forest" / f"fold_{k}.npz"
    out = np.full((len(ctx.manifest), len(CLASSES)), np.nan)
    groups = None
    if path.is_file():
        try:
            groups = read_run_arrays(path, load_arrays)
        except RunFolderError as exc:
            log.warning("%s; the forest is recomputed (it is deterministic)", str(exc).split(". To continue")[0])
    if groups is not None and {"train", "val", "per_visit"} <= set(groups) and forest_pipeline_path(ctx, k).is_file():
        if groups["train"][0].shape[0] == len(tr) and groups["val"][0].shape[0] == len(va):
            log.info("fold %d metadata forest: probabilities reused from %s", k, path)
            out[tr], out[va] = groups["train"][0], groups["val"][0]
            return out
    from medfusion.models.random_forest import MetadataForest

    t = time.time()
    samples, features = ctx.manifest.samples, ctx.manifest.feature_columns
    visit = samples["visit"].to_numpy()
    first_tr = pd.Series(tr).groupby(visit[tr], sort=True).first().to_numpy()
    first_va = pd.Series(va).groupby(visit[va], sort=True).first().to_numpy()
    forest = MetadataForest(ctx.cfg.forest, seed)
    p_vis_tr, p_vis_va = forest.fit_predict(
        samples.iloc[first_tr][features].reset_index(drop=True), ctx.manifest.labels[first_tr],
        ctx.manifest.patients[first_tr], samples.iloc[first_va][features].reset_index(drop=True))
    by_visit = {**dict(zip(visit[first_tr], p_vis_tr)), **dict(zip(visit[first_va], p_vis_va))}
    out[tr] = np.stack([by_visit[v] for v in visit[tr]])
    out[va] = np.stack([by_visit[v] for v in visit[va]])
    save_arrays(path, {"train": [out[tr]], "val": [out[va]], "per_visit": [np.ones(1)]})
    save_pipeline(forest.pipeline_, forest_pipeline_path(ctx, k))
    log.info("fold %d metadata forest: fit on %d training visits (one row per visit, %d views), %d features, "
             "inner out-of-fold probabilities for training visits, %.1fs", k, len(first_tr), len(tr),
             len(features), time.time() - t)
    return out


def forest_pipeline_path(ctx, k: int) -> Path:
    return ctx.run_dir / "forest" / f"fold_{k}.joblib"


def save_pipeline(pipeline, path: Path) -> None:
    """The fitted preprocessing + forest, for bundles and --mode predict (written atomically)."""
    import joblib

    tmp = path.with_name(f".{path.name}.tmp")
    joblib.dump(pipeline, tmp)
    tmp.replace(path)


def pretrain_key(ctx, modality, tr, va, seed, replicas: int | None = None, numerics: dict | None = None) -> str:
    """Hash of everything that determines a pre-training's result (`replicas` and `numerics`, precision.resolved's:
    a job's worker's, default this process's)."""
    from medfusion import __version__
    from medfusion.models.backbones import weights_file_sha256

    cfg = ctx.cfg
    payload = {
        # version 2: warm-up + fine-tune recipe, from-scratch BatchNorm trained, ImageNet input scaling from files
        "version": 2, "medfusion": __version__, "weights_sha256": weights_file_sha256(cfg.model.weights),
        "modality": modality, "train_ids": ctx.manifest.samples["sample_id"].iloc[tr].tolist(),
        "labels": ctx.manifest.labels[tr].tolist(), "crops_sha256": Rows(ctx.crops[modality], tr).sha256(),
        "image_size": cfg.data.image_size, "box_margin": cfg.data.box_margin,
        "model": config_to_dict(cfg.model), "pretrain": config_to_dict(cfg.train.pretrain),
        "focal_gamma": cfg.train.focal_gamma, "batch_size": cfg.train.batch_size, "augment": cfg.train.augment,
        "replicas": replicas or ctx.strategy.num_replicas_in_sync, "seed": seed,
        # float16 and XLA change the numbers: as the job's worker resolves them ("auto" differs per machine)
        **(numerics or resolved_numerics(cfg.runtime)),
        # validation samples pick the restored epoch, so they shape the result too
        "val_ids": ctx.manifest.samples["sample_id"].iloc[va].tolist(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def set_aside_if_damaged(folder: Path, what: str) -> None:
    """A checkpoint or cache folder with a file that cannot be read is moved aside and computed again."""
    problem = stage_folder_problem(folder) if folder.is_dir() else None
    if problem:
        aside = set_aside(folder)
        log.warning("%s %s is damaged (%s): moved aside to %s (nothing deleted); computing it again",
                    what, folder, problem, aside)


def pretrain_job(ctx, k, modality, tr, va, seed, key: str | None = None):
    """Train (or reuse) the cache entry of this pre-training under its file lock.

    The lock (logs/.pretrain_cache/<key>.lock) makes a second search that needs the same entry
    wait for the first and then reuse it, instead of training it twice into one folder.
    """
    from medfusion.models.fusion import build_pretrain_model
    from medfusion.store import cache_entry_lock
    from medfusion.training.pretrain import pretrain_phases, run_pretraining

    cfg = ctx.cfg
    key = key or pretrain_key(ctx, modality, tr, va, seed)  # the plan computed it already
    with cache_entry_lock(ctx.cache_dir, key, log):
        set_aside_if_damaged(ctx.cache_dir / key, "pre-training cache entry")
        reused = StageCheckpoint(ctx.cache_dir / key).completed() is not None
        log.info("--- fold %d pre-training %s: cache key %s (%s)", k, modality, key, "found, reused" if reused else
                 "training; equal alpha; phases " + ", ".join(name for name, _ in pretrain_phases(cfg)))
        keras.utils.set_random_seed(seed)
        with ctx.strategy.scope():
            model = build_pretrain_model(modality, cfg.model, cfg.data.image_size)
        y = ctx.manifest.labels
        result = run_pretraining(modality, model, ctx.strategy, ({modality: Rows(ctx.crops[modality], tr)}, y[tr]),
                                 ({modality: Rows(ctx.crops[modality], va)}, y[va]), cfg, seed,
                                 checkpoint_dir=ctx.cache_dir / key,
                                 tensorboard_dir=ctx.run_dir / "tensorboard" / f"pretrain-{modality}" / f"fold_{k}")
        if not reused:
            atomic_write_json(ctx.cache_dir / key / "origin.json",
                              {"run": cfg.runtime.run_name, "fold": k, "modality": modality})
    return model, result, key, reused


def load_pretrained(ctx, k, modality, key, seed) -> keras.Model:
    """The finished pre-training `key` of the cache, as a model to transfer from (read under its lock)."""
    from medfusion.models.fusion import build_pretrain_model
    from medfusion.store import cache_entry_lock

    entry = StageCheckpoint(ctx.cache_dir / key)
    keras.utils.set_random_seed(seed)
    with ctx.strategy.scope():
        model = build_pretrain_model(modality, ctx.cfg.model, ctx.cfg.data.image_size)
    with cache_entry_lock(ctx.cache_dir, key, log):
        if entry.completed() is None:
            raise RuntimeError(f"fold {k}: the pre-training of {modality} (cache entry {ctx.cache_dir / key}) is not "
                               "finished; its job must run first (rerun the search to compute it)")
        entry.load_final(model)
    return model


def fusion_job(ctx, combo, k, sp, p_meta, pretrained, seed, job):
    """Transfer, Stage 1, Stage 2 on the fitting part; every choice on the selection part.

    Returns (model, selection probabilities, validation probabilities); the validation fold
    is predicted once, after the last choice.
    """
    from medfusion.models.fusion import build_fusion_model

    cfg = ctx.cfg
    mods = image_modalities_of(combo)
    has_meta = "metadata" in combo.split("+")
    y = ctx.manifest.labels
    ckpt_dir = ctx.run_dir / "checkpoints" / combo / f"fold_{k}"
    set_aside_if_damaged(ckpt_dir, "checkpoint folder")
    keras.utils.set_random_seed(seed)
    with ctx.strategy.scope():
        model = build_fusion_model(combo, cfg.model, cfg.data.image_size)
    for m in mods:
        report = transfer_weights(pretrained[m], model, exclude=("output",))
        log.info("  %s", report.summary())
        job["transfer"].append(report.to_dict())
    inputs = lambda idx: fold_inputs(ctx.crops, idx, mods, p_meta[idx] if has_meta else None)  # noqa: E731
    train, sel = (inputs(sp.fit), y[sp.fit]), (inputs(sp.sel), y[sp.sel])
    alpha = focal_alpha(y[sp.fit], 3, cfg.train.max_alpha_ratio)
    job["alpha"] = [float(a) for a in alpha]
    fusion = fusion_layer(model)
    # the weight trains with the heads (it lets the image head learn as a classifier of its own), but its
    # final value is fit afterwards on the selection split, where neither branch was fit
    honest_weight = fusion is not None and cfg.search.selection == "inner"
    set_backbones_trainable(model, False)
    s1_ckpt = StageCheckpoint(ckpt_dir / "stage1")
    s1 = run_stage("stage1", model, ctx.strategy, train, sel, cfg.train.stage1, alpha, cfg.train.focal_gamma,
                   cfg.train.batch_size, seed, cfg.train.augment, checkpoint=s1_ckpt, checkpoint_every=cfg.train.checkpoint_every,
                   jit_compile=jit_for(cfg.runtime),
                   tensorboard_dir=ctx.run_dir / "tensorboard" / combo / f"fold_{k}" / "stage1")
    job["stages"]["stage1"] = s1.to_dict()
    w_end = s1.fusion_rf_weight_end
    if cfg.train.stage2.epochs > 0:
        w_end = _stage2(ctx, model, ckpt_dir, train, sel, alpha, seed, s1, s1_ckpt, job) or w_end
    else:
        log.info("  [stage2] skipped: train.stage2.epochs is 0")
        job["stage2_skipped"] = True
    batch = max(cfg.train.batch_size, 32)
    if honest_weight:
        job["fusion_rf_weight"] = _fit_fusion_weight(ctx, model, sel, mods, batch)
    elif fusion is not None:
        job["fusion_rf_weight"] = {"start": s1.fusion_rf_weight_start, "end": w_end, "method": "trained"}
    replicas = ctx.strategy.num_replicas_in_sync
    proba_sel = predict(model, sel[0], batch, replicas)
    return model, proba_sel, predict(model, inputs(sp.val), batch, replicas)


def _stage2(ctx, model, ckpt_dir, train, sel, alpha, seed, s1, s1_ckpt, job):
    """Stage 2, kept only if it beats Stage 1 on the selection split; returns its end fusion weight if kept."""
    cfg = ctx.cfg
    set_backbones_trainable(model, True, unfreeze_layers(cfg.train.unfreeze))
    before = backbone_snapshot(model)
    s2_ckpt = StageCheckpoint(ckpt_dir / "stage2")
    fresh = s2_ckpt.completed() is None
    s2 = run_stage("stage2", model, ctx.strategy, train, sel, cfg.train.stage2, alpha,
                   cfg.train.focal_gamma, cfg.train.batch_size, seed + 1000, cfg.train.augment,
                   checkpoint=s2_ckpt, checkpoint_every=cfg.train.checkpoint_every, jit_compile=jit_for(cfg.runtime), tensorboard_dir=ctx.run_dir / "tensorboard" /
                   ckpt_dir.relative_to(ctx.run_dir / "checkpoints") / "stage2")
    if fresh or s2.backbone_change is None:
        s2.backbone_change = relative_change(before, backbone_snapshot(model))
        s2_ckpt.save_final(model, s2.to_dict())
    kept = s2.best_val_qwk > s1.best_val_qwk
    log.info("  [stage2] relative backbone weight change %.3e; selection QWK %.4f vs Stage 1 %.4f -> %s",
             s2.backbone_change, s2.best_val_qwk, s1.best_val_qwk,
             "kept Stage 2" if kept else "reverted to Stage 1 weights")
    job["stages"]["stage2"] = s2.to_dict()
    job["stage2_kept"] = kept
    if not kept:
        s1_ckpt.load_final(model)
        return None
    return s2.fusion_rf_weight_end


def _fit_fusion_weight(ctx, model, sel, mods, batch) -> dict:
    """The forest weight that best mixes the two branches' selection-split probabilities (log loss)."""
    x, y = sel
    with ctx.strategy.scope():
        image_model = keras.Model({m: model.input[m] for m in mods}, model.get_layer("image_classifier").output)
    p_img = predict(image_model, {m: x[m] for m in mods}, batch, ctx.strategy.num_replicas_in_sync)
    fusion = fusion_layer(model)
    fit = fit_fusion_weight(x["metadata"], p_img, y, ctx.cfg.model.fusion_init_rf_weight)
    fit["trained"] = fusion.rf_weight()
    fusion.set_rf_weight(fit["weight"])
    log.info("  fusion weight fit on the selection split (%d samples; neither branch was fit on them): forest "
             "weight %.3f after training -> %.3f, selection log loss %.4f", fit["n"], fit["trained"], fit["weight"],
             fit["log_loss"])
    return {"start": fit["init"], "trained": fit["trained"], "end": fusion.rf_weight(),
            "method": "selection_log_loss", "selection_log_loss": fit["log_loss"], "n_selection": fit["n"]}
