"""Resume modes, crash safety and shared pre-training, exercised through main.py in subprocesses."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfusion.data.synthetic import generate_demo
from tests.harness import bundle_weights, rescored_from_predictions

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "data.image_size=16", "--set", "train.pretrain.epochs=3", "--set", "train.stage1.epochs=3",
        "--set", "train.stage2.epochs=2", "--set", "forest.n_estimators=20", "--set", "model.head_units=8",
        "--set", "train.batch_size=16", "--set", "train.pretrain.patience=10", "--set", "train.stage1.patience=10",
        "--set", "train.stage2.patience=10"]
# Same seed and --deterministic: one thread per op, op determinism, oneDNN off, a training stream
# that is a pure function of (seed, step) (data/pipeline.py), and a resumed stage restores model,
# optimizer and dropout-seed variables and continues the stream at epochs_done x steps_per_epoch.
# A resumed run is then bit-identical to the uninterrupted one on the same machine (the weights
# are compared exactly below), so the metrics get no tolerance: any difference is a bug.
TOLERANCE = 0.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("data") / "tiny", seed=3, n_patients=24)


def search(logs, data, run="r", *extra, crash=None, expect=0):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS="0")  # bit-exact comparisons: oneDNN off, explicitly
    env.pop("MEDFUSION_CRASH_AT", None)
    if crash:
        env["MEDFUSION_CRASH_AT"] = crash
    cmd = [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "configs/demo.yaml"), "--data_dir", str(data),
           "--cv_folds", "2", "--run_name", run, "--set", f"runtime.logs_dir={logs}", "--set", "data.demo=false",
           "--combinations", "metadata+depth_rgb", "--deterministic", *FAST, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    if expect is not None:
        want = -signal.SIGKILL if crash else expect
        assert proc.returncode == want, (crash, proc.returncode, proc.stderr[-3000:])
    return proc


def done_lines(run_dir: Path) -> list[str]:
    return re.findall(r"--- fold \d job \S+ done in", (run_dir / "run.log").read_text())


@pytest.mark.slow
def test_sigkill_at_many_moments_then_resume_matches_uninterrupted(tmp_path, dataset):
    reference = tmp_path / "ref"
    search(reference, dataset)
    crashed = tmp_path / "crash"
    # after the first Stage 2 epoch; between a checkpoint's arrays and its json (the next stage's 2nd epoch);
    # pretrain epoch 2; Stage 1 epoch 2 (pretrain has 3 epochs); between jobs; mid-write of results.csv
    for point in ("epoch_stage2:1", "checkpoint_write:2", "epoch:2", "epoch:2", "job_done:2", "write:results.csv:2"):
        search(crashed, dataset, crash=point)
        assert (crashed / "r" / "config.yaml").is_file()
    search(crashed, dataset)  # --resume_mode auto is the default

    got = pd.read_csv(crashed / "r" / "results.csv")
    want = pd.read_csv(reference / "r" / "results.csv")
    assert not got.duplicated(["combination", "fold"]).any()
    trained = {"metadata", "depth_rgb", "metadata+depth_rgb"}
    baselines = {"late_mean:metadata+depth_rgb", "ensemble:metadata"}  # rebuilt from the prediction files
    assert len(got) == 5 * 2 and set(got["combination"]) == trained | baselines
    merged = want.merge(got, on=["combination", "fold"], suffixes=("_ref", "_res"))
    assert len(merged) == len(want)
    for col in ("qwk", "kappa", "accuracy", "f1_macro"):
        assert (merged[f"{col}_ref"] - merged[f"{col}_res"]).abs().max() <= TOLERANCE, col
    # stronger than the metrics: every saved model and every per-epoch history is identical
    for bundle in sorted((reference / "r" / "bundles").glob("*+*/fold_*")):  # the fusion models
        combo, fold = bundle.parent.name, int(bundle.name.split("_")[1])
        a, b = bundle_weights(reference / "r", combo, fold), bundle_weights(crashed / "r", combo, fold)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), f"{bundle}: weights differ"
    for ref_job in sorted((reference / "r" / "jobs").rglob("*.json")):
        rel = ref_job.relative_to(reference / "r")
        a, b = json.loads(ref_job.read_text()), json.loads((crashed / "r" / rel).read_text())
        for part in ("pretrain", "stages"):
            for name in a.get(part, {}):
                same = json.dumps(a[part][name]["history"]) == json.dumps(b[part][name]["history"])  # NaN-safe
                assert same, (str(rel), part, name)
    # every job finished exactly once across all attempts: nothing finished was trained again
    lines = done_lines(crashed / "r")
    assert len(lines) == len(set(lines)) == 6
    log = (crashed / "r" / "run.log").read_text()
    assert "finished earlier, outputs verified; skipped" in log
    assert "resuming after epoch" in log
    state = json.loads((crashed / "r" / "state.json").read_text())
    assert len(state["jobs"]) == 6
    assert not list((crashed / "r").rglob("*.tmp"))  # no stray half-written files


@pytest.mark.slow
def test_resume_modes_and_config_mismatch(tmp_path, dataset):
    logs = tmp_path / "logs"
    search(logs, dataset)
    run = logs / "r"
    first = pd.read_csv(run / "results.csv")

    # a second auto run finds everything done and trains nothing
    proc = search(logs, dataset)
    assert "[stage1] lr=" not in proc.stderr and len(done_lines(run)) == 6

    # from_predictions: results and summary rebuilt from the prediction files alone; every row equals
    # sklearn's score of its prediction file (an independent computation, not the job records)
    (run / "results.csv").unlink()
    (run / "summary.csv").unlink()
    search(logs, dataset, "r", "--resume_mode", "from_predictions")
    rebuilt = pd.read_csv(run / "results.csv")
    pd.testing.assert_frame_equal(rebuilt, first)
    for row in rebuilt[~rebuilt["combination"].str.contains(":")].itertuples():
        want = rescored_from_predictions(run, row.combination, row.fold)
        assert abs(row.qwk - want["qwk"]) < 1e-5 and abs(row.visit_qwk - want["visit_qwk"]) < 1e-5, row
    assert (run / "summary.csv").is_file()

    # from_models: predictions recomputed from the saved weights, no training
    before = pd.read_csv(run / "predictions" / "metadata+depth_rgb" / "fold_0.csv")
    (run / "predictions" / "metadata+depth_rgb" / "fold_0.csv").unlink()
    proc = search(logs, dataset, "r", "--resume_mode", "from_models")
    assert "epoch 1/" not in proc.stderr and "recomputed from its bundle" in proc.stderr
    after = pd.read_csv(run / "predictions" / "metadata+depth_rgb" / "fold_0.csv")
    pd.testing.assert_frame_equal(before, after, atol=1e-5)

    # a result-affecting change is refused, naming the key and both values
    proc = search(logs, dataset, "r", "--set", "train.stage1.lr=0.01", expect=2)
    assert "train.stage1.lr" in proc.stderr and "0.0005" in proc.stderr and "0.01" in proc.stderr
    assert "--resume_mode fresh" in proc.stderr
    # ... while verbosity may differ
    search(logs, dataset, "r", "--verbosity", "0")

    # fresh keeps the previous run's files aside
    search(logs, dataset, "r", "--resume_mode", "fresh")
    aside = [p for p in logs.iterdir() if p.name.startswith("r.")]
    assert len(aside) == 1
    pd.testing.assert_frame_equal(pd.read_csv(aside[0] / "results.csv"), first)
    assert (aside[0] / "predictions" / "metadata+depth_rgb" / "fold_1.csv").is_file()


@pytest.mark.slow
def test_one_pretraining_per_modality_and_fold_shared_across_runs(tmp_path, dataset):
    logs = tmp_path / "logs"
    extra = ["--combinations", "metadata+depth_rgb+thermal_map,depth_rgb+thermal_map"]
    search(logs, dataset, "a", *extra)
    log = (logs / "a" / "run.log").read_text()
    for k in (0, 1):
        trained = re.findall(rf"fold {k} pre-training (\S+): cache key \S+ \(training", log)
        assert sorted(trained) == ["depth_rgb", "thermal_map"], trained
    # 5 combinations (the two asked for + 3 single baselines), 4 of them with images, share those pre-trainings
    assert len(re.findall(r"job \S+ done in", log)) == 5 * 2
    search(logs, dataset, "b", *extra)  # same config and data, another run
    log_b = (logs / "b" / "run.log").read_text()
    assert "(training" not in log_b
    assert len(re.findall(r"pre-training \S+ cache key \S+ \(found, reused\)", log_b)) == 4
    job = json.loads((logs / "b" / "jobs" / "metadata+depth_rgb+thermal_map" / "fold_0.json").read_text())
    assert job["pretrain"]["depth_rgb"]["reused"] is True


def test_a_resume_on_another_replica_count_is_refused(copy_run, tiny_data):
    """The global batch is per-replica batch x replicas: continuing a run on other devices would change it."""
    from tests.harness import run_search

    saved = json.loads((copy_run / "runtime.json").read_text())
    assert saved["replicas"] == 1 and saved["global_batch"] == saved["per_replica_batch"]
    state = (copy_run / "state.json").read_bytes()
    _, proc = run_search(copy_run.parent, tiny_data, "--combinations", "metadata+depth_rgb", "--cpu_replicas", "2",
                         run_name=copy_run.name, check=False)
    assert proc.returncode == 2
    assert "it trained with 1 replica(s) (global batch 16), this search would use 2 (global batch 32)" in proc.stderr
    assert (copy_run / "state.json").read_bytes() == state
