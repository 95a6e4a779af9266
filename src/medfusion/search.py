"""The search: every requested modality combination x every patient-level fold.

Per fold: the metadata forest (fit on one row per training visit), an inner patient-level
split of the training part into fitting and selection patients, one image pre-training per
image modality (shared by every combination containing it), then per combination a fusion
model with strictly transferred weights, Stage 1 (backbones frozen) and Stage 2 (backbones
unfrozen, kept only if it beats Stage 1 on the selection patients). The fusion weight and the
decision rule are fit on the selection patients; the outer validation fold is predicted once,
after every choice, and only the scorer reads its labels.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras

import numpy as np
import pandas as pd
import tensorflow as tf

from medfusion.config import Config, ConfigError, config_to_dict, config_yaml, result_differences, unfreeze_layers
from medfusion.constants import PRETRAIN_CACHE_DIR
from medfusion.constants import CLASSES, IMAGE_MODALITIES, MODALITIES, all_combinations, canonical_combination, image_modalities_of
from medfusion.data.folds import (check_fold_classes, check_folds, fold_indices, hold_out_patients, make_folds,
                                  read_fold_file, read_patient_file, selection_split, subsample_patients)
from medfusion.data.manifest import Manifest
from medfusion.models.losses import focal_alpha
from medfusion.evaluation.aggregate import compare, format_summary, pooled_by_combination, results_frame, row_from_job, summarize
from medfusion.evaluation.decisions import decide, fit_decision, fit_fusion_weight
from medfusion.evaluation.oracle import OracleReference
from medfusion.evaluation.visits import PROBA_COLUMNS, visit_scores
from medfusion.bundles import bundle_dir, load_bundle, save_bundle
from medfusion.models.fusion import fusion_layer
from medfusion.models.metrics import score_predictions
from medfusion.runs import (FileLog, RunState, atomic_write_csv, atomic_write_json, atomic_write_text, crash_point,
                            prepare_run_dir, remove_stale_temporaries)
from medfusion.runs import (RunFolderError, check_run_folder, folds_problem, read_run_arrays, read_run_csv,
                            read_run_json, read_run_yaml, set_aside, stage_folder_problem)
from medfusion.training.stages import (backbone_snapshot, predict, relative_change, run_stage,
                                       set_backbones_trainable)
from medfusion.training.checkpoint import StageCheckpoint, load_arrays, save_arrays
from medfusion.training.devices import describe
from medfusion.training.transfer import transfer_weights

log = logging.getLogger("medfusion")



@dataclass(frozen=True)
class FoldSplit:
    """Positional indices of one fold: outer train/val, and the train part's fitting/selection split."""
    train: np.ndarray
    val: np.ndarray
    fit: np.ndarray
    sel: np.ndarray


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
        self.run_dir = Path(cfg.runtime.logs_dir) / cfg.runtime.run_name
        self.cache_dir = Path(cfg.runtime.logs_dir) / PRETRAIN_CACHE_DIR
        self.oracle_ref = self._oracle()

    def _oracle(self) -> OracleReference:
        return OracleReference(self.cfg.data.data_dir, self.run_dir, {m for c in self.combinations for m in c.split("+")})

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
        if self.cfg.search.folds_file:
            assignment = read_fold_file(self.cfg.search.folds_file, manifest, self.cfg.search.cv_folds)
            log.info("folds: read from %s (validated: every sample covered, no patient in two folds)",
                     self.cfg.search.folds_file)
        else:
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
            manifest, self.test_manifest = self._hold_out(manifest, resuming)
            self.manifest = manifest
            self.oracle_ref = self._oracle()  # the demo's oracle.csv exists once the data check generated it
            self.assignment = self._folds(manifest, resuming)
            for warning in check_fold_classes(manifest, self.assignment, cfg.search.cv_folds):
                log.warning("%s", warning)
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

    def _hold_out(self, manifest: Manifest, resuming: bool):
        """(cross-validation manifest, held-out test manifest or None); the test patients never enter a fold."""
        s, path = self.cfg.search, self.run_dir / "test_patients.json"
        if resuming and path.is_file():
            patients = read_run_json(path)["patients"]
        elif s.test_fraction > 0:
            patients = hold_out_patients(manifest, s.test_fraction, s.seed)
        elif s.test_patients_file:
            patients = read_patient_file(s.test_patients_file, manifest)
        else:
            return manifest, None
        is_test = manifest.samples["patient"].isin(set(patients)).to_numpy()
        atomic_write_json(path, {"patients": patients, "n_samples": int(is_test.sum())})
        log.info("held-out test: %d patients, %d samples set aside before folding (%s); predicted once, after the "
                 "search, by the best combination's fold ensemble", len(patients), int(is_test.sum()),
                 _distribution(manifest.labels[is_test]))
        return manifest.subset(~is_test), manifest.subset(is_test)

    def _evaluate_test(self, summary: pd.DataFrame) -> None:
        """The chosen model (best visit QWK in cross-validation) on the held-out patients, once."""
        from medfusion.predict import choose_combination, fold_ensemble, prediction_tables, scores

        path = self.run_dir / "test_results.csv"
        if path.is_file():
            log.warning("held-out test (already evaluated, not repeated):\n%s", read_run_csv(path).to_string(index=False))
            return
        combo = choose_combination(self.run_dir)
        proba, rule, _ = fold_ensemble(self.run_dir, self.cfg, combo, self.test_manifest, self.strategy)
        samples, _ = prediction_tables(self.test_manifest, proba, rule)
        atomic_write_csv(self.run_dir / "test_predictions.csv",
                         samples.assign(y_true=self.test_manifest.labels))
        sc = scores(self.test_manifest, proba, rule, self.cfg.search.bootstrap_resamples, self.cfg.search.seed)
        row = {"combination": combo, "chosen_by": "visit_qwk_mean in cross-validation", "n_patients": sc["n_patients"],
               "n_samples": sc["n_samples"], **{k: sc["view"][k] for k in ("qwk", "kappa", "accuracy", "f1_macro")},
               **{k: v for k, v in sc["visit"].items() if k != "resamples"}}
        atomic_write_csv(path, pd.DataFrame([row]))
        log.warning("held-out test patients (%d patients, %d visits; never in any fold, training or selection split): "
                    "%s visit QWK %.4f [95%% CI %.3f, %.3f], view QWK %.4f. This is the only unbiased estimate of "
                    "the chosen model: the cross-validation table above chose it.", sc["n_patients"],
                    row["n_val_visits"], combo, row["visit_qwk"], row["visit_qwk_ci_low"], row["visit_qwk_ci_high"],
                    row["qwk"])

    def _finish(self, t0: float) -> pd.DataFrame:
        ckpts = self.run_dir / "checkpoints"
        if ckpts.is_dir() and not any(p.is_file() for p in ckpts.rglob("*")):
            shutil.rmtree(ckpts)  # only empty job folders are left once every job is recorded
        if self.cfg.runtime.resume_mode == "from_predictions":
            self.rescore_from_predictions()
        late_rows: list[dict] = []
        visits = pooled_by_combination(self.fold_predictions(late_rows))
        results = results_frame(self.result_rows() + late_rows)
        s = self.cfg.search
        summary = summarize(results, visits, s.bootstrap_resamples, s.seed)
        comparisons = compare(summary, results, visits, s.bootstrap_resamples, s.seed)
        atomic_write_csv(self.run_dir / "results.csv", results)
        atomic_write_csv(self.run_dir / "summary.csv", summary)
        atomic_write_csv(self.run_dir / "comparisons.csv", comparisons)
        if s.selection == "outer":
            log.warning("search.selection is 'outer': epochs, Stage 2, the fusion weight and the decision rule were "
                        "chosen on the reported folds, so these scores are optimistic (the reference study's "
                        "protocol, for comparison only)")
        log.warning("\n%s", format_summary(summary, comparisons, self.oracle_ref.summary()))
        if getattr(self, "test_manifest", None) is not None:
            self._evaluate_test(summary)
        log.warning("search finished in %.1f min; results in %s", (time.time() - t0) / 60, self.run_dir)
        from medfusion.review import run_review

        run_review(self.run_dir, strict=False, log=log)
        return summary

    def fold_predictions(self, late_rows: list | None = None) -> dict:
        """combination -> [(prediction table, decision rule)] of every finished fold, from the run folder.

        The late-fusion baselines (evaluation/late_fusion.py) are added as combinations (argmax): their
        averaged tables are written to predictions/<folder_name>/fold_<k>.csv and, when `late_rows` is
        a list, their results rows are appended to it.
        """
        from medfusion.evaluation.late_fusion import folder_name, late_fusion_row, late_fusion_tables

        out: dict = {}
        by_fold: dict = {}
        for rec in self.state.done_jobs():
            combo, k = rec["combination"], rec["fold"]
            pred = read_run_csv(self.run_dir / "predictions" / combo / f"fold_{k}.csv")
            if "visit" not in pred.columns:  # written before visits were recorded: each view is its own visit
                pred["visit"] = pred["sample_id"]
            job = read_run_json(self.run_dir / "jobs" / combo / f"fold_{k}.json")
            out.setdefault(combo, []).append((pred, job.get("decision")))
            by_fold.setdefault(combo, {})[int(k)] = pred
        for name, tables in late_fusion_tables(by_fold, self.combinations).items():
            for k, pred in sorted(tables.items()):
                atomic_write_csv(self.run_dir / "predictions" / folder_name(name) / f"fold_{k}.csv", pred)
                out.setdefault(name, []).append((pred, None))
                if late_rows is not None:
                    late_rows.append(late_fusion_row(name, k, pred))
            log.info("late-fusion baseline %s: %d fold(s), predictions/%s/", name, len(tables), folder_name(name))
        return out

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

    def split(self, k: int) -> FoldSplit:
        """Fold k's outer training/validation indices and the fitting/selection split of its training part."""
        s, manifest = self.cfg.search, self.manifest
        tr, va = fold_indices(manifest, self.assignment, k)
        if s.selection == "outer":
            return FoldSplit(tr, va, tr, va)
        fit, sel = selection_split(manifest, tr, s.selection_fraction, s.seed + k)
        if set(manifest.labels[fit]) != set(range(len(CLASSES))):
            raise ValueError(f"fold {k}: the fitting part of the inner selection split lacks a class "
                             f"({_distribution(manifest.labels[fit])}); lower search.selection_fraction or "
                             "--cv_folds, or add patients")
        return FoldSplit(tr, va, fit, sel)

    def _log_split(self, k: int, sp: FoldSplit) -> dict:
        m, cfg = self.manifest, self.cfg
        pats = lambda idx: len(set(m.patients[idx]))  # noqa: E731
        log.info("=== fold %d/%d: train %d samples / %d patients, validation %d samples / %d patients",
                 k + 1, cfg.search.cv_folds, len(sp.train), pats(sp.train), len(sp.val), pats(sp.val))
        log.info("fold %d train classes: %s", k, _distribution(m.labels[sp.train]))
        log.info("fold %d validation classes: %s", k, _distribution(m.labels[sp.val]))
        if cfg.search.selection == "inner":
            log.info("fold %d inner split: fitting %d samples / %d patients (%s); selection %d samples / %d patients "
                     "(%s) makes every choice; the validation fold is only scored", k, len(sp.fit), pats(sp.fit),
                     _distribution(m.labels[sp.fit]), len(sp.sel), pats(sp.sel), _distribution(m.labels[sp.sel]))
        else:
            log.warning("fold %d: search.selection is 'outer': the validation fold picks epochs, Stage 2, the "
                        "fusion weight and the decision rule (optimistic scores)", k)
        return {"n_train": len(sp.train), "n_val": len(sp.val), "train_patients": pats(sp.train),
                "val_patients": pats(sp.val), "train_class_counts": _counts(m.labels[sp.train]),
                "val_class_counts": _counts(m.labels[sp.val]), "selection": cfg.search.selection,
                "n_fit": len(sp.fit), "n_selection": len(sp.sel),
                "selection_patients": sorted(int(p) for p in set(m.patients[sp.sel]))
                if cfg.search.selection == "inner" else None}

    def run_fold(self, k: int) -> None:
        cfg, manifest = self.cfg, self.manifest
        sp = self.split(k)
        fold_info = self._log_split(k, sp)
        self.oracle_ref.score_fold(k, manifest.samples["sample_id"].iloc[sp.val], manifest.labels[sp.val])
        todo = self.pending(k)
        if not todo:
            return
        seed = cfg.search.seed + k
        p_meta = self.forest(k, sp.train, sp.val, seed) if any("metadata" in c.split("+") for c in todo) else None
        pretrained = {}
        for m in self.image_modalities:
            if any(m in image_modalities_of(c) for c in todo):
                pretrained[m] = self.pretrain(k, m, sp.fit, sp.sel, seed)
        for combo in todo:
            t = time.time()
            log.info("--- fold %d job %s", k, combo)
            job = {"combination": combo, "fold": k, **fold_info, "stages": {}, "transfer": [], "pretrain": {},
                   "max_alpha_ratio": cfg.train.max_alpha_ratio}
            files = []
            if combo == "metadata":
                proba_sel, proba = p_meta[sp.sel], p_meta[sp.val]
            else:
                for m in image_modalities_of(combo):
                    _, result, key, reused = pretrained[m]
                    job["pretrain"][m] = {**result.to_dict(), "cache_key": key, "reused": reused}
                    log.info("  pre-trained %s: %s cache entry %s", m, "reused" if reused else "trained this run", key)
                model, proba_sel, proba = self.train_combination(combo, k, sp, p_meta, pretrained, seed, job)
            job["decision"] = fit_decision(cfg.train.decision, proba_sel, manifest.labels[sp.sel])
            files += save_bundle(self.run_dir, combo, k, cfg, model=None if combo == "metadata" else model,
                                 forest_file=self.forest_pipeline_path(k) if "metadata" in combo.split("+") else None,
                                 decision=job["decision"], fusion_rf_weight=job.get("fusion_rf_weight"),
                                 selection=cfg.search.selection)
            if job["decision"]["kind"] != "argmax":
                log.info("  decision rule fit on the selection split: thresholds %s on the expected class index "
                         "(selection QWK %.4f)", job["decision"]["thresholds"], job["decision"]["selection_qwk"])
            job["seconds"] = round(time.time() - t, 2)
            files += self._record(combo, k, sp.val, proba, job)
            self.state.mark_done(combo, k, files)
            shutil.rmtree(self.run_dir / "checkpoints" / combo / f"fold_{k}", ignore_errors=True)
            log.info("--- fold %d job %s done in %.1fs: QWK %.4f, visit QWK %.4f", k, combo, time.time() - t,
                     job["metrics"]["qwk"], job["metrics"]["visit_qwk"])
            atomic_write_csv(self.run_dir / "results.csv", results_frame(self.result_rows()))
            crash_point("job_done")
            gc.collect()

    def forest(self, k, tr, va, seed) -> np.ndarray:
        """Forest probabilities for every sample of fold k (NaN elsewhere), computed once and kept.

        Fit on one row per training visit (a visit's views share its metadata row, so per-view
        rows would be duplicates weighted by view count); training visits get out-of-fold
        probabilities from an inner patient-grouped split; every view gets its visit's row.
        """
        path = self.run_dir / "forest" / f"fold_{k}.npz"
        out = np.full((len(self.manifest), len(CLASSES)), np.nan)
        groups = None
        if path.is_file():
            try:
                groups = read_run_arrays(path, load_arrays)
            except RunFolderError as exc:
                log.warning("%s; the forest is recomputed (it is deterministic)", str(exc).split(". To continue")[0])
        if groups is not None and {"train", "val", "per_visit"} <= set(groups) and self.forest_pipeline_path(k).is_file():
            if groups["train"][0].shape[0] == len(tr) and groups["val"][0].shape[0] == len(va):
                log.info("fold %d metadata forest: probabilities reused from %s", k, path)
                out[tr], out[va] = groups["train"][0], groups["val"][0]
                return out
        from medfusion.models.random_forest import MetadataForest

        t = time.time()
        samples, features = self.manifest.samples, self.manifest.feature_columns
        visit = samples["visit"].to_numpy()
        first_tr = pd.Series(tr).groupby(visit[tr], sort=True).first().to_numpy()
        first_va = pd.Series(va).groupby(visit[va], sort=True).first().to_numpy()
        forest = MetadataForest(self.cfg.forest, seed)
        p_vis_tr, p_vis_va = forest.fit_predict(
            samples.iloc[first_tr][features].reset_index(drop=True), self.manifest.labels[first_tr],
            self.manifest.patients[first_tr], samples.iloc[first_va][features].reset_index(drop=True))
        by_visit = {**dict(zip(visit[first_tr], p_vis_tr)), **dict(zip(visit[first_va], p_vis_va))}
        out[tr] = np.stack([by_visit[v] for v in visit[tr]])
        out[va] = np.stack([by_visit[v] for v in visit[va]])
        save_arrays(path, {"train": [out[tr]], "val": [out[va]], "per_visit": [np.ones(1)]})
        self._save_pipeline(forest.pipeline_, self.forest_pipeline_path(k))
        log.info("fold %d metadata forest: fit on %d training visits (one row per visit, %d views), %d features, "
                 "inner out-of-fold probabilities for training visits, %.1fs", k, len(first_tr), len(tr),
                 len(features), time.time() - t)
        return out

    def forest_pipeline_path(self, k: int) -> Path:
        return self.run_dir / "forest" / f"fold_{k}.joblib"

    @staticmethod
    def _save_pipeline(pipeline, path: Path) -> None:
        """The fitted preprocessing + forest, for bundles and --mode predict (written atomically)."""
        import joblib

        tmp = path.with_name(f".{path.name}.tmp")
        joblib.dump(pipeline, tmp)
        tmp.replace(path)

    def pretrain_key(self, modality, tr, va, seed) -> str:
        """Hash of everything that determines a pre-training's result."""
        from medfusion import __version__
        from medfusion.models.backbones import weights_file_sha256

        cfg = self.cfg
        crops = self.crops[modality][tr]
        payload = {
            # version 2: warm-up + fine-tune recipe, from-scratch BatchNorm trained, ImageNet input scaling from files
            "version": 2, "medfusion": __version__, "weights_sha256": weights_file_sha256(cfg.model.weights),
            "modality": modality, "train_ids": self.manifest.samples["sample_id"].iloc[tr].tolist(),
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
        from medfusion.training.pretrain import pretrain_phases, run_pretraining

        cfg = self.cfg
        key = self.pretrain_key(modality, tr, va, seed)
        self._set_aside_if_damaged(self.cache_dir / key, "pre-training cache entry")
        reused = StageCheckpoint(self.cache_dir / key).completed() is not None
        log.info("--- fold %d pre-training %s: cache key %s (%s)", k, modality, key, "found, reused" if reused else
                 "training; equal alpha; phases " + ", ".join(name for name, _ in pretrain_phases(cfg)))
        keras.utils.set_random_seed(seed)
        with self.strategy.scope():
            model = build_pretrain_model(modality, cfg.model, cfg.data.image_size)
        y = self.manifest.labels
        result = run_pretraining(modality, model, self.strategy, ({modality: self.crops[modality][tr]}, y[tr]),
                                 ({modality: self.crops[modality][va]}, y[va]), cfg, seed,
                                 checkpoint_dir=self.cache_dir / key,
                                 tensorboard_dir=self.run_dir / "tensorboard" / f"pretrain-{modality}" / f"fold_{k}")
        if not reused:
            atomic_write_json(self.cache_dir / key / "origin.json",
                              {"run": cfg.runtime.run_name, "fold": k, "modality": modality})
        return model, result, key, reused

    def train_combination(self, combo, k, sp, p_meta, pretrained, seed, job):
        """Transfer, Stage 1, Stage 2 on the fitting part; every choice on the selection part.

        Returns (model, selection probabilities, validation probabilities); the validation fold
        is predicted once, after the last choice.
        """
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
        inputs = lambda idx: _inputs(self.crops, idx, mods, p_meta[idx] if has_meta else None)  # noqa: E731
        train, sel = (inputs(sp.fit), y[sp.fit]), (inputs(sp.sel), y[sp.sel])
        alpha = focal_alpha(y[sp.fit], 3, cfg.train.max_alpha_ratio)
        job["alpha"] = [float(a) for a in alpha]
        fusion = fusion_layer(model)
        # the weight trains with the heads (it lets the image head learn as a classifier of its own), but its
        # final value is fit afterwards on the selection split, where neither branch was fit
        honest_weight = fusion is not None and cfg.search.selection == "inner"
        set_backbones_trainable(model, False)
        s1_ckpt = StageCheckpoint(ckpt_dir / "stage1")
        s1 = run_stage("stage1", model, self.strategy, train, sel, cfg.train.stage1, alpha, cfg.train.focal_gamma,
                       cfg.train.batch_size, seed, cfg.train.augment, checkpoint=s1_ckpt,
                       tensorboard_dir=self.run_dir / "tensorboard" / combo / f"fold_{k}" / "stage1")
        job["stages"]["stage1"] = s1.to_dict()
        w_end = s1.fusion_rf_weight_end
        if cfg.train.stage2.epochs > 0:
            w_end = self._stage2(model, ckpt_dir, train, sel, alpha, seed, s1, s1_ckpt, job) or w_end
        else:
            log.info("  [stage2] skipped: train.stage2.epochs is 0")
            job["stage2_skipped"] = True
        batch = max(cfg.train.batch_size, 32)
        if honest_weight:
            job["fusion_rf_weight"] = self._fit_fusion_weight(model, sel, mods, batch)
        elif fusion is not None:
            job["fusion_rf_weight"] = {"start": s1.fusion_rf_weight_start, "end": w_end, "method": "trained"}
        replicas = self.strategy.num_replicas_in_sync
        proba_sel = predict(model, sel[0], batch, replicas)
        return model, proba_sel, predict(model, inputs(sp.val), batch, replicas)

    def _stage2(self, model, ckpt_dir, train, sel, alpha, seed, s1, s1_ckpt, job):
        """Stage 2, kept only if it beats Stage 1 on the selection split; returns its end fusion weight if kept."""
        cfg = self.cfg
        set_backbones_trainable(model, True, unfreeze_layers(cfg.train.unfreeze))
        before = backbone_snapshot(model)
        s2_ckpt = StageCheckpoint(ckpt_dir / "stage2")
        fresh = s2_ckpt.completed() is None
        s2 = run_stage("stage2", model, self.strategy, train, sel, cfg.train.stage2, alpha,
                       cfg.train.focal_gamma, cfg.train.batch_size, seed + 1000, cfg.train.augment,
                       checkpoint=s2_ckpt, tensorboard_dir=self.run_dir / "tensorboard" /
                       ckpt_dir.relative_to(self.run_dir / "checkpoints") / "stage2")
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

    def _fit_fusion_weight(self, model, sel, mods, batch) -> dict:
        """The forest weight that best mixes the two branches' selection-split probabilities (log loss)."""
        x, y = sel
        with self.strategy.scope():
            image_model = keras.Model({m: model.input[m] for m in mods}, model.get_layer("image_classifier").output)
        p_img = predict(image_model, {m: x[m] for m in mods}, batch, self.strategy.num_replicas_in_sync)
        fusion = fusion_layer(model)
        fit = fit_fusion_weight(x["metadata"], p_img, y, self.cfg.model.fusion_init_rf_weight)
        fit["trained"] = fusion.rf_weight()
        fusion.set_rf_weight(fit["weight"])
        log.info("  fusion weight fit on the selection split (%d samples; neither branch was fit on them): forest "
                 "weight %.3f after training -> %.3f, selection log loss %.4f", fit["n"], fit["trained"], fit["weight"],
                 fit["log_loss"])
        return {"start": fit["init"], "trained": fit["trained"], "end": fusion.rf_weight(),
                "method": "selection_log_loss", "selection_log_loss": fit["log_loss"], "n_selection": fit["n"]}

    def predict_fold(self, k: int) -> None:
        """--resume_mode from_models: new predictions from each finished job's bundle, without training."""
        cfg = self.cfg
        tr, va = fold_indices(self.manifest, self.assignment, k)
        for combo in self.combinations:
            job_path = self.run_dir / "jobs" / combo / f"fold_{k}.json"
            why = self.state.problem(combo, k, only=("bundles/", "forest/"))
            if why is not None or not job_path.is_file():
                log.warning("fold %d job %s: %s; nothing to recompute from (continue the run with "
                            "--resume_mode auto)", k, combo, why or "no job record")
                continue
            job = read_run_json(job_path)
            bundle = load_bundle(bundle_dir(self.run_dir, combo, k), cfg)
            has_meta = "metadata" in combo.split("+")
            p_va = read_run_arrays(self.run_dir / "forest" / f"fold_{k}.npz", load_arrays)["val"][0] if has_meta else None
            if combo == "metadata":
                proba = p_va
            else:
                proba = predict(bundle.model, _inputs(self.crops, va, image_modalities_of(combo), p_va),
                                max(cfg.train.batch_size, 32), self.strategy.num_replicas_in_sync)
            files = [f for f in self.state.files(combo, k) if f.startswith(("bundles/", "forest/"))]
            files += self._record(combo, k, va, proba, job)
            self.state.mark_done(combo, k, files)
            log.info("fold %d job %s: predictions recomputed from its bundle, QWK %.4f", k, combo,
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
            if "visit" not in pred.columns:
                pred["visit"] = pred["sample_id"]
            job = read_run_json(job_path)
            job.update(self._scores(pred, job.get("decision")))
            atomic_write_json(job_path, job)
            files = [f for f in rec["files"] if not f.startswith("jobs/")] + [f"jobs/{combo}/fold_{k}.json"]
            self.state.mark_done(combo, k, files)
        log.info("from_predictions: %d jobs rescored from their prediction files", len(self.state.done_jobs()))

    # ------------------------------------------------------------------ outputs
    @staticmethod
    def _scores(pred: pd.DataFrame, rule) -> dict:
        """Per-view and per-visit metrics and predicted-class counts of one prediction table."""
        proba = pred[PROBA_COLUMNS].to_numpy()
        metrics = {**score_predictions(pred["y_true"].to_numpy(), proba, rule), **visit_scores(pred, rule)}
        counts = np.bincount(decide(proba, rule), minlength=len(CLASSES))
        return {"metrics": metrics, "val_pred_counts": dict(zip(CLASSES, counts.tolist()))}

    def _record(self, combo, k, va, proba, job) -> list[str]:
        """Write predictions and the job record; returns their paths relative to the run folder."""
        samples = self.manifest.samples.iloc[va]
        pred = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "patient": samples["patient"].to_numpy(),
                             "visit": samples["visit"].to_numpy(), "y_true": self.manifest.labels[va],
                             **{c: proba[:, i] for i, c in enumerate(PROBA_COLUMNS)}})
        pred_rel, job_rel = f"predictions/{combo}/fold_{k}.csv", f"jobs/{combo}/fold_{k}.json"
        atomic_write_csv(self.run_dir / pred_rel, pred)
        job.update(self._scores(pred, job.get("decision")), predictions_file=pred_rel)
        atomic_write_json(self.run_dir / job_rel, job)
        s = job["metrics"]
        log.info("  fold %d %s: QWK %.4f (visits %.4f, %d) kappa %.4f acc %.4f F1-macro %.4f; predicted classes %s",
                 k, combo, s["qwk"], s["visit_qwk"], s["n_val_visits"], s["kappa"], s["accuracy"], s["f1_macro"],
                 job["val_pred_counts"])
        return [pred_rel, job_rel]

    def result_rows(self) -> list[dict]:
        """results.csv rows, rebuilt from the finished jobs' records: one row per (combination, fold)."""
        return [row_from_job(read_run_json(self.run_dir / "jobs" / rec["combination"] / f"fold_{rec['fold']}.json"))
                for rec in self.state.done_jobs()]

