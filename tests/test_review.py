"""Review checks on synthetic job records (the exact schema search.py writes), plus one real tiny search.

Each check is planted into an otherwise healthy run and must fire with its id, severity and
the number in its evidence; the healthy run must produce no finding at all.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfusion.review import (BACKBONE_CHANGE_ERROR, BACKBONE_CHANGE_WARNING, DEGENERATE_SHARE, QWK_NOISE,
                              SHIFT_TVD, load_run, review_findings, run_review)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("I", "P", "R")
N_TRAIN, N_VAL, BATCH = 80, 40, 16
TRAIN_COUNTS = {"I": 20, "P": 48, "R": 12}
VAL_COUNTS = {"I": 10, "P": 24, "R": 6}


# ----------------------------------------------------------------------------- synthetic records
def stage_result(stage: str, *, fusion: bool = False, epochs: int = 5, best_epoch: int = 4, start: float = 0.10,
                 best: float = 0.50, trainable: int = 30000, total: int = 49156, lr: float = 1e-3,
                 backbone_change: float | None = None, n_train: int = N_TRAIN) -> dict:
    """A healthy StageResult.to_dict(): loss falls, validation QWK rises from `start` to `best` at `best_epoch`."""
    val_qwk = list(np.linspace(start + (best - start) / best_epoch, best, best_epoch)) + [best - 0.01] * (epochs - best_epoch)
    history = {"loss": [round(0.20 - 0.02 * i, 4) for i in range(epochs)],
               "qwk": [round(0.2 + 0.08 * i, 4) for i in range(epochs)],
               "accuracy": [round(0.4 + 0.05 * i, 4) for i in range(epochs)],
               "val_loss": [round(0.18 - 0.01 * i, 4) for i in range(epochs)],
               "val_qwk": [float(v) for v in val_qwk],
               "val_accuracy": [round(0.45 + 0.04 * i, 4) for i in range(epochs)],
               "lr": [lr] * epochs}
    w_start = w_end = None
    if fusion:
        history["fusion_rf_weight"] = [round(0.70 - 0.02 * (i + 1), 4) for i in range(epochs)]
        w_start, w_end = 0.70, history["fusion_rf_weight"][best_epoch - 1]
    return {"stage": stage, "lr": lr, "epochs_planned": epochs, "epochs_run": epochs, "best_epoch": best_epoch,
            "best_val_qwk": best, "start_val_qwk": start, "trainable_params": trainable, "total_params": total,
            "batch": BATCH, "global_batch": BATCH, "steps_per_epoch": math.ceil(n_train / BATCH), "n_train": n_train,
            "n_val": N_VAL, "alpha": [1 / 3] * 3, "seconds": 1.0, "stopped_early": False, "history": history,
            "backbone_change": backbone_change, "fusion_rf_weight_start": w_start, "fusion_rf_weight_end": w_end}


def job_record(combination: str, fold: int, qwk: float, pred_counts: dict | None = None) -> dict:
    """A healthy jobs/<combination>/fold_<k>.json record."""
    mods = combination.split("+")
    images = [m for m in mods if m != "metadata"]
    fusion = "metadata" in mods and bool(images)
    job = {"combination": combination, "fold": fold, "n_train": N_TRAIN, "n_val": N_VAL, "train_patients": 16,
           "val_patients": 8, "train_class_counts": dict(TRAIN_COUNTS), "val_class_counts": dict(VAL_COUNTS),
           "max_alpha_ratio": 3.0, "pretrain": {}, "transfer": [], "stages": {},
           "metrics": {"qwk": qwk, "kappa": qwk * 0.8, "accuracy": 0.6, "f1_macro": 0.5, "f1_weighted": 0.55,
                       "f1_I": 0.5, "f1_P": 0.6, "f1_R": 0.4},
           "val_pred_counts": dict(pred_counts or {"I": 11, "P": 22, "R": 7}),
           "predictions_file": f"predictions/{combination}/fold_{fold}.csv", "seconds": 3.0}
    if images:
        job["alpha"] = [0.3, 0.15, 0.45]  # ratio 3.0, at the cap
        for m in images:
            job["pretrain"][m] = stage_result(f"pretrain {m}", trainable=24131, total=24579, lr=2e-3)
            job["transfer"].append({"source": f"pretrain_{m}", "target": f"fusion_{combination.replace('+', '_')}",
                                    "matched_layers": 2, "matched_tensors": 20, "missing": [], "shape_mismatch": [],
                                    "excluded": ["output"], "verified": True})
        job["stages"]["stage1"] = stage_result("stage1", fusion=fusion, trainable=1092, start=0.3, best=qwk)
        job["stages"]["stage2"] = stage_result("stage2", fusion=fusion, lr=1e-4, start=qwk, best=qwk + 0.02,
                                               trainable=48260, backbone_change=3.5e-3)
        job["stage2_kept"] = True
        if fusion:
            job["fusion_rf_weight"] = {"start": 0.70, "end": job["stages"]["stage2"]["fusion_rf_weight_end"]}
    return job


HEALTHY_QWK = {"metadata": 0.45, "depth_rgb": 0.40, "metadata+depth_rgb": 0.55}


def healthy_jobs(folds: int = 2) -> list[dict]:
    return [job_record(c, k, q + 0.01 * k) for k in range(folds) for c, q in HEALTHY_QWK.items()]


def _labels(counts: dict) -> np.ndarray:
    return np.concatenate([np.full(int(counts.get(c, 0)), i) for i, c in enumerate(CLASSES)]).astype(int)


def write_run(root: Path, jobs: list[dict], folds: int | None = None, predictions: bool = True,
              selection: str = "inner", weights: str = "none") -> Path:
    """Write a run folder as search.py does: config.yaml, jobs/, predictions/, results.csv, summary.csv."""
    run = root / "run"
    folds = folds if folds is not None else len({j["fold"] for j in jobs})
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(
        f"model: {{backbone: tiny, weights: {weights}}}\n"
        "train: {batch_size: 16, max_alpha_ratio: 3.0, pretrain: {epochs: 5, lr: 0.002}, "
        "stage1: {epochs: 5, lr: 0.0005}, stage2: {epochs: 5, lr: 0.0001}}\n"
        f"search: {{cv_folds: {folds}, seed: 42, selection: {selection}}}\n")
    rows = []
    for job in jobs:
        path = run / "jobs" / job["combination"] / f"fold_{job['fold']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job, indent=1))
        if predictions:
            y = _labels(job["val_class_counts"])
            pred = _labels(job.get("val_pred_counts") or job["val_class_counts"])[:len(y)]
            proba = np.full((len(y), 3), 0.1)
            proba[np.arange(len(y)), pred] = 0.8
            p = run / "predictions" / job["combination"] / f"fold_{job['fold']}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(y))], "patient": np.arange(len(y)) // 5,
                          "y_true": y, "p_I": proba[:, 0], "p_P": proba[:, 1], "p_R": proba[:, 2]}).to_csv(p, index=False)
        rows.append({"combination": job["combination"], "fold": job["fold"], "n_val": job["n_val"], **job["metrics"]})
    results = pd.DataFrame(rows)
    results.to_csv(run / "results.csv", index=False)
    g = results.groupby("combination")
    summary = pd.DataFrame({"n_folds": g["fold"].nunique(), "qwk_mean": g["qwk"].mean(),
                            "qwk_std": g["qwk"].std(ddof=1).fillna(0.0), "kappa_mean": g["kappa"].mean(),
                            "kappa_std": g["kappa"].std(ddof=1).fillna(0.0), "accuracy_mean": g["accuracy"].mean(),
                            "f1_macro_mean": g["f1_macro"].mean(), "f1_weighted_mean": g["f1_weighted"].mean()})
    summary.reset_index().sort_values("qwk_mean", ascending=False).to_csv(run / "summary.csv", index=False)
    return run


def findings_for(tmp_path, jobs, **kw):
    return review_findings(load_run(write_run(tmp_path, jobs, **kw)))


def planted(mutate, folds: int = 2) -> list[dict]:
    jobs = healthy_jobs(folds)
    mutate({(j["combination"], j["fold"]): j for j in jobs})
    return jobs


def only(findings, check):
    hits = [f for f in findings if f.check == check]
    others = [f.line() for f in findings if f.check != check]
    return hits, others


# ----------------------------------------------------------------------------- the healthy run
def test_healthy_run_has_no_findings(tmp_path):
    findings = findings_for(tmp_path, healthy_jobs())
    assert findings == [], [f.line() for f in findings]


# ----------------------------------------------------------------------------- degenerate predictions
def test_degenerate_one_class_is_error_with_counts(tmp_path):
    counts = {"I": 0, "P": 1, "R": 39}  # everything the rare class
    share = 39 / 40  # computed here, independently of review.py
    assert share >= DEGENERATE_SHARE

    def mutate(j):
        j["depth_rgb", 1]["val_pred_counts"] = counts
        j["depth_rgb", 1]["metrics"]["qwk"] = 0.0

    hits, others = only(findings_for(tmp_path, planted(mutate)), "degenerate_predictions")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("error", "depth_rgb", 1)]
    f = hits[0]
    assert f.evidence["dominant_class"] == "R" and f.evidence["dominant_share"] == pytest.approx(share, abs=1e-4)
    assert "98%" in f.message and "39/40" in f.message and "rarest training class" in f.message
    assert f.suggestion


def test_degenerate_below_threshold_is_silent(tmp_path):
    counts = {"I": 3, "P": 35, "R": 2}  # 87.5 %: skewed, not degenerate
    assert max(counts.values()) / sum(counts.values()) < DEGENERATE_SHARE

    def mutate(j):
        j["metadata", 0]["val_pred_counts"] = counts

    assert only(findings_for(tmp_path, planted(mutate)), "degenerate_predictions")[0] == []


def test_degenerate_from_predictions_csv_when_counts_absent(tmp_path):
    jobs = healthy_jobs()
    target = next(j for j in jobs if j["combination"] == "metadata" and j["fold"] == 0)
    target["val_pred_counts"] = {"I": 40, "P": 0, "R": 0}
    run = write_run(tmp_path, jobs)  # the CSV gets argmax class I for all 40 rows
    record = run / "jobs" / "metadata" / "fold_0.json"
    data = json.loads(record.read_text())
    del data["val_pred_counts"]
    record.write_text(json.dumps(data))
    hits, _ = only(review_findings(load_run(run)), "degenerate_predictions")
    assert [(f.severity, f.combination, f.evidence["predicted_counts"]) for f in hits] == [
        ("error", "metadata", {"I": 40, "P": 0, "R": 0})]


def test_qwk_within_noise_is_warning(tmp_path):
    def mutate(j):
        j["metadata", 1]["metrics"]["qwk"] = 0.02

    hits, others = only(findings_for(tmp_path, planted(mutate)), "degenerate_predictions")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("warning", "metadata", 1)]
    assert "0.0200" in hits[0].message and hits[0].evidence["threshold"] == QWK_NOISE


# ----------------------------------------------------------------------------- no learning
def test_best_epoch_one_is_no_learning(tmp_path):
    def mutate(j):
        s = j["depth_rgb", 0]["stages"]["stage1"]
        s["best_epoch"], s["history"]["val_qwk"] = 1, [0.4, 0.3, 0.3, 0.3, 0.3]

    hits, others = only(findings_for(tmp_path, planted(mutate)), "no_learning")
    assert [(f.severity, f.combination, f.fold, f.stage) for f in hits] == [("warning", "depth_rgb", 0, "stage1")]
    assert "1 of 5" in hits[0].message and hits[0].evidence["best_epoch"] == 1
    assert others == []


def test_single_epoch_stage_with_best_epoch_one_is_fine(tmp_path):
    def mutate(j):
        s = j["depth_rgb", 0]["stages"]["stage2"]
        s.update(best_epoch=1, epochs_run=1, epochs_planned=1)
        s["history"] = {k: v[:1] for k, v in s["history"].items()}
        s["history"]["val_qwk"] = [s["best_val_qwk"]]

    hits, others = only(findings_for(tmp_path, planted(mutate)), "no_learning")
    assert hits == [] and others == []


def test_qwk_never_above_start_is_no_learning_once_per_pretrain(tmp_path):
    def mutate(j):
        for combo in ("depth_rgb", "metadata+depth_rgb"):  # the shared pre-training appears in both records
            s = j[combo, 1]["pretrain"]["depth_rgb"]
            s["start_val_qwk"], s["best_val_qwk"] = 0.25, 0.25

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "no_learning")
    assert [(f.severity, f.combination, f.fold, f.stage) for f in hits] == [
        ("warning", "depth_rgb", 1, "pretrain depth_rgb")]
    assert "0.2500" in hits[0].message


# ----------------------------------------------------------------------------- frozen too much
def test_tiny_trainable_fraction_in_stage2_is_error(tmp_path):
    def mutate(j):
        j["metadata+depth_rgb", 0]["stages"]["stage2"]["trainable_params"] = 195

    hits, others = only(findings_for(tmp_path, planted(mutate)), "frozen_too_much")
    assert [(f.severity, f.combination, f.fold, f.stage) for f in hits] == [
        ("error", "metadata+depth_rgb", 0, "stage2")]
    assert "195 of 49156" in hits[0].message and hits[0].evidence["trainable_params"] == 195


def test_tiny_trainable_fraction_in_stage1_is_by_design(tmp_path):
    def mutate(j):
        j["metadata+depth_rgb", 0]["stages"]["stage1"]["trainable_params"] = 195  # heads only: intended

    assert only(findings_for(tmp_path, planted(mutate)), "frozen_too_much")[0] == []


def test_frozen_pretraining_is_error(tmp_path):
    def mutate(j):
        for combo in ("depth_rgb", "metadata+depth_rgb"):
            j[combo, 0]["pretrain"]["depth_rgb"]["trainable_params"] = 99

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "frozen_too_much")
    assert [(f.severity, f.stage) for f in hits] == [("error", "pretrain depth_rgb")]
    assert "99 of 24579" in hits[0].message


@pytest.mark.parametrize("change,severity", [(0.0, "error"), (5e-7, "error"), (5e-5, "warning"),
                                             (None, "warning"), (2e-3, None)])
def test_backbone_unchanged(tmp_path, change, severity):
    assert BACKBONE_CHANGE_ERROR < 5e-5 < BACKBONE_CHANGE_WARNING < 2e-3

    def mutate(j):
        j["depth_rgb", 1]["stages"]["stage2"]["backbone_change"] = change

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "backbone_unchanged")
    if severity is None:
        assert hits == []
    else:
        assert [(f.severity, f.combination, f.fold, f.stage) for f in hits] == [(severity, "depth_rgb", 1, "stage2")]
        assert hits[0].evidence["backbone_change"] == change
        if change is not None:
            assert f"{change:.3e}" in hits[0].message


# ----------------------------------------------------------------------------- learning rate
def test_flat_stage_is_lr_too_low(tmp_path):
    def mutate(j):
        s = j["depth_rgb", 0]["stages"]["stage2"]
        s["lr"] = 1e-7
        s["history"]["loss"] = [0.1500, 0.1501, 0.1500, 0.1499, 0.1500]
        s["history"]["val_qwk"] = [s["start_val_qwk"]] * 5
        s["best_val_qwk"], s["best_epoch"] = s["start_val_qwk"], 2  # not epoch 1: isolate the LR check

    findings = findings_for(tmp_path, planted(mutate))
    hits, _ = only(findings, "lr_too_low")
    assert [(f.severity, f.combination, f.fold, f.stage) for f in hits] == [("warning", "depth_rgb", 0, "stage2")]
    assert "1e-07" in hits[0].message and hits[0].evidence["relative_loss_change"] == 0.0


def test_nan_loss_is_lr_too_high_error(tmp_path):
    def mutate(j):
        j["metadata+depth_rgb", 1]["stages"]["stage1"]["history"]["loss"][2] = float("nan")

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "lr_too_high")
    assert [(f.severity, f.combination, f.fold, f.stage) for f in hits] == [
        ("error", "metadata+depth_rgb", 1, "stage1")]
    assert "epoch 3" in hits[0].message and hits[0].evidence["first_bad_epoch"] == 3


def test_rising_loss_is_lr_too_high_warning(tmp_path):
    def mutate(j):
        s = j["depth_rgb", 1]["stages"]["stage1"]
        s["lr"] = 0.5
        s["history"]["loss"] = [0.10, 0.12, 0.15, 0.14, 0.20]  # +100 %, 3 of 4 steps up

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "lr_too_high")
    assert [(f.severity, f.stage) for f in hits] == [("warning", "stage1")]
    assert "100%" in hits[0].message and hits[0].evidence["up_fraction"] == 0.75


# ----------------------------------------------------------------------------- fusion
def test_fusion_below_its_best_member_summarised_per_combination(tmp_path):
    def mutate(j):
        j["metadata+depth_rgb", 0]["metrics"]["qwk"] = 0.40  # metadata 0.45
        j["metadata+depth_rgb", 1]["metrics"]["qwk"] = 0.30  # metadata 0.46

    hits, others = only(findings_for(tmp_path, planted(mutate)), "fusion_not_helping")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("warning", "metadata+depth_rgb", None)]
    f = hits[0]
    assert f.evidence["folds_below"] == 2 and f.evidence["n_folds"] == 2
    assert f.evidence["max_deficit"] == pytest.approx(0.16)
    assert "2 of 2 folds" in f.message and "0.3000 < metadata 0.4600" in f.message


def test_fusion_below_in_a_minority_of_folds_is_info(tmp_path):
    def mutate(j):
        j["metadata+depth_rgb", 0]["metrics"]["qwk"] = 0.40

    hits, _ = only(findings_for(tmp_path, planted(mutate, folds=3)), "fusion_not_helping")
    assert [(f.severity, f.evidence["folds_below"], f.evidence["n_folds"]) for f in hits] == [("info", 1, 3)]


def _comparisons(run: Path, delta: float, lo: float, hi: float) -> None:
    pd.DataFrame([{"combination": "metadata+depth_rgb", "best_member": "metadata", "delta_visit_qwk": delta,
                   "ci_low": lo, "ci_high": hi, "folds_won": 0, "n_folds": 2}]).to_csv(run / "comparisons.csv",
                                                                                        index=False)


@pytest.mark.parametrize("delta, lo, hi, want", [(-0.08, -0.15, -0.01, "warning"), (-0.02, -0.10, 0.05, "info"),
                                                 (0.03, -0.01, 0.07, "info"), (0.08, 0.02, 0.13, None)])
def test_fusion_finding_reads_the_paired_interval(tmp_path, delta, lo, hi, want):
    """With comparisons.csv the finding follows the interval, not raw per-fold deficits (planted: 2 of 2 below)."""
    def mutate(j):
        j["metadata+depth_rgb", 0]["metrics"]["qwk"] = 0.40
        j["metadata+depth_rgb", 1]["metrics"]["qwk"] = 0.30

    run = write_run(tmp_path, planted(mutate))
    _comparisons(run, delta, lo, hi)
    hits, _ = only(review_findings(load_run(run)), "fusion_not_helping")
    assert [f.severity for f in hits] == ([want] if want else [])
    if hits:
        assert f"[{lo:+.3f}, {hi:+.3f}]" in hits[0].message and hits[0].evidence["best_member"] == "metadata"


def test_outer_selection_run_is_flagged(tmp_path):
    hits, others = only(review_findings(load_run(write_run(tmp_path, healthy_jobs(), selection="outer"))),
                        "selection_on_reported_fold")
    assert [f.severity for f in hits] == ["warning"] and others == []
    assert "optimistic" in hits[0].message


# ----------------------------------------------------------------------------- alpha
def test_uncapped_extreme_alpha_is_warning(tmp_path):
    def mutate(j):
        j["depth_rgb", 0]["max_alpha_ratio"] = 0.0
        j["depth_rgb", 0]["alpha"] = [0.1, 0.2, 0.7]  # 7x

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "extreme_alpha")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("warning", "depth_rgb", 0)]
    assert "7.00" in hits[0].message and hits[0].evidence["ratio"] == 7.0


def test_alpha_above_cap_is_error(tmp_path):
    def mutate(j):
        j["metadata+depth_rgb", 1]["alpha"] = [0.1, 0.4, 0.5]  # 5x with cap 3

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "extreme_alpha")
    assert [(f.severity, f.combination) for f in hits] == [("error", "metadata+depth_rgb")]
    assert "5.00" in hits[0].message and "cap 3" in hits[0].message


# ----------------------------------------------------------------------------- steps
def test_steps_not_covering_data_is_error(tmp_path):
    def mutate(j):
        j["depth_rgb", 0]["stages"]["stage1"]["steps_per_epoch"] = 2  # 32 of 80 samples per epoch

    hits, others = only(findings_for(tmp_path, planted(mutate)), "steps_mismatch")
    assert [(f.severity, f.stage) for f in hits] == [("error", "stage1")]
    assert "= 32 < n_train 80" in hits[0].message and others == []


def test_steps_repeating_data_is_warning(tmp_path):
    def mutate(j):
        for combo in ("depth_rgb", "metadata+depth_rgb"):
            j[combo, 1]["pretrain"]["depth_rgb"]["steps_per_epoch"] = 10  # 160 >= 80 + 16

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "steps_mismatch")
    assert [(f.severity, f.stage) for f in hits] == [("warning", "pretrain depth_rgb")]
    assert "= 160" in hits[0].message


def test_stage_trained_on_another_size_is_error(tmp_path):
    def mutate(j):
        s = j["metadata+depth_rgb", 0]["stages"]["stage2"]
        s["n_train"], s["steps_per_epoch"] = 64, 4  # consistent steps, wrong dataset

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "steps_mismatch")
    assert [(f.severity, f.stage) for f in hits] == [("error", "stage2")]
    assert "n_train 64" in hits[0].message and "80" in hits[0].message


# ----------------------------------------------------------------------------- transfer
@pytest.mark.parametrize("damage,needle", [
    (lambda t: t.clear(), "no transfer report for depth_rgb"),
    (lambda t: t[0].update(verified=False), "not verified"),
    (lambda t: t[0].update(missing=["depth_rgb_dense"]), "1 missing layer"),
    (lambda t: t[0].update(shape_mismatch=[["depth_rgb_dense", "kernel", [8, 8], [8, 4]]]), "1 shape mismatch"),
    (lambda t: t[0].update(matched_tensors=0, matched_layers=0), "matched_tensors 0"),
])
def test_transfer_incomplete_is_error(tmp_path, damage, needle):
    def mutate(j):
        damage(j["metadata+depth_rgb", 1]["transfer"])

    hits, others = only(findings_for(tmp_path, planted(mutate)), "transfer_incomplete")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("error", "metadata+depth_rgb", 1)]
    assert needle in hits[0].message and others == []


# ----------------------------------------------------------------------------- shift
def test_class_shift_uses_total_variation_distance(tmp_path):
    train, val = {"I": 20, "P": 50, "R": 10}, {"I": 20, "P": 15, "R": 5}
    expected = 0.5 * sum(abs(train[c] / 80 - val[c] / 40) for c in CLASSES)  # 0.25
    assert expected > SHIFT_TVD

    def mutate(j):
        for combo in HEALTHY_QWK:
            j[combo, 1]["train_class_counts"], j[combo, 1]["val_class_counts"] = dict(train), dict(val)
            j[combo, 1]["val_pred_counts"] = {"I": 14, "P": 20, "R": 6}

    hits, _ = only(findings_for(tmp_path, planted(mutate)), "class_shift")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("warning", None, 1)]  # once per fold
    assert hits[0].evidence["tvd"] == pytest.approx(expected, abs=1e-4) and f"{expected:.3f}" in hits[0].message


def test_small_shift_is_silent(tmp_path):
    def mutate(j):
        for combo in HEALTHY_QWK:
            j[combo, 0]["val_class_counts"] = {"I": 12, "P": 22, "R": 6}  # TVD 0.05
            j[combo, 0]["val_pred_counts"] = {"I": 12, "P": 22, "R": 6}

    assert only(findings_for(tmp_path, planted(mutate)), "class_shift")[0] == []


# ----------------------------------------------------------------------------- completeness
def test_missing_fold_and_unreadable_record(tmp_path):
    jobs = [j for j in healthy_jobs(3) if not (j["combination"] == "depth_rgb" and j["fold"] == 2)]
    run = write_run(tmp_path, jobs, folds=3)
    (run / "jobs" / "metadata" / "fold_9.json").write_text("{not json")
    findings = review_findings(load_run(run))
    incomplete, _ = only(findings, "incomplete_run")
    assert [(f.severity, f.combination) for f in incomplete] == [("warning", "depth_rgb")]
    assert incomplete[0].evidence["missing_folds"] == [2] and "2 of 3" in incomplete[0].message
    unreadable, _ = only(findings, "unreadable_record")
    assert [f.severity for f in unreadable] == ["error"] and "fold_9.json" in unreadable[0].message


def test_stage2_skipped_is_info(tmp_path):
    def mutate(j):
        job = j["depth_rgb", 0]
        del job["stages"]["stage2"], job["stage2_kept"]
        job["stage2_skipped"] = True

    hits, others = only(findings_for(tmp_path / "imagenet", planted(mutate), weights="imagenet"), "stage2_skipped")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("info", "depth_rgb", 0)] and others == []
    # a from-scratch backbone was trained whole in pre-training: skipping Stage 2 is a choice, not a finding
    hits, others = only(findings_for(tmp_path / "scratch", planted(mutate)), "stage2_skipped")
    assert hits == [] and others == []


# ----------------------------------------------------------------------------- run_review
def test_run_review_strict_exit_codes(tmp_path):
    healthy = write_run(tmp_path / "a", healthy_jobs())
    assert run_review(healthy, strict=True) == 0

    def error(j):
        j["depth_rgb", 0]["val_pred_counts"] = {"I": 40, "P": 0, "R": 0}

    def warning_only(j):
        j["metadata", 0]["metrics"]["qwk"] = 0.01

    bad = write_run(tmp_path / "b", planted(error))
    assert run_review(bad, strict=False) == 0
    assert run_review(bad, strict=True) == 1
    warn = write_run(tmp_path / "c", planted(warning_only))
    assert run_review(warn, strict=True) == 0
    review = json.loads((bad / "review.json").read_text())
    assert review["counts"]["error"] == 1 and review["strict"] is True
    assert [f["check"] for f in review["findings"] if f["severity"] == "error"] == ["degenerate_predictions"]
    assert set(review["findings"][0]) >= {"check", "severity", "combination", "fold", "stage", "evidence",
                                          "suggestion", "message"}
    assert len(review["key_figures"]) == 6 and review["thresholds"]["DEGENERATE_SHARE"] == DEGENERATE_SHARE


def test_run_review_logs_findings_at_warning_and_figures_at_info(tmp_path, caplog):
    def error(j):
        j["depth_rgb", 1]["stages"]["stage2"]["backbone_change"] = 0.0

    run = write_run(tmp_path, planted(error))
    log = logging.getLogger("test_review_logger")
    with caplog.at_level(logging.INFO, logger="test_review_logger"):
        run_review(run, log=log)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("[ERROR] backbone_unchanged depth_rgb fold 1 [stage2]" in m and "0.000e+00" in m for m in warnings)
    assert any(m.startswith("review: 1 error(s)") for m in warnings)
    figure = next(m for m in infos if "metadata+depth_rgb fold 0" in m)
    for needle in ("QWK 0.5500", "stage1 ep 4/5", "stage2 ep 4/5", "forest weight 0.700->", "predicted I/P/R 11/22/7",
                   "true 10/24/6", "pretrain depth_rgb ep 4/5"):
        assert needle in figure, (needle, figure)


def test_review_json_stays_strict_json_with_nan(tmp_path):
    def diverged(j):
        j["depth_rgb", 0]["stages"]["stage1"]["history"]["loss"][1] = float("inf")
        j["depth_rgb", 0]["metrics"]["qwk"] = float("nan")

    run = write_run(tmp_path, planted(diverged))
    assert run_review(run, strict=True) == 1

    def reject(token):
        raise AssertionError(f"non-standard JSON constant {token} in review.json")

    review = json.loads((run / "review.json").read_text(), parse_constant=reject)
    hits = [f for f in review["findings"] if f["check"] == "lr_too_high"]
    assert [(f["severity"], f["evidence"]["value"]) for f in hits] == [("error", "inf")]
    assert any(f["check"] == "degenerate_predictions" and f["evidence"]["qwk"] == "nan" for f in review["findings"])


def test_run_review_missing_folder_or_no_jobs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*run a search first"):
        run_review(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*no job records.*run a search first"):
        run_review(tmp_path / "empty")


# ----------------------------------------------------------------------------- one real search
FAST = ["--set", "data.image_size=16", "--set", "train.pretrain.epochs=2", "--set", "train.stage1.epochs=2",
        "--set", "train.stage2.epochs=1", "--set", "forest.n_estimators=20", "--set", "model.head_units=8",
        "--set", "train.batch_size=16"]


@pytest.mark.slow
def test_review_of_a_real_tiny_search(tmp_path):
    from medfusion.data.synthetic import generate_demo

    data = generate_demo(tmp_path / "data", seed=3, n_patients=24)
    cmd = [sys.executable, str(ROOT / "main.py"), "--mode", "search", "--config", str(ROOT / "configs/demo.yaml"),
           "--data_dir", str(data), "--cv_folds", "2", "--run_name", "rv", "--combinations", "metadata+depth_rgb",
           "--set", f"runtime.logs_dir={tmp_path / 'logs'}", "--set", "data.demo=false", "--verbosity", "0", *FAST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "logs" / "rv"
    records = load_run(run)
    assert len(records.jobs) == 6 and records.combinations == ["metadata", "depth_rgb", "metadata+depth_rgb"]
    assert run_review(run) == 0
    review = json.loads((run / "review.json").read_text())
    checks = {f["check"] for f in review["findings"]}
    # the real pipeline is consistent: steps, transfer, alpha cap and trainable counts never fire
    assert not checks & {"steps_mismatch", "transfer_incomplete", "extreme_alpha", "frozen_too_much",
                         "unreadable_record", "incomplete_run"}, checks
    assert (run / "report.md").is_file() and (run / "plots" / "curves_metadata+depth_rgb.png").is_file()
    expected = 1 if any(f["severity"] == "error" for f in review["findings"]) else 0
    assert run_review(run, strict=True) == expected


# ----------------------------------------------------------------------------- stage 2 keep/revert
def test_reverted_stage2_is_not_no_learning(tmp_path):
    """Stage 2 starts at Stage 1's best and is reverted when it does not beat it: that is the design, not a failure."""
    def mutate(j):
        job = j["depth_rgb", 0]
        s = job["stages"]["stage2"]
        s["best_val_qwk"] = s["start_val_qwk"]
        s["best_epoch"] = 1
        job["stage2_kept"] = False

    hits, others = only(findings_for(tmp_path, planted(mutate)), "no_learning")
    assert hits == [] and others == []


def test_stage2_reverted_everywhere_is_one_warning(tmp_path):
    def mutate(j):
        for job in j.values():
            if "stage2_kept" in job:
                job["stage2_kept"] = False

    hits, others = only(findings_for(tmp_path / "all", planted(mutate)), "stage2_never_helps")
    assert [(f.severity, f.combination, f.fold) for f in hits] == [("warning", None, None)] and others == []
    assert hits[0].evidence == {"jobs_with_stage2": 4, "kept": 0} and "all 4 jobs" in hits[0].message

    def mutate_one_kept(j):
        mutate(j)
        j["depth_rgb", 1]["stage2_kept"] = True

    hits, _ = only(findings_for(tmp_path / "one", planted(mutate_one_kept)), "stage2_never_helps")
    assert hits == []


def test_failed_and_retried_jobs_are_findings(copy_run):
    """jobs.csv as the driver writes it: a job that failed for good is an error, one that needed a retry a warning."""
    import pandas as pd

    from medfusion.records import load_run
    from medfusion.review import review_findings

    ledger = pd.read_csv(copy_run / "jobs.csv")
    assert set(ledger["status"]) == {"done"} and set(ledger["attempts"]) == {1}
    assert not [f for f in review_findings(load_run(copy_run)) if f.check.startswith("job_")]
    ledger.loc[ledger["job"] == "pretrain/fold_0/depth_rgb", "attempts"] = 2
    extra = pd.DataFrame([{"job": "combination/fold_1/depth_rgb", "status": "failed", "attempts": 2,
                           "error": "RuntimeError: boom"}])
    pd.concat([ledger, extra]).to_csv(copy_run / "jobs.csv", index=False)
    found = {f.check: f for f in review_findings(load_run(copy_run)) if f.check.startswith("job_")}
    assert found["job_failed"].severity == "error" and "combination/fold_1/depth_rgb" in found["job_failed"].message
    assert "boom" in found["job_failed"].message
    assert found["job_retried"].severity == "warning" and "pretrain/fold_0/depth_rgb" in found["job_retried"].message
