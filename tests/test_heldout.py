"""Held-out test patients: set aside before folding, never fitted or chosen on, predicted once at the end."""

import json

import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from tests.harness import run_search


@pytest.mark.slow
def test_test_patients_are_in_no_fold_and_scored_once(tmp_path, tiny_data):
    run, proc = run_search(tmp_path / "logs", tiny_data, "--combinations", "metadata+depth_rgb",
                           "--test_fraction", "0.25", run_name="held")
    test = set(json.loads((run / "test_patients.json").read_text())["patients"])
    assert len(test) == 6  # 25% of 24 patients
    folds = json.loads((run / "folds.json").read_text())
    fold_patients = {int(s[1:4]) for s in folds}  # sample ids start with P + the 3-digit patient number
    assert not test & fold_patients
    for job_path in run.glob("jobs/*/fold_*.json"):
        job = json.loads(job_path.read_text())
        assert not test & set(job["selection_patients"]), job_path
        pred = pd.read_csv(run / job["predictions_file"])
        assert not test & set(pred["patient"]), job_path
    preds = pd.read_csv(run / "test_predictions.csv")
    assert set(preds["patient"]) == test
    results = pd.read_csv(run / "test_results.csv")
    assert len(results) == 1
    row = results.iloc[0]
    best = pd.read_csv(run / "summary.csv")
    best = best[~best["combination"].str.contains(":")].iloc[0]  # summary.csv is sorted best first
    assert row["combination"] == best["combination"]
    view = cohen_kappa_score(preds["y_true"], preds[["p_I", "p_P", "p_R"]].to_numpy().argmax(1), labels=[0, 1, 2],
                             weights="quadratic")
    visits = preds.groupby("visit").agg(y=("y_true", "first"), p_I=("p_I", "mean"), p_P=("p_P", "mean"),
                                        p_R=("p_R", "mean"))
    visit = cohen_kappa_score(visits["y"], visits[["p_I", "p_P", "p_R"]].to_numpy().argmax(1), labels=[0, 1, 2],
                              weights="quadratic")
    assert abs(row["qwk"] - view) < 1e-5 and abs(row["visit_qwk"] - visit) < 1e-5
    assert row["visit_qwk_ci_low"] <= row["visit_qwk"] + 1e-9 <= row["visit_qwk_ci_high"] + 2e-9
    assert "only unbiased estimate" in proc.stderr
    # the same command again continues the finished run: the test set is not evaluated a second time
    before = (run / "test_results.csv").read_bytes()
    again, proc2 = run_search(tmp_path / "logs", tiny_data, "--combinations", "metadata+depth_rgb",
                              "--test_fraction", "0.25", run_name="held")
    assert "already evaluated, not repeated" in proc2.stderr
    assert (run / "test_results.csv").read_bytes() == before
