"""End-to-end: main.py --mode search on a tiny generated dataset, in a subprocess (as a user runs it)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

from medfusion.data.synthetic import generate_demo
from medfusion.evaluation.aggregate import COMPARISON_COLUMNS, RESULT_COLUMNS, SUMMARY_COLUMNS
from medfusion.evaluation.late_fusion import late_fusion_plan

ROOT = Path(__file__).resolve().parents[1]
P = ["p_I", "p_P", "p_R"]
FAST = ["--set", "data.image_size=16", "--set", "train.pretrain.epochs=2", "--set", "train.stage1.epochs=2",
        "--set", "train.stage2.epochs=1", "--set", "forest.n_estimators=20", "--set", "model.head_units=8",
        "--set", "train.batch_size=16"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("data") / "tiny", seed=3, n_patients=24)


def _search(tmp_path, data_dir, *extra):
    cmd = [sys.executable, str(ROOT / "main.py"), "--mode", "search", "--config", str(ROOT / "configs/demo.yaml"),
           "--data_dir", str(data_dir), "--cv_folds", "2", "--run_name", "e2e",
           "--set", f"runtime.logs_dir={tmp_path / 'logs'}", "--set", "data.demo=false", *FAST, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "logs" / "e2e", proc


def _metadata_labels(data_dir) -> dict:
    """visit key -> label index, read straight from the dataset's metadata.csv."""
    meta = pd.read_csv(Path(data_dir) / "metadata.csv", encoding="utf-8-sig")
    keys = [f"P{int(p):03d}{int(a):02d}{int(d)}" for p, a, d in zip(meta["Patient#"], meta["Appt#"], meta["DFU#"])]
    return dict(zip(keys, meta["Healing Phase Abs"].str.strip().map({"I": 0, "P": 1, "R": 2})))


def _sk_scores(y, pred) -> dict:
    return {"qwk": cohen_kappa_score(y, pred, labels=[0, 1, 2], weights="quadratic"),
            "accuracy": accuracy_score(y, pred), "f1_macro": f1_score(y, pred, labels=[0, 1, 2], average="macro",
                                                                        zero_division=0)}


def _check_run_folder(run, combos, data_dir, folds=2):
    """Every number of results.csv / summary.csv recomputed independently from the prediction files."""
    for name in ("config.yaml", "folds.json", "results.csv", "summary.csv", "comparisons.csv", "run.log"):
        assert (run / name).is_file(), name
    results = pd.read_csv(run / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    late = late_fusion_plan(combos)
    assert late  # every search with a fusion combination has late-fusion baselines
    assert len(results) == (len(combos) + len(late)) * folds
    assert not results.duplicated(["combination", "fold"]).any()
    assert set(results["combination"]) == set(combos) | set(late)
    assignment = json.loads((run / "folds.json").read_text())
    labels = _metadata_labels(data_dir)
    for k in range(folds):
        text = (run / f"fold_{k}.log").read_text()
        for needle in ("train classes", "validation classes", "[stage1]", "trainable params", "transfer ",
                       "epoch 1/", "inner split", "fit on"):
            assert needle in text, (k, needle)
        for c in combos:
            job = json.loads((run / "jobs" / c / f"fold_{k}.json").read_text())
            assert job["combination"] == c and job["fold"] == k and "metrics" in job
            assert sum(job["val_class_counts"].values()) == job["n_val"]
            if c != "metadata":
                assert job["stages"]["stage1"]["history"]["val_qwk"] and job["transfer"][0]["verified"]
                assert job["stages"]["stage1"]["n_train"] == job["n_fit"] < job["n_train"]  # fit part only
                assert job["stages"]["stage1"]["n_val"] == job["n_selection"]
            pred = pd.read_csv(run / "predictions" / c / f"fold_{k}.csv")
            assert list(pred.columns) == ["sample_id", "patient", "visit", "y_true", "p_I", "p_P", "p_R"]
            assert sorted(pred["sample_id"]) == sorted(s for s, f in assignment.items() if f == k)
            assert (pred["y_true"] == pred["visit"].map(labels)).all()
            assert (pred[["p_I", "p_P", "p_R"]].sum(axis=1) - 1).abs().max() < 1e-4
            assert not set(pred["patient"]) & set(job["selection_patients"])
            row = results[(results["combination"] == c) & (results["fold"] == k)].iloc[0]
            view = _sk_scores(pred["y_true"], pred[["p_I", "p_P", "p_R"]].to_numpy().argmax(1))
            visits = pred.groupby("visit").agg(y=("y_true", "first"), p_I=("p_I", "mean"), p_P=("p_P", "mean"),
                                               p_R=("p_R", "mean"))
            visit = _sk_scores(visits["y"], visits[["p_I", "p_P", "p_R"]].to_numpy().argmax(1))
            for key in view:
                assert abs(row[key] - view[key]) < 1e-5, (c, k, key)
                assert abs(row[f"visit_{key}"] - visit[key]) < 1e-5, (c, k, key)
            assert row["n_val"] == len(pred) and row["n_val_visits"] == len(visits)
    _check_late_fusion(run, results, late, folds)
    summary = pd.read_csv(run / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS and len(summary) == len(combos) + len(late)
    assert summary["visit_qwk_mean"].is_monotonic_decreasing
    g = results.groupby("combination")
    for r in summary.itertuples():
        assert abs(r.visit_qwk_mean - g["visit_qwk"].mean()[r.combination]) < 1e-5
        assert abs(r.qwk_mean - g["qwk"].mean()[r.combination]) < 1e-5
        assert abs(r.qwk_std - g["qwk"].std(ddof=1)[r.combination]) < 1e-5
        assert r.visit_qwk_ci_low <= r.visit_qwk_pooled <= r.visit_qwk_ci_high
    calibration = pd.read_csv(run / "calibration.csv")  # pooled out-of-fold, per view and per visit
    assert set(calibration["unit"]) == {"view", "visit"} and set(combos) <= set(calibration["combination"])
    view = calibration[calibration["unit"] == "view"].set_index("combination")
    for c in combos:
        pooled = pd.concat([pd.read_csv(run / "predictions" / c / f"fold_{k}.csv") for k in range(folds)])
        assert view.loc[c, "n"] == len(pooled)
        correct = (pooled[["p_I", "p_P", "p_R"]].to_numpy().argmax(1) == pooled["y_true"].to_numpy()).mean()
        assert abs(view.loc[c, "accuracy"] - correct) < 1e-5  # the CSV keeps 6 decimals
    comparisons = pd.read_csv(run / "comparisons.csv")
    assert list(comparisons.columns) == COMPARISON_COLUMNS
    assert set(comparisons["combination"]) == {c for c in combos if "+" in c} | set(late)
    return results


def _check_late_fusion(run, results, late, folds):
    """Each baseline's prediction file is the mean of its members' files (joined on sample_id here), and its
    results row is sklearn's score of that mean (argmax), with empty stage columns."""
    for name, members in late.items():
        for k in range(folds):
            path = run / "predictions" / name.replace(":", "-") / f"fold_{k}.csv"
            got = pd.read_csv(path).set_index("sample_id")
            parts = [pd.read_csv(run / "predictions" / m / f"fold_{k}.csv").set_index("sample_id") for m in members]
            joined = pd.concat([t[P].add_suffix(f"@{i}") for i, t in enumerate(parts)], axis=1, join="inner")
            assert len(joined) == len(got) == len(parts[0])
            for c in P:
                want = joined[[f"{c}@{i}" for i in range(len(parts))]].mean(axis=1)
                assert (got.loc[want.index, c] - want).abs().max() <= 5.1e-7, (name, k, c)  # files hold 6 decimals
            assert (got["y_true"] == parts[0].loc[got.index, "y_true"]).all()
            row = results[(results["combination"] == name) & (results["fold"] == k)].iloc[0]
            view = _sk_scores(got["y_true"], got[P].to_numpy().argmax(1))
            visits = got.groupby("visit").agg(y=("y_true", "first"), **{c: (c, "mean") for c in P})
            visit = _sk_scores(visits["y"], visits[P].to_numpy().argmax(1))
            for key in view:
                assert abs(row[key] - view[key]) < 1e-6 and abs(row[f"visit_{key}"] - visit[key]) < 1e-6, (name, key)
            assert row["decision"] == "argmax" and pd.isna(row["stage1_best_epoch"]) and pd.isna(row["stage2_kept"])


def _check_tensorboard(run, combos, folds=2):
    """Event files (train and validation scalars) for every stage trained in the run, pre-training included."""
    board = run / "tensorboard"
    expected = [board / c / f"fold_{k}" / s for c in combos if c != "metadata" for k in range(folds)
                for s in ("stage1", "stage2")]
    expected += [board / f"pretrain-{m}" / f"fold_{k}" / "scratch" for m in {m for c in combos
                 for m in c.split("+") if m != "metadata"} for k in range(folds)]
    for d in expected:
        for part in ("train", "validation"):
            assert list((d / part).glob("events.out.tfevents.*")), d / part
    assert not (board / "metadata").exists()  # the forest trains no epochs


@pytest.mark.slow
def test_search_end_to_end(tmp_path, tiny_dataset):
    run, proc = _search(tmp_path, tiny_dataset, "--combinations", "metadata+depth_rgb")
    results = _check_run_folder(run, ["metadata", "depth_rgb", "metadata+depth_rgb"], tiny_dataset)
    _check_tensorboard(run, ["metadata", "depth_rgb", "metadata+depth_rgb"])
    fused = results[results["combination"] == "metadata+depth_rgb"]
    for k in (0, 1):  # the forest weight is the one fit on the selection split, and the model holds it
        job = json.loads((run / "jobs" / "metadata+depth_rgb" / f"fold_{k}.json").read_text())
        w = job["fusion_rf_weight"]
        assert w["method"] == "selection_log_loss" and w["n_selection"] == job["n_selection"]
        assert abs(fused[fused["fold"] == k]["fusion_rf_weight"].iloc[0] - w["end"]) < 1e-5
    assert fused["stage2_best_epoch"].notna().all()
    assert "metadata+depth_rgb" in proc.stderr + proc.stdout  # the final table is printed
    # the search ends with a review: findings printed, review.json, plots and report written
    assert (run / "review.json").is_file() and (run / "report.md").is_file()
    assert list((run / "plots").glob("*.png"))
    review = json.loads((run / "review.json").read_text())
    errors = [f for f in review["findings"] if f["severity"] == "error"]
    # late-fusion rows: in the report's summary table, never flagged (they have no job record to check)
    summary_md = (run / "report.md").read_text().split("## Findings")[0]
    assert "| late_mean:metadata+depth_rgb | 2 |" in summary_md and "| ensemble:metadata | 2 |" in summary_md
    assert not [f for f in review["findings"] if (f["combination"] or "").startswith(("late_mean", "ensemble"))]
    cmd = [sys.executable, str(ROOT / "main.py"), "--mode", "review", "--run_name", "e2e",
           "--set", f"runtime.logs_dir={tmp_path / 'logs'}", "--strict"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == (1 if errors else 0), again.stderr[-2000:]


def test_check_data_mode(tmp_path, tiny_dataset):
    import shutil

    cmd = [sys.executable, str(ROOT / "main.py"), "--mode", "check_data", "--config", str(ROOT / "configs/demo.yaml"),
           "--set", "data.demo=false", "--cv_folds", "2"]
    ok = subprocess.run(cmd + ["--data_dir", str(tiny_dataset)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "patients" in ok.stderr and "relax_angle" in ok.stderr
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dataset, broken)
    (broken / "metadata.csv").unlink()
    bad = subprocess.run(cmd + ["--data_dir", str(broken)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "metadata.csv" in bad.stderr


@pytest.mark.slow
def test_search_with_two_cpu_replicas(tmp_path, tiny_dataset):
    run, proc = _search(tmp_path, tiny_dataset, "--combinations", "metadata+thermal_map", "--cpu_replicas", "2")
    _check_run_folder(run, ["metadata", "thermal_map", "metadata+thermal_map"], tiny_dataset)
    log = (run / "run.log").read_text()
    assert "MirroredStrategy, 2 replica(s) in sync" in log
    assert "global batch 32" in (run / "fold_0.log").read_text()  # 16 per replica x 2 replicas


def test_bad_config_key_fails_before_writing(tmp_path, tiny_dataset):
    cmd = [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "configs/demo.yaml"), "--data_dir",
           str(tiny_dataset), "--set", "train.learnin_rate=1", "--set", f"runtime.logs_dir={tmp_path / 'logs'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "train.learnin_rate" in proc.stderr and "batch_size" in proc.stderr
    assert not (tmp_path / "logs").exists()
