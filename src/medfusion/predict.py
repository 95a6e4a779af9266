"""Predict with a finished search: the fold ensemble of one combination's bundles.

Used by `--mode predict` on a new dataset and by the search itself on its held-out test
patients. The ensemble's probability is the mean of the k fold bundles'; its decision is
argmax, or (train.decision: ordinal_thresholds) the mean of the folds' thresholds applied to
the mean probabilities.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.bundles import BundleError, bundle_dir, load_bundle
from medfusion.constants import CLASSES, image_modalities_of
from medfusion.data.rows import Rows
from medfusion.evaluation.decisions import decide
from medfusion.evaluation.late_fusion import is_late_fusion
from medfusion.evaluation.visits import PROBA_COLUMNS, visit_table

log = logging.getLogger("medfusion")


def choose_combination(run_dir: Path, requested: str | None = None) -> str:
    """The requested combination, or the run's best by visit_qwk_mean (falling back to qwk_mean)."""
    from medfusion.runs import read_run_csv

    path = Path(run_dir) / "summary.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: the run has not finished; finish it first "
                                "(python main.py --mode search --run_name NAME continues it)")
    summary = read_run_csv(path)
    trained = summary[~summary["combination"].astype(str).map(is_late_fusion)]  # baselines have no bundles
    if requested:
        if requested not in set(trained["combination"]):
            raise ValueError(f"combination {requested!r} is not among the run's trained combinations: "
                             f"{', '.join(trained['combination'])}")
        return requested
    key = "visit_qwk_mean" if "visit_qwk_mean" in trained.columns else "qwk_mean"
    return str(trained.sort_values(key, ascending=False, kind="stable")["combination"].iloc[0])


def ensemble_rule(rules: list) -> dict:
    """One decision rule for the fold ensemble: argmax, or the mean of the folds' thresholds."""
    kinds = {(r or {}).get("kind", "argmax") for r in rules}
    if kinds == {"argmax"}:
        return {"kind": "argmax"}
    if kinds != {"ordinal_thresholds"}:
        raise BundleError(f"the fold bundles use different decision rules {sorted(kinds)}")
    return {"kind": "ordinal_thresholds", "thresholds": np.mean([r["thresholds"] for r in rules], axis=0).tolist()}


def _metadata_inputs(bundle, manifest) -> np.ndarray:
    """Forest probabilities per sample from one row per visit, with the training run's feature columns."""
    s = manifest.samples
    wanted = bundle.info.get("feature_columns") or list(manifest.feature_columns)
    missing = [c for c in wanted if c not in s.columns]
    if missing:
        log.warning("%d metadata feature column(s) of the training data are absent here and read as missing: %s",
                    len(missing), ", ".join(missing[:8]))
    rows = s.drop_duplicates("visit").set_index("visit")
    features = rows.reindex(columns=wanted)
    proba = bundle.metadata_proba(features.reset_index(drop=True))
    by_visit = dict(zip(rows.index, proba))
    return np.stack([by_visit[v] for v in s["visit"]]).astype(np.float32)


def fold_ensemble(run_dir: Path, cfg, combination: str, manifest, strategy=None, crops: dict | None = None):
    """(mean probabilities per sample, ensemble rule, per-fold probabilities) of the combination's bundles."""
    from medfusion.evaluation.calibration import apply_temperature
    from medfusion.training.stages import predict

    mods = image_modalities_of(combination)
    if crops is None:
        crops = load_all_crops(cfg, manifest, mods)
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    per_fold, rules = [], []
    for k in range(cfg.search.cv_folds):
        t = time.time()
        bundle = load_bundle(bundle_dir(run_dir, combination, k), cfg)
        meta = _metadata_inputs(bundle, manifest) if "metadata" in combination.split("+") else None
        if bundle.model is None:
            proba = meta.astype(np.float64)
        else:
            inputs = {m: Rows.all_of(crops[m]) for m in mods}  # gathered per batch: no per-fold copy
            if meta is not None:
                inputs["metadata"] = meta
            proba = predict(bundle.model, inputs, max(cfg.train.batch_size, 32), replicas)
        calibration = bundle.info.get("calibration") or {}
        if calibration.get("method") == "temperature":  # as the job rescaled its own predictions
            proba = apply_temperature(proba, calibration["temperature"])
        per_fold.append(proba)
        rules.append(bundle.info.get("decision"))
        log.info("  fold %d bundle of %s: %d samples predicted in %.1fs", k, combination, len(proba), time.time() - t)
    return np.mean(per_fold, axis=0), ensemble_rule(rules), per_fold


def load_all_crops(cfg, manifest, modalities) -> dict:
    from medfusion.data.images import load_crops

    out = {}
    for m in modalities:
        t = time.time()
        out[m] = load_crops(manifest, m, cfg.data.image_size, cfg.data.box_margin, log=log)
        log.info("loaded %d %s crops at %dpx in %.1fs", len(manifest), m, cfg.data.image_size, time.time() - t)
    return out


def prediction_tables(manifest, proba: np.ndarray, rule: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """samples.csv and visits.csv: probabilities, the predicted class, and the label where known."""
    s = manifest.samples
    samples = pd.DataFrame({"sample_id": s["sample_id"].to_numpy(), "patient": s["patient"].to_numpy(),
                            "visit": s["visit"].to_numpy(), **{c: proba[:, i] for i, c in enumerate(PROBA_COLUMNS)}})
    samples["predicted"] = [CLASSES[i] for i in decide(proba, rule)]
    table = samples.assign(y_true=s["label"].to_numpy())
    visits = visit_table(table)
    visits["predicted"] = [CLASSES[i] for i in decide(visits[PROBA_COLUMNS].to_numpy(), rule)]
    if (s["label"] >= 0).all():
        samples["true"] = [CLASSES[i] for i in s["label"]]
        visits["true"] = [CLASSES[i] for i in visits["y_true"]]
    return samples, visits.drop(columns="y_true")


def scores(manifest, proba: np.ndarray, rule: dict, n_resamples: int, seed: int) -> dict:
    """Per-view and per-visit metrics with a patient-bootstrap interval of the visit QWK."""
    from medfusion.evaluation.bootstrap import bootstrap_qwk
    from medfusion.evaluation.visits import pooled_visits, visit_scores
    from medfusion.models.metrics import score_predictions

    s = manifest.samples
    pred = pd.DataFrame({"sample_id": s["sample_id"], "patient": s["patient"], "visit": s["visit"],
                         "y_true": s["label"], **{c: proba[:, i] for i, c in enumerate(PROBA_COLUMNS)}})
    out = {"n_samples": int(len(s)), "n_patients": int(s["patient"].nunique()),
           "view": score_predictions(s["label"].to_numpy(), proba, rule), "visit": visit_scores(pred, rule)}
    ci = bootstrap_qwk(pooled_visits([(pred, rule)]), n_resamples, seed)
    out["visit"].update(visit_qwk_ci_low=ci["ci_low"], visit_qwk_ci_high=ci["ci_high"], resamples=ci["resamples"])
    return out


def write_json(path: Path, obj) -> None:
    from medfusion.runs import atomic_write_json

    atomic_write_json(path, json.loads(json.dumps(obj, default=float)))


def _output_folder(out: Path) -> Path:
    """A fresh output folder; an existing non-empty one is moved aside (never overwritten)."""
    from medfusion.runs import set_aside

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        aside = set_aside(out, "previous")
        log.warning("output folder %s existed: moved aside to %s (nothing deleted)", out, aside)
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_predict(run_dir: Path, data_dir: str, combination: str | None = None, out: str | None = None) -> int:
    """--mode predict: check the dataset as a search does (labels optional), predict with the fold ensemble."""
    from medfusion.config import load_config
    from medfusion.data.dfu import load_dfu
    from medfusion.runs import atomic_write_csv

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} has no config.yaml: run a search with that --run_name "
                                "first, or pass the --run_name of a finished search")
    cfg = load_config(run_dir / "config.yaml", {"data.data_dir": str(data_dir), "data.demo": False,
                                                "data.labels_required": False, "search.folds_file": "",
                                                "runtime.logs_dir": str(run_dir.parent),
                                                "runtime.run_name": run_dir.name})
    combination = choose_combination(run_dir, combination)
    t0 = time.time()
    log.info("predict: run %s, combination %s (fold ensemble of %d bundles), data %s", run_dir.name, combination,
             cfg.search.cv_folds, data_dir)
    from medfusion.search import resolve_combinations

    # samples as the run made them: views when the run used any image modality, visits when metadata-only
    run_modalities = sorted({m for c in resolve_combinations(cfg) for m in c.split("+")})
    manifest = load_dfu(Path(data_dir), cfg.data, log, modalities=run_modalities)
    labelled = not manifest.report.get("unlabelled") and (manifest.samples["label"] >= 0).all()
    log.info("dataset: %d samples, %d visits, %d patients%s", len(manifest), manifest.samples["visit"].nunique(),
             manifest.samples["patient"].nunique(), "" if labelled else "; no labels: predictions only")
    proba, rule, _ = fold_ensemble(run_dir, cfg, combination, manifest)
    folder = _output_folder(Path(out) if out else run_dir / "predict" / Path(data_dir).resolve().name)
    samples, visits = prediction_tables(manifest, proba, rule)
    atomic_write_csv(folder / "samples.csv", samples)
    atomic_write_csv(folder / "visits.csv", visits)
    if labelled:
        metrics = {"combination": combination, "run": run_dir.name, "decision": rule,
                   **scores(manifest, proba, rule, cfg.search.bootstrap_resamples, cfg.search.seed)}
        write_json(folder / "metrics.json", metrics)
        log.warning("predict %s on %s: view QWK %.4f, visit QWK %.4f [%.3f, %.3f] (%d visits)", combination,
                    data_dir, metrics["view"]["qwk"], metrics["visit"]["visit_qwk"],
                    metrics["visit"]["visit_qwk_ci_low"], metrics["visit"]["visit_qwk_ci_high"],
                    metrics["visit"]["n_val_visits"])
    log.warning("predictions for %d samples / %d visits written to %s in %.1fs", len(samples), len(visits), folder,
                time.time() - t0)
    return 0
