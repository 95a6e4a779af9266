"""A whole search on three logical CPU replicas finishes and its scores are sklearn's on its own predictions.

(Two replicas: tests/test_search.py. Predictions against a one-device run are compared per stage in
test_replicas.py: a whole search cannot match one, because the from-scratch pre-training trains
BatchNorm on each replica's own batch statistics.)
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.harness import rescored_from_predictions, run_search


@pytest.mark.slow
def test_search_on_three_cpu_replicas(tmp_path, tiny_data):
    run, proc = run_search(tmp_path / "logs", tiny_data, "--combinations", "metadata+depth_rgb", "--cpu_replicas", "3")
    assert "MirroredStrategy, 3 replica(s) in sync" in (run / "run.log").read_text()
    results = pd.read_csv(run / "results.csv")
    remainders = set()
    for c in ("depth_rgb", "metadata+depth_rgb"):
        for k in (0, 1):
            row = results[(results["combination"] == c) & (results["fold"] == k)].iloc[0]
            again = rescored_from_predictions(run, c, k)
            assert abs(row["qwk"] - again["qwk"]) < 1e-5 and abs(row["visit_qwk"] - again["visit_qwk"]) < 1e-5  # csv: 6 decimals
            job = json.loads((run / "jobs" / c / f"fold_{k}.json").read_text())
            stage1 = job["stages"]["stage1"]
            assert stage1["batch"] % 3 == 0 and stage1["feature_cache"]["used"]
            assert row["n_val"] == len(pd.read_csv(run / "predictions" / c / f"fold_{k}.csv"))  # every row once
            remainders |= {stage1["n_train"] % 3, stage1["n_val"] % 3, row["n_val"] % 3}
    assert len(remainders) >= 2, remainders  # the datasets leave different remainders against 3 replicas
