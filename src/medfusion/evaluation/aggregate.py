"""results.csv, summary.csv and comparisons.csv, rebuilt from job records and prediction files.

Late-fusion baselines (evaluation/late_fusion.py) are rows like any other: their results rows
come from their averaged prediction tables instead of a job record, with empty stage columns.

Per-fold rows come from the job records; intervals and paired comparisons from the pooled
out-of-fold visit predictions, so a reader sees both the fold spread and the uncertainty
of the pooled estimate.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from medfusion.constants import MODALITIES, all_combinations
from medfusion.evaluation.bootstrap import N_RESAMPLES, bootstrap_qwk, paired_bootstrap
from medfusion.evaluation.late_fusion import comparison_members
from medfusion.evaluation.visits import pooled_visits

log = logging.getLogger("medfusion")

VIEW_METRICS = ["qwk", "kappa", "accuracy", "f1_macro", "f1_weighted", "f1_I", "f1_P", "f1_R"]
VISIT_METRICS = ["visit_qwk", "visit_kappa", "visit_accuracy", "visit_f1_macro"]
RESULT_COLUMNS = (["combination", "fold", "n_val", "n_val_visits"] + VIEW_METRICS + VISIT_METRICS +
                  ["stage1_best_epoch", "stage1_qwk", "stage2_best_epoch", "stage2_qwk", "stage2_kept",
                   "backbone_change", "fusion_rf_weight", "decision"])
SUMMARY_COLUMNS = ["combination", "n_folds", "visit_qwk_mean", "visit_qwk_ci_low", "visit_qwk_ci_high",
                   "visit_qwk_pooled", "visit_qwk_std", "qwk_mean", "qwk_std", "kappa_mean", "kappa_std",
                   "accuracy_mean", "f1_macro_mean", "f1_weighted_mean"]
COMPARISON_COLUMNS = ["combination", "best_member", "delta_visit_qwk", "ci_low", "ci_high", "folds_won", "n_folds"]
_ORDER = {c: i for i, c in enumerate(all_combinations(MODALITIES))}


def row_from_job(job: dict) -> dict:
    stages = job.get("stages", {})
    s1, s2 = stages.get("stage1"), stages.get("stage2")
    row = {"combination": job["combination"], "fold": job["fold"], "n_val": job["n_val"], **job["metrics"],
           "decision": (job.get("decision") or {}).get("kind", "argmax")}
    if s1:
        row.update(stage1_best_epoch=s1["best_epoch"], stage1_qwk=s1["best_val_qwk"])
    if s2:
        row.update(stage2_best_epoch=s2["best_epoch"], stage2_qwk=s2["best_val_qwk"], stage2_kept=job["stage2_kept"],
                   backbone_change=s2["backbone_change"])
    if job.get("fusion_rf_weight"):
        row["fusion_rf_weight"] = job["fusion_rf_weight"]["end"]
    return row


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """results.csv rows with integer columns kept integer (empty where a combination has no stage)."""
    rows = sorted(rows, key=lambda r: (r["fold"], _ORDER.get(r["combination"], 99), r["combination"]))
    df = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    for col in ("fold", "n_val", "n_val_visits", "stage1_best_epoch", "stage2_best_epoch"):
        df[col] = df[col].astype("Int64")
    df["stage2_kept"] = df["stage2_kept"].astype("boolean")
    return df


def summarize(results: pd.DataFrame, visits: dict[str, pd.DataFrame], n: int = N_RESAMPLES,
              seed: int = 0) -> pd.DataFrame:
    """One row per combination: means over folds, and a patient-bootstrap interval of the pooled visit QWK.

    Sorted by visit_qwk_mean (std is the sample std over folds).
    """
    g = results.groupby("combination")
    summary = pd.DataFrame({
        "n_folds": g["fold"].nunique(),
        "visit_qwk_mean": g["visit_qwk"].mean(), "visit_qwk_std": g["visit_qwk"].std(ddof=1).fillna(0.0),
        "qwk_mean": g["qwk"].mean(), "qwk_std": g["qwk"].std(ddof=1).fillna(0.0),
        "kappa_mean": g["kappa"].mean(), "kappa_std": g["kappa"].std(ddof=1).fillna(0.0),
        "accuracy_mean": g["accuracy"].mean(), "f1_macro_mean": g["f1_macro"].mean(),
        "f1_weighted_mean": g["f1_weighted"].mean(),
    }).reset_index()
    intervals = {c: bootstrap_qwk(v, n, seed) for c, v in visits.items() if len(v)}
    summary["visit_qwk_pooled"] = summary["combination"].map(lambda c: intervals.get(c, {}).get("qwk", np.nan))
    summary["visit_qwk_ci_low"] = summary["combination"].map(lambda c: intervals.get(c, {}).get("ci_low", np.nan))
    summary["visit_qwk_ci_high"] = summary["combination"].map(lambda c: intervals.get(c, {}).get("ci_high", np.nan))
    summary = summary.sort_values(["visit_qwk_mean", "qwk_mean"], ascending=False, kind="stable")
    return summary[SUMMARY_COLUMNS].reset_index(drop=True)


def compare(summary: pd.DataFrame, results: pd.DataFrame, visits: dict[str, pd.DataFrame], n: int = N_RESAMPLES,
            seed: int = 0) -> pd.DataFrame:
    """Each multi-modality combination against its best single-modality member (by visit_qwk_mean).

    Paired patient bootstrap on the visits both scored; folds_won counts folds where the
    combination's visit QWK is strictly higher. A late-fusion baseline is compared with the best
    of what it averages (late_mean:<c>: c's modalities; ensemble:metadata: its combinations).
    """
    mean = dict(zip(summary["combination"], summary["visit_qwk_mean"]))
    combinations = list(summary["combination"])
    rows = []
    for combo in combinations:
        wanted = comparison_members(combo, combinations)
        members = [m for m in wanted if m in mean]
        if len(wanted) < 2 or not members or combo not in visits:
            continue
        best = max(members, key=lambda m: mean[m])
        if best not in visits:
            continue
        pb = paired_bootstrap(visits[combo], visits[best], n, seed)
        per_fold = results.pivot_table(index="fold", columns="combination", values="visit_qwk")
        both = per_fold[[combo, best]].dropna() if {combo, best} <= set(per_fold.columns) else per_fold.iloc[:0]
        rows.append({"combination": combo, "best_member": best, "delta_visit_qwk": pb["delta"],
                     "ci_low": pb["ci_low"], "ci_high": pb["ci_high"],
                     "folds_won": int((both[combo] > both[best]).sum()), "n_folds": int(len(both))})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def pooled_by_combination(predictions: dict[str, list[tuple[pd.DataFrame, dict | None]]]) -> dict[str, pd.DataFrame]:
    """combination -> pooled out-of-fold visit rows (each fold's own decision rule applied)."""
    return {combo: pooled_visits(frames) for combo, frames in predictions.items()}


def format_summary(summary: pd.DataFrame, comparisons: pd.DataFrame | None = None,
                   oracle: pd.Series | None = None) -> str:
    width = max([len("combination")] + [len(c) for c in summary["combination"]])
    lines = [f"{'combination':<{width}}  folds  visit QWK [95% CI, patient bootstrap]  view QWK +- std   "
             "kappa   acc     F1-macro"]
    for r in summary.itertuples():
        lines.append(f"{r.combination:<{width}}  {r.n_folds:>5}  {r.visit_qwk_mean:.4f} "
                     f"[{r.visit_qwk_ci_low:.3f}, {r.visit_qwk_ci_high:.3f}]{'':>16}"
                     f"{r.qwk_mean:.4f} +- {r.qwk_std:.4f}  {r.kappa_mean:.4f}  {r.accuracy_mean:.4f}  "
                     f"{r.f1_macro_mean:.4f}")
    if comparisons is not None and len(comparisons):
        lines.append("fusion vs its best member (pooled visit QWK difference, paired patient bootstrap):")
        for r in comparisons.itertuples():
            lines.append(f"  {r.combination:<{width}} vs {r.best_member}: {r.delta_visit_qwk:+.4f} "
                         f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}], better in {r.folds_won} of {r.n_folds} folds")
    if oracle is not None:
        lines.append("reference (Bayes oracle shipped with the dataset, same validation samples, per view):")
        lines += [f"  {name:<{width}} QWK {q:.4f}" for name, q in oracle.items()]
    return "\n".join(lines)
