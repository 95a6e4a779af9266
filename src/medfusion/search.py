"""The search: every requested modality combination x every patient-level fold.

Per fold: the metadata forest (fit on training patients only), one image pre-training per
image modality (shared by every combination containing it), then per combination a fusion
model with strictly transferred weights, Stage 1 (backbones frozen) and Stage 2
(backbones unfrozen, kept only if it improves validation QWK).
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from medfusion.config import Config, config_yaml, unfreeze_layers
from medfusion.constants import CLASSES, IMAGE_MODALITIES, MODALITIES, all_combinations, canonical_combination, image_modalities_of
from medfusion.data.folds import fold_indices, make_folds, subsample_patients
from medfusion.data.manifest import Manifest
from medfusion.models.losses import equal_alpha, focal_alpha
from medfusion.models.metrics import score_predictions
from medfusion.runs import FileLog, atomic_write_csv, atomic_write_json, atomic_write_text, prepare_run_dir
from medfusion.training.stages import (backbone_snapshot, predict, relative_change, run_stage,
                                       set_backbones_trainable)
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


def load_dataset(cfg: Config) -> Manifest:
    from medfusion.data.dfu import load_dfu
    from medfusion.data.synthetic import ensure_demo

    data_dir = Path(cfg.data.data_dir)
    if cfg.data.demo:
        ensure_demo(data_dir, seed=cfg.data.demo_seed, n_patients=cfg.data.demo_patients, log=log)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {str(data_dir)!r} does not exist; pass --data_dir PATH to a folder "
                                "in the DATA_FORMAT layout (or use configs/demo.yaml for the embedded demo)")
    return load_dfu(data_dir, cfg.data, log)


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


class Search:
    """Holds what one search shares across folds and jobs; `run()` does the work."""

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy):
        self.cfg, self.strategy = cfg, strategy
        self.combinations = resolve_combinations(cfg)
        self.image_modalities = [m for m in IMAGE_MODALITIES if any(m in image_modalities_of(c) for c in self.combinations)]
        self.results: list[dict] = []
        self.oracle_rows: list[dict] = []

    # ------------------------------------------------------------------ orchestration
    def run(self) -> pd.DataFrame:
        cfg = self.cfg
        t0 = time.time()
        self.run_dir = prepare_run_dir(cfg.runtime.logs_dir, cfg.runtime.run_name, log)
        atomic_write_text(self.run_dir / "config.yaml", config_yaml(cfg))
        with FileLog(self.run_dir / "run.log"):
            log.info("run %s: %d combinations x %d folds -> %s", cfg.runtime.run_name, len(self.combinations),
                     cfg.search.cv_folds, self.run_dir)
            log.info("combinations: %s", ", ".join(self.combinations))
            log.info("devices: %s; per-replica batch %d, global batch %d", describe(self.strategy),
                     cfg.train.batch_size, cfg.train.batch_size * self.strategy.num_replicas_in_sync)
            manifest = load_dataset(cfg)
            manifest = subsample_patients(manifest, cfg.search.data_percentage, cfg.search.seed)
            log.info("dataset: %d samples, %d visits, %d patients; classes %s", len(manifest),
                     manifest.samples["visit"].nunique(), manifest.samples["patient"].nunique(),
                     _distribution(manifest.labels))
            assignment = make_folds(manifest, cfg.search.cv_folds, cfg.search.seed)
            atomic_write_json(self.run_dir / "folds.json", assignment)
            self.manifest, self.assignment = manifest, assignment
            self.oracle = self._load_oracle()
            self.crops = {}
            for m in self.image_modalities:
                from medfusion.data.images import load_crops

                t = time.time()
                self.crops[m] = load_crops(manifest, m, cfg.data.image_size, cfg.data.box_margin, log=log)
                log.info("loaded %d %s crops at %dpx in %.1fs", len(manifest), m, cfg.data.image_size, time.time() - t)
        for k in range(cfg.search.cv_folds):
            with FileLog(self.run_dir / f"fold_{k}.log"), FileLog(self.run_dir / "run.log"):
                self.run_fold(k)
        summary = summarize(results_frame(self.results))
        atomic_write_csv(self.run_dir / "summary.csv", summary)
        with FileLog(self.run_dir / "run.log"):
            log.warning("\n%s", format_summary(summary, self._oracle_summary()))
            log.warning("search finished in %.1f min; results in %s", (time.time() - t0) / 60, self.run_dir)
        return summary

    def run_fold(self, k: int) -> None:
        cfg, manifest = self.cfg, self.manifest
        tr, va = fold_indices(manifest, self.assignment, k)
        y_tr, y_va = manifest.labels[tr], manifest.labels[va]
        log.info("=== fold %d/%d: train %d samples / %d patients, validation %d samples / %d patients",
                 k + 1, cfg.search.cv_folds, len(tr), len(set(manifest.patients[tr])), len(va),
                 len(set(manifest.patients[va])))
        log.info("fold %d train classes: %s", k, _distribution(y_tr))
        log.info("fold %d validation classes: %s", k, _distribution(y_va))
        seed = cfg.search.seed + k
        p_tr = p_va = None
        if any("metadata" in c.split("+") for c in self.combinations):
            from medfusion.models.random_forest import MetadataForest

            t = time.time()
            features = manifest.feature_columns
            forest = MetadataForest(cfg.forest, seed)
            p_tr, p_va = forest.fit_predict(manifest.samples.iloc[tr][features].reset_index(drop=True), y_tr,
                                            manifest.patients[tr],
                                            manifest.samples.iloc[va][features].reset_index(drop=True))
            log.info("fold %d metadata forest: %d features, inner out-of-fold probabilities for training rows, "
                     "%.1fs", k, len(features), time.time() - t)
        self._oracle_scores(k, va)
        pretrained = {}
        for m in self.image_modalities:
            pretrained[m] = self.pretrain(k, m, tr, va, seed)
        fold_info = {"n_train": len(tr), "n_val": len(va), "train_patients": len(set(manifest.patients[tr])),
                     "val_patients": len(set(manifest.patients[va])), "train_class_counts": _counts(y_tr),
                     "val_class_counts": _counts(y_va)}
        for combo in self.combinations:
            t = time.time()
            log.info("--- fold %d job %s", k, combo)
            job = {"combination": combo, "fold": k, **fold_info, "stages": {}, "transfer": [], "pretrain": {},
                   "max_alpha_ratio": cfg.train.max_alpha_ratio}
            if combo == "metadata":
                proba, extra = p_va, {}
            else:
                for m in image_modalities_of(combo):
                    job["pretrain"][m] = pretrained[m]._medfusion_stage.to_dict()
                proba, extra = self.train_combination(combo, k, tr, va, p_tr, p_va, pretrained, seed, job)
            job["seconds"] = round(time.time() - t, 2)
            self._record(combo, k, va, proba, extra, job)
            log.info("--- fold %d job %s done in %.1fs: QWK %.4f", k, combo, time.time() - t, self.results[-1]["qwk"])
            gc.collect()

    def pretrain(self, k, modality, tr, va, seed):
        from medfusion.models.fusion import build_pretrain_model

        cfg = self.cfg
        log.info("--- fold %d pre-training %s (equal alpha, whole model trainable)", k, modality)
        with self.strategy.scope():
            model = build_pretrain_model(modality, cfg.model, cfg.data.image_size)
        y = self.manifest.labels
        result = run_stage(f"pretrain {modality}", model, self.strategy,
                           ({modality: self.crops[modality][tr]}, y[tr]), ({modality: self.crops[modality][va]}, y[va]),
                           cfg.train.pretrain, equal_alpha(3), cfg.train.focal_gamma, cfg.train.batch_size, seed,
                           cfg.train.augment)
        model._medfusion_stage = result
        return model

    def train_combination(self, combo, k, tr, va, p_tr, p_va, pretrained, seed, job):
        from medfusion.models.fusion import build_fusion_model

        cfg = self.cfg
        mods = image_modalities_of(combo)
        has_meta = "metadata" in combo.split("+")
        y = self.manifest.labels
        with self.strategy.scope():
            model = build_fusion_model(combo, cfg.model, cfg.data.image_size)
        for m in mods:
            report = transfer_weights(pretrained[m], model, exclude=("output",))
            log.info("  %s", report.summary())
            job["transfer"].append(report.to_dict())
        train = (_inputs(self.crops, tr, mods, p_tr if has_meta else None), y[tr])
        val = (_inputs(self.crops, va, mods, p_va if has_meta else None), y[va])
        alpha = focal_alpha(y[tr], 3, cfg.train.max_alpha_ratio)
        job["alpha"] = [float(a) for a in alpha]
        set_backbones_trainable(model, False)
        s1 = run_stage("stage1", model, self.strategy, train, val, cfg.train.stage1, alpha, cfg.train.focal_gamma,
                       cfg.train.batch_size, seed, cfg.train.augment)
        job["stages"]["stage1"] = s1.to_dict()
        extra = {"stage1_best_epoch": s1.best_epoch, "stage1_qwk": s1.best_val_qwk,
                 "fusion_rf_weight": s1.fusion_rf_weight_end}
        if cfg.train.stage2.epochs > 0:
            stage1_weights = model.get_weights()
            set_backbones_trainable(model, True, unfreeze_layers(cfg.train.unfreeze))
            before = backbone_snapshot(model)
            s2 = run_stage("stage2", model, self.strategy, train, val, cfg.train.stage2, alpha,
                           cfg.train.focal_gamma, cfg.train.batch_size, seed + 1000, cfg.train.augment)
            s2.backbone_change = relative_change(before, backbone_snapshot(model))
            kept = s2.best_val_qwk > s1.best_val_qwk
            log.info("  [stage2] relative backbone weight change %.3e; val QWK %.4f vs Stage 1 %.4f -> %s",
                     s2.backbone_change, s2.best_val_qwk, s1.best_val_qwk,
                     "kept Stage 2" if kept else "reverted to Stage 1 weights")
            job["stages"]["stage2"] = s2.to_dict()
            job["stage2_kept"] = kept
            if not kept:
                model.set_weights(stage1_weights)
            extra.update(stage2_best_epoch=s2.best_epoch, stage2_qwk=s2.best_val_qwk, stage2_kept=kept,
                         backbone_change=s2.backbone_change)
            if kept and has_meta:
                extra["fusion_rf_weight"] = s2.fusion_rf_weight_end
        else:
            log.info("  [stage2] skipped: train.stage2.epochs is 0")
            job["stage2_skipped"] = True
        if has_meta:
            job["fusion_rf_weight"] = {"start": s1.fusion_rf_weight_start, "end": extra["fusion_rf_weight"]}
        proba = predict(model, val[0], max(cfg.train.batch_size, 32))
        return proba, extra

    # ------------------------------------------------------------------ outputs
    def _record(self, combo, k, va, proba, extra, job):
        samples = self.manifest.samples.iloc[va]
        y = self.manifest.labels[va]
        pred = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "patient": samples["patient"].to_numpy(),
                             "y_true": y, "p_I": proba[:, 0], "p_P": proba[:, 1], "p_R": proba[:, 2]})
        atomic_write_csv(self.run_dir / "predictions" / combo / f"fold_{k}.csv", pred)
        scores = score_predictions(y, proba)
        row = {"combination": combo, "fold": k, "n_val": len(va), **scores, **extra}
        self.results = [r for r in self.results if not (r["combination"] == combo and r["fold"] == k)] + [row]
        atomic_write_csv(self.run_dir / "results.csv", results_frame(self.results))
        pred_counts = np.bincount(proba.argmax(axis=1), minlength=3)
        job.update(metrics=scores, val_pred_counts=dict(zip(CLASSES, pred_counts.tolist())),
                   predictions_file=f"predictions/{combo}/fold_{k}.csv")
        atomic_write_json(self.run_dir / "jobs" / combo / f"fold_{k}.json", job)
        log.info("  fold %d %s: QWK %.4f kappa %.4f acc %.4f F1-macro %.4f; predicted classes %s", k, combo,
                 scores["qwk"], scores["kappa"], scores["accuracy"], scores["f1_macro"],
                 dict(zip(CLASSES, pred_counts.tolist())))

    def _load_oracle(self):
        path = Path(self.cfg.data.data_dir) / "oracle.csv"
        if not path.is_file():
            return None
        return pd.read_csv(path).set_index("sample_id")

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
        for name, prefix in [("oracle:all", "")] + [(f"oracle:{m}", f"{m}_") for m in mods]:
            cols = [f"{prefix}p_{c}" for c in CLASSES]
            if all(c in o.columns for c in cols):
                qwk = score_predictions(y, o[cols].to_numpy())["qwk"]
                self.oracle_rows.append({"reference": name, "fold": k, "qwk": qwk})
        atomic_write_csv(self.run_dir / "oracle_reference.csv", pd.DataFrame(self.oracle_rows))

    def _oracle_summary(self):
        if not self.oracle_rows:
            return None
        return pd.DataFrame(self.oracle_rows).groupby("reference")["qwk"].mean()


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
