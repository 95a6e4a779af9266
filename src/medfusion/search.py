"""The search: every requested modality combination x every patient-level fold.

Per fold: the metadata forest (fit on training patients only), one image pre-training per
image modality (shared by every combination containing it), then per combination a fusion
model with strictly transferred weights, Stage 1 (backbones frozen) and Stage 2
(backbones unfrozen, kept only if it improves validation QWK).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import keras

import numpy as np
import pandas as pd
import tensorflow as tf

from medfusion.config import Config, ConfigError, config_to_dict, config_yaml, result_differences, unfreeze_layers
from medfusion.constants import PRETRAIN_CACHE_DIR
from medfusion.constants import CLASSES, IMAGE_MODALITIES, MODALITIES, all_combinations, canonical_combination, image_modalities_of
from medfusion.data.folds import check_fold_classes, check_folds, fold_indices, make_folds, subsample_patients
from medfusion.data.manifest import Manifest
from medfusion.models.losses import equal_alpha, focal_alpha
from medfusion.models.metrics import score_predictions
from medfusion.runs import (FileLog, RunState, atomic_write_csv, atomic_write_json, atomic_write_text, crash_point,
                            prepare_run_dir, remove_stale_temporaries)
from medfusion.runs import (RunFolderError, check_run_folder, folds_problem, read_run_arrays, read_run_csv,
                            read_run_json, read_run_yaml, set_aside, stage_folder_problem)
from medfusion.training.stages import (backbone_snapshot, predict, relative_change, run_stage,
                                       set_backbones_trainable)
from medfusion.training.checkpoint import StageCheckpoint, load_arrays, save_arrays
from medfusion.training.checkpoint import assign as ckpt_assign
from medfusion.training.checkpoint import values as ckpt_values
from medfusion.training.devices import describe
from medfusion.training.transfer import transfer_weights

log = logging.getLogger("medfusion")

RESULT_COLUMNS = ["combination", "fold", "n_val", "qwk", "kappa", "accuracy", "f1_macro", "f1_weighted",
                  "f1_I", "f1_P", "f1_R", "stage1_best_epoch", "stage1_qwk", "stage2_best_epoch", "stage2_qwk",
                  "stage2_kept", "backbone_change", "fusion_rf_weight"]
SUMMARY_COLUMNS = ["combination", "n_folds", "qwk_mean", "qwk_std", "kappa_mean", "kappa_std", "accuracy_mean",
                   "f1_macro_mean", "f1_weighted_mean"]


def resolve_combinations(cfg: Config) -> list[str]:
    """The configured combinations (canonical names), or every non-empty combination of the modalities."""
    if cfg.search.combinations:
        combos = {canonical_combination(str(c).split("+")) for c in cfg.search.combinations}
        combos |= {m for c in combos for m in c.split("+")}  # single-modality baselines always run alongside
        order = all_combinations(MODALITIES)
        return sorted(combos, key=order.index)
    return all_combinations(cfg.search.modalities)


def _distribution(labels: np.ndarray) -> str:
    counts = np.bincount(labels, minlength=len(CLASSES))
    return ", ".join(f"{c} {n} ({100.0 * n / max(len(labels), 1):.0f}%)" for c, n in zip(CLASSES, counts))


def _counts(labels: np.ndarray) -> dict:
    return dict(zip(CLASSES, np.bincount(labels, minlength=len(CLASSES)).tolist()))


def _inputs(crops: dict, idx: np.ndarray, modalities, metadata_proba: np.ndarray | None) -> dict:
    x = {m: crops[m][idx] for m in modalities}
    if metadata_proba is not None:
        x["metadata"] = metadata_proba.astype(np.float32)
    return x


class DataError(ValueError):
    """The dataset cannot be used for the requested search; the message lists why."""


class Search:
    """Holds what one search shares across folds and jobs; `run()` does the work.

    Resumable: finished jobs are recorded in state.json with checksums of their outputs,
    stages checkpoint every epoch, and image pre-training lives in a cache shared by every
    combination, run and resume (logs/.pretrain_cache/<key>/).
    """

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy):
        self.cfg, self.strategy = cfg, strategy
        self.combinations = resolve_combinations(cfg)
        self.image_modalities = [m for m in IMAGE_MODALITIES if any(m in image_modalities_of(c) for c in self.combinations)]
        self.oracle_rows: list[dict] = []
        self.run_dir = Path(cfg.runtime.logs_dir) / cfg.runtime.run_name
        self.cache_dir = Path(cfg.runtime.logs_dir) / PRETRAIN_CACHE_DIR

    # ------------------------------------------------------------------ run folder and modes
    def _open_run(self) -> bool:
        """Create or reopen the run folder per the resume mode; True when continuing an existing run."""
        cfg, mode = self.cfg, self.cfg.runtime.resume_mode
        existing = (self.run_dir / "config.yaml").is_file()
        if mode in ("from_models", "from_predictions"):
            if not existing or not (self.run_dir / "state.json").is_file():
                raise FileNotFoundError(f"--resume_mode {mode} needs a finished or partial run in {self.run_dir} "
                                        "(config.yaml and state.json); run a search with that --run_name first")
        if mode == "fresh" or not existing:
            prepare_run_dir(cfg.runtime.logs_dir, cfg.runtime.run_name, log)
            atomic_write_text(self.run_dir / "config.yaml", config_yaml(cfg))
            return False
        check_run_folder(self.run_dir)  # a damaged file stops here, before anything in the folder changes
        stale = remove_stale_temporaries(self.run_dir)
        if stale:
            log.info("removed %d half-written temporary file(s) left by an interrupted attempt", stale)
        saved = read_run_yaml(self.run_dir / "config.yaml")
        diffs = result_differences(saved, cfg)
        if diffs:
            lines = "\n".join(f"  {k}: run has {a!r}, now {b!r}" for k, a, b in diffs)
            raise ConfigError(
                f"cannot resume run {cfg.runtime.run_name!r}: these result-affecting settings differ from "
                f"{self.run_dir / 'config.yaml'}:\n{lines}\nUse the run's settings to continue it, "
                f"--resume_mode fresh to restart it (the old folder is kept aside), or a new --run_name.")
        return True

    def _folds(self, manifest: Manifest, resuming: bool) -> dict:
        path = self.run_dir / "folds.json"
        if resuming and path.is_file():
            assignment = read_run_json(path, folds_problem)
            ids = set(manifest.samples["sample_id"])
            if ids != set(assignment):
                extra, missing = sorted(ids - set(assignment)), sorted(set(assignment) - ids)
                raise RuntimeError(f"{path} does not match the dataset ({len(extra)} new samples, e.g. {extra[:3]}; "
                                   f"{len(missing)} gone, e.g. {missing[:3]}): the data changed since the run "
                                   "started; use --resume_mode fresh or a new --run_name")
            check_folds(manifest, assignment)
            log.info("folds: reusing %s", path)
            return assignment
        assignment = make_folds(manifest, self.cfg.search.cv_folds, self.cfg.search.seed)
        atomic_write_json(path, assignment)
        return assignment

    # ------------------------------------------------------------------ orchestration
    def run(self) -> pd.DataFrame:
        cfg = self.cfg
        t0 = time.time()
        mode = cfg.runtime.resume_mode
        manifest, data_summary = None, ""
        if mode != "from_predictions":  # check the data before any run folder is created or touched
            from medfusion.data.check import check_dataset

            check = check_dataset(cfg, log)
            data_summary = check.summary(short=True)
            log.info("%s", data_summary)
            if not check.ok:
                raise DataError("the dataset cannot be used for this search:\n" +
                                "\n".join(f"  - {p}" for p in check.problems) +
                                f"\nRun python main.py --mode check_data --data_dir {cfg.data.data_dir} for details.")
            manifest = subsample_patients(check.manifest, cfg.search.data_percentage, cfg.search.seed,
                                          n_folds=cfg.search.cv_folds)
        resuming = self._open_run()
        self.state = RunState(self.run_dir)
        with FileLog(self.run_dir / "run.log") as run_log:
            log.info("run %s (%s): %d combinations x %d folds -> %s", cfg.runtime.run_name,
                     f"resume_mode {mode}, continuing" if resuming else "new", len(self.combinations),
                     cfg.search.cv_folds, self.run_dir)
            if mode == "from_predictions":
                return self._finish(t0)
            log.info("combinations: %s", ", ".join(self.combinations))
            log.info("devices: %s; per-replica batch %d, global batch %d", describe(self.strategy),
                     cfg.train.batch_size, cfg.train.batch_size * self.strategy.num_replicas_in_sync)
            if data_summary:
                run_log.write(data_summary)  # already on the console: into the file only
            log.info("dataset: %d samples, %d visits, %d patients; classes %s", len(manifest),
                     manifest.samples["visit"].nunique(), manifest.samples["patient"].nunique(),
                     _distribution(manifest.labels))
            self.manifest = manifest
            self.assignment = self._folds(manifest, resuming)
            for warning in check_fold_classes(manifest, self.assignment, cfg.search.cv_folds):
                log.warning("%s", warning)
            self.oracle = self._load_oracle()
            self.crops = {}
            for m in self.image_modalities:
                from medfusion.data.images import load_crops

                t = time.time()
                self.crops[m] = load_crops(manifest, m, cfg.data.image_size, cfg.data.box_margin, log=log)
                log.info("loaded %d %s crops at %dpx in %.1fs", len(manifest), m, cfg.data.image_size, time.time() - t)
        for k in range(cfg.search.cv_folds):
            with FileLog(self.run_dir / f"fold_{k}.log"), FileLog(self.run_dir / "run.log"):
                if mode == "from_models":
                    self.predict_fold(k)
                else:
                    self.run_fold(k)
        with FileLog(self.run_dir / "run.log"):
            return self._finish(t0)

    def _finish(self, t0: float) -> pd.DataFrame:
        ckpts = self.run_dir / "checkpoints"
        if ckpts.is_dir() and not any(p.is_file() for p in ckpts.rglob("*")):
            shutil.rmtree(ckpts)  # only empty job folders are left once every job is recorded
        if self.cfg.runtime.resume_mode == "from_predictions":
            self.rescore_from_predictions()
        rows = self.result_rows()
        atomic_write_csv(self.run_dir / "results.csv", results_frame(rows))
        summary = summarize(results_frame(rows))
        atomic_write_csv(self.run_dir / "summary.csv", summary)
        log.warning("\n%s", format_summary(summary, self._oracle_summary()))
        log.warning("search finished in %.1f min; results in %s", (time.time() - t0) / 60, self.run_dir)
        from medfusion.review import run_review

        run_review(self.run_dir, strict=False, log=log)
        return summary

    def pending(self, k: int) -> list[str]:
        todo = []
        for combo in self.combinations:
            why = self.state.problem(combo, k)
            if why is None:
                log.info("--- fold %d job %s: finished earlier, outputs verified; skipped", k, combo)
            else:
                if why != "not finished":
                    log.warning("--- fold %d job %s: recorded as finished but %s; redoing it", k, combo, why)
                    self.state.forget(combo, k)
                todo.append(combo)
        return todo

    def run_fold(self, k: int) -> None:
        cfg, manifest = self.cfg, self.manifest
        tr, va = fold_indices(manifest, self.assignment, k)
        y_tr, y_va = manifest.labels[tr], manifest.labels[va]
        log.info("=== fold %d/%d: train %d samples / %d patients, validation %d samples / %d patients",
                 k + 1, cfg.search.cv_folds, len(tr), len(set(manifest.patients[tr])), len(va),
                 len(set(manifest.patients[va])))
        log.info("fold %d train classes: %s", k, _distribution(y_tr))
        log.info("fold %d validation classes: %s", k, _distribution(y_va))
        self._oracle_scores(k, va)
        todo = self.pending(k)
        if not todo:
            return
        seed = cfg.search.seed + k
        p_tr, p_va = self.forest(k, tr, va, seed) if any("metadata" in c.split("+") for c in todo) else (None, None)
        pretrained = {}
        for m in self.image_modalities:
            if any(m in image_modalities_of(c) for c in todo):
                pretrained[m] = self.pretrain(k, m, tr, va, seed)
        fold_info = {"n_train": len(tr), "n_val": len(va), "train_patients": len(set(manifest.patients[tr])),
                     "val_patients": len(set(manifest.patients[va])), "train_class_counts": _counts(y_tr),
                     "val_class_counts": _counts(y_va)}
        for combo in todo:
            t = time.time()
            log.info("--- fold %d job %s", k, combo)
            job = {"combination": combo, "fold": k, **fold_info, "stages": {}, "transfer": [], "pretrain": {},
                   "max_alpha_ratio": cfg.train.max_alpha_ratio}
            files = []
            if combo == "metadata":
                proba = p_va
            else:
                for m in image_modalities_of(combo):
                    model, result, key, reused = pretrained[m]
                    job["pretrain"][m] = {**result.to_dict(), "cache_key": key, "reused": reused}
                    log.info("  pre-trained %s: %s cache entry %s", m, "reused" if reused else "trained this run", key)
                model, proba = self.train_combination(combo, k, tr, va, p_tr, p_va, pretrained, seed, job)
                weights = f"models/{combo}/fold_{k}.npz"
                save_arrays(self.run_dir / weights, {"model": ckpt_values(model.variables)})
                files.append(weights)
            job["seconds"] = round(time.time() - t, 2)
            files += self._record(combo, k, va, proba, job)
            self.state.mark_done(combo, k, files)
            shutil.rmtree(self.run_dir / "checkpoints" / combo / f"fold_{k}", ignore_errors=True)
            log.info("--- fold %d job %s done in %.1fs: QWK %.4f", k, combo, time.time() - t, job["metrics"]["qwk"])
            atomic_write_csv(self.run_dir / "results.csv", results_frame(self.result_rows()))
            crash_point("job_done")
            gc.collect()

    def forest(self, k, tr, va, seed):
        """Forest probabilities of fold k (out-of-fold for training rows), computed once and kept."""
        path = self.run_dir / "forest" / f"fold_{k}.npz"
        groups = None
        if path.is_file():
            try:
                groups = read_run_arrays(path, load_arrays)
            except RunFolderError as exc:
                log.warning("%s; the forest is recomputed (it is deterministic)", str(exc).split(". To continue")[0])
        if groups is not None and {"train", "val"} <= set(groups):
            if groups["train"][0].shape[0] == len(tr) and groups["val"][0].shape[0] == len(va):
                log.info("fold %d metadata forest: probabilities reused from %s", k, path)
                return groups["train"][0], groups["val"][0]
        from medfusion.models.random_forest import MetadataForest

        t = time.time()
        features = self.manifest.feature_columns
        samples = self.manifest.samples
        p_tr, p_va = MetadataForest(self.cfg.forest, seed).fit_predict(
            samples.iloc[tr][features].reset_index(drop=True), self.manifest.labels[tr], self.manifest.patients[tr],
            samples.iloc[va][features].reset_index(drop=True))
        save_arrays(path, {"train": [p_tr], "val": [p_va]})
        log.info("fold %d metadata forest: %d features, inner out-of-fold probabilities for training rows, %.1fs",
                 k, len(features), time.time() - t)
        return p_tr, p_va

    def pretrain_key(self, modality, tr, va, seed) -> str:
        """Hash of everything that determines a pre-training's result."""
        cfg = self.cfg
        crops = self.crops[modality][tr]
        payload = {
            "version": 1, "modality": modality, "train_ids": self.manifest.samples["sample_id"].iloc[tr].tolist(),
            "labels": self.manifest.labels[tr].tolist(), "crops_sha256": hashlib.sha256(crops.tobytes()).hexdigest(),
            "image_size": cfg.data.image_size, "box_margin": cfg.data.box_margin,
            "model": config_to_dict(cfg.model), "pretrain": config_to_dict(cfg.train.pretrain),
            "focal_gamma": cfg.train.focal_gamma, "batch_size": cfg.train.batch_size, "augment": cfg.train.augment,
            "replicas": self.strategy.num_replicas_in_sync, "seed": seed,
            # validation samples pick the restored epoch, so they shape the result too
            "val_ids": self.manifest.samples["sample_id"].iloc[va].tolist(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @staticmethod
    def _set_aside_if_damaged(folder: Path, what: str) -> None:
        """A checkpoint or cache folder with a file that cannot be read is moved aside and computed again."""
        problem = stage_folder_problem(folder) if folder.is_dir() else None
        if problem:
            aside = set_aside(folder)
            log.warning("%s %s is damaged (%s): moved aside to %s (nothing deleted); computing it again",
                        what, folder, problem, aside)

    def pretrain(self, k, modality, tr, va, seed):
        from medfusion.models.fusion import build_pretrain_model

        cfg = self.cfg
        key = self.pretrain_key(modality, tr, va, seed)
        self._set_aside_if_damaged(self.cache_dir / key, "pre-training cache entry")
        ckpt = StageCheckpoint(self.cache_dir / key)
        reused = ckpt.completed() is not None
        log.info("--- fold %d pre-training %s: cache key %s (%s)", k, modality, key,
                 "found, reused" if reused else "training; equal alpha, whole model trainable")
        keras.utils.set_random_seed(seed)
        with self.strategy.scope():
            model = build_pretrain_model(modality, cfg.model, cfg.data.image_size)
        y = self.manifest.labels
        result = run_stage(f"pretrain {modality}", model, self.strategy,
                           ({modality: self.crops[modality][tr]}, y[tr]), ({modality: self.crops[modality][va]}, y[va]),
                           cfg.train.pretrain, equal_alpha(3), cfg.train.focal_gamma, cfg.train.batch_size, seed,
                           cfg.train.augment, checkpoint=ckpt)
        if not reused:
            atomic_write_json(self.cache_dir / key / "origin.json",
                              {"run": cfg.runtime.run_name, "fold": k, "modality": modality})
        return model, result, key, reused

    def train_combination(self, combo, k, tr, va, p_tr, p_va, pretrained, seed, job):
        from medfusion.models.fusion import build_fusion_model

        cfg = self.cfg
        mods = image_modalities_of(combo)
        has_meta = "metadata" in combo.split("+")
        y = self.manifest.labels
        ckpt_dir = self.run_dir / "checkpoints" / combo / f"fold_{k}"
        self._set_aside_if_damaged(ckpt_dir, "checkpoint folder")
        keras.utils.set_random_seed(seed)
        with self.strategy.scope():
            model = build_fusion_model(combo, cfg.model, cfg.data.image_size)
        for m in mods:
            report = transfer_weights(pretrained[m][0], model, exclude=("output",))
            log.info("  %s", report.summary())
            job["transfer"].append(report.to_dict())
        train = (_inputs(self.crops, tr, mods, p_tr if has_meta else None), y[tr])
        val = (_inputs(self.crops, va, mods, p_va if has_meta else None), y[va])
        alpha = focal_alpha(y[tr], 3, cfg.train.max_alpha_ratio)
        job["alpha"] = [float(a) for a in alpha]
        set_backbones_trainable(model, False)
        s1_ckpt = StageCheckpoint(ckpt_dir / "stage1")
        s1 = run_stage("stage1", model, self.strategy, train, val, cfg.train.stage1, alpha, cfg.train.focal_gamma,
                       cfg.train.batch_size, seed, cfg.train.augment, checkpoint=s1_ckpt)
        job["stages"]["stage1"] = s1.to_dict()
        w_end = s1.fusion_rf_weight_end
        if cfg.train.stage2.epochs > 0:
            set_backbones_trainable(model, True, unfreeze_layers(cfg.train.unfreeze))
            before = backbone_snapshot(model)
            s2_ckpt = StageCheckpoint(ckpt_dir / "stage2")
            fresh = s2_ckpt.completed() is None
            s2 = run_stage("stage2", model, self.strategy, train, val, cfg.train.stage2, alpha,
                           cfg.train.focal_gamma, cfg.train.batch_size, seed + 1000, cfg.train.augment,
                           checkpoint=s2_ckpt)
            if fresh or s2.backbone_change is None:
                s2.backbone_change = relative_change(before, backbone_snapshot(model))
                s2_ckpt.save_final(model, s2.to_dict())
            kept = s2.best_val_qwk > s1.best_val_qwk
            log.info("  [stage2] relative backbone weight change %.3e; val QWK %.4f vs Stage 1 %.4f -> %s",
                     s2.backbone_change, s2.best_val_qwk, s1.best_val_qwk,
                     "kept Stage 2" if kept else "reverted to Stage 1 weights")
            job["stages"]["stage2"] = s2.to_dict()
            job["stage2_kept"] = kept
            if kept:
                w_end = s2.fusion_rf_weight_end
            else:
                s1_ckpt.load_final(model)
        else:
            log.info("  [stage2] skipped: train.stage2.epochs is 0")
            job["stage2_skipped"] = True
        if has_meta:
            job["fusion_rf_weight"] = {"start": s1.fusion_rf_weight_start, "end": w_end}
        proba = predict(model, val[0], max(cfg.train.batch_size, 32))
        return model, proba

    # ------------------------------------------------------------------ recomputation modes
    def predict_fold(self, k: int) -> None:
        """--resume_mode from_models: new predictions from each finished job's saved weights."""
        from medfusion.models.fusion import build_fusion_model

        cfg = self.cfg
        tr, va = fold_indices(self.manifest, self.assignment, k)
        for combo in self.combinations:
            job_path = self.run_dir / "jobs" / combo / f"fold_{k}.json"
            why = self.state.problem(combo, k, only=("models/", "forest/"))
            if why is not None or not job_path.is_file():
                log.warning("fold %d job %s: %s; nothing to recompute from (continue the run with "
                            "--resume_mode auto)", k, combo, why or "no job record")
                continue
            job = read_run_json(job_path)
            has_meta = "metadata" in combo.split("+")
            p_va = read_run_arrays(self.run_dir / "forest" / f"fold_{k}.npz", load_arrays)["val"][0] if has_meta else None
            files = []
            if combo == "metadata":
                proba = p_va
            else:
                with self.strategy.scope():
                    model = build_fusion_model(combo, cfg.model, cfg.data.image_size)
                weights = f"models/{combo}/fold_{k}.npz"
                ckpt_assign(model.variables, read_run_arrays(self.run_dir / weights, load_arrays)["model"], weights)
                proba = predict(model, _inputs(self.crops, va, image_modalities_of(combo), p_va),
                                max(cfg.train.batch_size, 32))
                files.append(weights)
            files += self._record(combo, k, va, proba, job)
            self.state.mark_done(combo, k, files)
            log.info("fold %d job %s: predictions recomputed from saved weights, QWK %.4f", k, combo,
                     job["metrics"]["qwk"])

    def rescore_from_predictions(self) -> None:
        """--resume_mode from_predictions: metrics recomputed from the prediction files alone."""
        for rec in self.state.done_jobs():
            combo, k = rec["combination"], rec["fold"]
            why = self.state.problem(combo, k, only=("predictions/", "jobs/"))
            if why is not None:
                raise RunFolderError(f"cannot rescore job {combo} fold {k} from its files: {why}. Continue the run "
                                     "with --resume_mode auto (the job is redone), or use --resume_mode fresh or a "
                                     "new --run_name.")
            job_path = self.run_dir / "jobs" / combo / f"fold_{k}.json"
            pred = read_run_csv(self.run_dir / "predictions" / combo / f"fold_{k}.csv")
            job = read_run_json(job_path)
            proba = pred[["p_I", "p_P", "p_R"]].to_numpy()
            job["metrics"] = score_predictions(pred["y_true"].to_numpy(), proba)
            job["val_pred_counts"] = dict(zip(CLASSES, np.bincount(proba.argmax(1), minlength=3).tolist()))
            atomic_write_json(job_path, job)
            files = [f for f in rec["files"] if not f.startswith("jobs/")] + [f"jobs/{combo}/fold_{k}.json"]
            self.state.mark_done(combo, k, files)
        log.info("from_predictions: %d jobs rescored from their prediction files", len(self.state.done_jobs()))

    # ------------------------------------------------------------------ outputs
    def _record(self, combo, k, va, proba, job) -> list[str]:
        """Write predictions and the job record; returns their paths relative to the run folder."""
        samples = self.manifest.samples.iloc[va]
        y = self.manifest.labels[va]
        pred = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "patient": samples["patient"].to_numpy(),
                             "y_true": y, "p_I": proba[:, 0], "p_P": proba[:, 1], "p_R": proba[:, 2]})
        pred_rel, job_rel = f"predictions/{combo}/fold_{k}.csv", f"jobs/{combo}/fold_{k}.json"
        atomic_write_csv(self.run_dir / pred_rel, pred)
        scores = score_predictions(y, proba)
        pred_counts = np.bincount(proba.argmax(axis=1), minlength=3)
        job.update(metrics=scores, val_pred_counts=dict(zip(CLASSES, pred_counts.tolist())), predictions_file=pred_rel)
        atomic_write_json(self.run_dir / job_rel, job)
        log.info("  fold %d %s: QWK %.4f kappa %.4f acc %.4f F1-macro %.4f; predicted classes %s", k, combo,
                 scores["qwk"], scores["kappa"], scores["accuracy"], scores["f1_macro"],
                 dict(zip(CLASSES, pred_counts.tolist())))
        return [pred_rel, job_rel]

    def result_rows(self) -> list[dict]:
        """results.csv rows, rebuilt from the finished jobs' records: one row per (combination, fold)."""
        order = {c: i for i, c in enumerate(all_combinations(MODALITIES))}
        rows = []
        for rec in sorted(self.state.done_jobs(), key=lambda r: (r["fold"], order.get(r["combination"], 99))):
            job = read_run_json(self.run_dir / "jobs" / rec["combination"] / f"fold_{rec['fold']}.json")
            rows.append(row_from_job(job))
        return rows

    def _load_oracle(self):
        path = Path(self.cfg.data.data_dir) / "oracle.csv"
        if not path.is_file():
            return None
        oracle = pd.read_csv(path)
        if "sample_id" not in oracle.columns:
            log.warning("%s has no sample_id column: not a medfusion oracle file, ignored", path)
            return None
        return oracle.set_index("sample_id")

    def _oracle_scores(self, k, va):
        """Where the dataset ships a Bayes oracle (the demo does), score it on this fold's validation samples."""
        if self.oracle is None:
            return
        ids = self.manifest.samples["sample_id"].iloc[va]
        if not ids.isin(self.oracle.index).all():
            log.warning("oracle.csv does not cover every sample; oracle reference skipped")
            self.oracle = None
            return
        o = self.oracle.loc[ids.to_numpy()]
        y = self.manifest.labels[va]
        mods = sorted({m for c in self.combinations for m in c.split("+")})
        self.oracle_rows = [r for r in self.oracle_rows if r["fold"] != k]
        for name, prefix in [("oracle:all", "")] + [(f"oracle:{m}", f"{m}_") for m in mods]:
            cols = [f"{prefix}p_{c}" for c in CLASSES]
            if all(c in o.columns for c in cols):
                qwk = score_predictions(y, o[cols].to_numpy())["qwk"]
                self.oracle_rows.append({"reference": name, "fold": k, "qwk": qwk})
        atomic_write_csv(self.run_dir / "oracle_reference.csv", pd.DataFrame(self.oracle_rows))

    def _oracle_summary(self):
        path = self.run_dir / "oracle_reference.csv"
        if not self.oracle_rows and path.is_file():
            self.oracle_rows = read_run_csv(path).to_dict("records")
        if not self.oracle_rows:
            return None
        return pd.DataFrame(self.oracle_rows).groupby("reference")["qwk"].mean()


def row_from_job(job: dict) -> dict:
    stages = job.get("stages", {})
    s1, s2 = stages.get("stage1"), stages.get("stage2")
    row = {"combination": job["combination"], "fold": job["fold"], "n_val": job["n_val"], **job["metrics"]}
    if s1:
        row.update(stage1_best_epoch=s1["best_epoch"], stage1_qwk=s1["best_val_qwk"])
    if s2:
        row.update(stage2_best_epoch=s2["best_epoch"], stage2_qwk=s2["best_val_qwk"], stage2_kept=job["stage2_kept"],
                   backbone_change=s2["backbone_change"])
    if job.get("fusion_rf_weight"):
        row["fusion_rf_weight"] = job["fusion_rf_weight"]["end"]
    return row


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """results.csv rows with integer epochs kept integer (empty where a combination has no stage)."""
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for col in ("fold", "n_val", "stage1_best_epoch", "stage2_best_epoch"):
        df[col] = df[col].astype("Int64")
    df["stage2_kept"] = df["stage2_kept"].astype("boolean")
    return df


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per combination, mean (and sample std) over folds, sorted by qwk_mean."""
    g = results.groupby("combination")
    summary = pd.DataFrame({
        "n_folds": g["fold"].nunique(),
        "qwk_mean": g["qwk"].mean(), "qwk_std": g["qwk"].std(ddof=1).fillna(0.0),
        "kappa_mean": g["kappa"].mean(), "kappa_std": g["kappa"].std(ddof=1).fillna(0.0),
        "accuracy_mean": g["accuracy"].mean(), "f1_macro_mean": g["f1_macro"].mean(),
        "f1_weighted_mean": g["f1_weighted"].mean(),
    }).reset_index()
    return summary.sort_values("qwk_mean", ascending=False, kind="stable")[SUMMARY_COLUMNS].reset_index(drop=True)


def format_summary(summary: pd.DataFrame, oracle: pd.Series | None = None) -> str:
    width = max([len("combination")] + [len(c) for c in summary["combination"]])
    lines = [f"{'combination':<{width}}  folds  QWK mean +- std   kappa   acc     F1-macro"]
    for r in summary.itertuples():
        lines.append(f"{r.combination:<{width}}  {r.n_folds:>5}  {r.qwk_mean:.4f} +- {r.qwk_std:.4f}  "
                     f"{r.kappa_mean:.4f}  {r.accuracy_mean:.4f}  {r.f1_macro_mean:.4f}")
    if oracle is not None:
        lines.append("reference (Bayes oracle shipped with the dataset, same validation samples):")
        lines += [f"  {name:<{width}} QWK {q:.4f}" for name, q in oracle.items()]
    return "\n".join(lines)
