"""Bundles and --mode predict: a finished search's models used on new patients."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from medfusion.data.synthetic import generate_demo
from tests.harness import ROOT

PREDICT_FOLD = """
import sys, numpy as np, pandas as pd
from pathlib import Path
from medfusion.config import load_config
from medfusion.data.dfu import load_dfu
from medfusion.bundles import bundle_dir, load_bundle
from medfusion.predict import _metadata_inputs, load_all_crops
from medfusion.training.stages import predict
run, combo, fold = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfg = load_config(run / "config.yaml")
ids = pd.read_csv(run / "predictions" / combo / f"fold_{fold}.csv")["sample_id"]
manifest = load_dfu(Path(cfg.data.data_dir), cfg.data)
manifest = manifest.subset(manifest.samples["sample_id"].isin(set(ids)).to_numpy())
bundle = load_bundle(bundle_dir(run, combo, fold), cfg)
inputs = {m: c for m, c in load_all_crops(cfg, manifest, [m for m in combo.split("+") if m != "metadata"]).items()}
inputs["metadata"] = _metadata_inputs(bundle, manifest)
proba = predict(bundle.model, inputs, 32)
pd.DataFrame(proba, columns=["p_I", "p_P", "p_R"]).assign(sample_id=manifest.samples["sample_id"].to_numpy()
             ).to_csv(sys.argv[4], index=False)
"""


def _main(*args):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_bundle_reloaded_in_a_fresh_process_predicts_what_the_job_wrote(tiny_search, tmp_path):
    run, _ = tiny_search
    for fold in (0, 1):
        out = tmp_path / f"fold_{fold}.csv"
        proc = subprocess.run([sys.executable, "-c", PREDICT_FOLD, str(run), "metadata+depth_rgb", str(fold), str(out)],
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = pd.read_csv(out).set_index("sample_id")
        want = pd.read_csv(run / "predictions" / "metadata+depth_rgb" / f"fold_{fold}.csv").set_index("sample_id")
        cols = ["p_I", "p_P", "p_R"]
        np.testing.assert_allclose(got.loc[want.index, cols].to_numpy(), want[cols].to_numpy(), atol=1e-6)
    info = json.loads((run / "bundles" / "metadata+depth_rgb" / "fold_0" / "bundle.json").read_text())
    assert set(info["files"]) == {"model.keras", "metadata.joblib"} and info["classes"] == ["I", "P", "R"]
    assert info["image"]["image_size"] == 16 and info["decision"]["kind"] == "argmax"


@pytest.mark.slow
def test_predict_mode_on_another_dataset_matches_sklearn(tiny_search, tmp_path):
    run, _ = tiny_search
    other = generate_demo(tmp_path / "other", seed=21, n_patients=10)
    out = tmp_path / "pred"
    proc = _main("--mode", "predict", "--run_name", run.name, "--set", f"runtime.logs_dir={run.parent}",
                 "--data_dir", str(other), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples, visits = pd.read_csv(out / "samples.csv"), pd.read_csv(out / "visits.csv")
    meta = pd.read_csv(other / "metadata.csv", encoding="utf-8-sig")
    assert samples["sample_id"].is_unique and set(visits["visit"]) == set(samples["visit"])
    assert len(visits) == samples["visit"].nunique() and samples["visit"].str.match(r"^P\d{6}$").all()
    assert set(samples["patient"]) <= set(meta["Patient#"])
    chosen = pd.read_csv(run / "summary.csv")
    chosen = chosen[~chosen["combination"].str.contains(":")].iloc[0]["combination"]  # sorted best first
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["combination"] == chosen
    labels = {"I": 0, "P": 1, "R": 2}
    view = cohen_kappa_score(samples["true"].map(labels), samples["predicted"].map(labels), labels=[0, 1, 2],
                             weights="quadratic")
    visit = cohen_kappa_score(visits["true"].map(labels), visits["predicted"].map(labels), labels=[0, 1, 2],
                              weights="quadratic")
    assert abs(metrics["view"]["qwk"] - view) < 1e-9 and abs(metrics["visit"]["visit_qwk"] - visit) < 1e-9
    # a visit's probabilities are the mean of its views'
    means = samples.groupby("visit")[["p_I", "p_P", "p_R"]].mean()
    np.testing.assert_allclose(visits.set_index("visit").loc[means.index, ["p_I", "p_P", "p_R"]], means, atol=2e-6)
    # without labels: predictions only
    unlabelled = tmp_path / "unlabelled"
    import shutil

    shutil.copytree(other, unlabelled)
    meta.drop(columns=["Healing Phase Abs"]).to_csv(unlabelled / "metadata.csv", index=False, encoding="utf-8-sig")
    proc = _main("--mode", "predict", "--run_name", run.name, "--set", f"runtime.logs_dir={run.parent}",
                 "--data_dir", str(unlabelled), "--out", str(tmp_path / "pred2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "pred2" / "metrics.json").exists()
    again = pd.read_csv(tmp_path / "pred2" / "samples.csv")
    np.testing.assert_allclose(again[["p_I", "p_P", "p_R"]], samples[["p_I", "p_P", "p_R"]], atol=1e-6)


@pytest.mark.slow
def test_bundle_of_another_config_is_refused_by_name(copy_run, tiny_data, tmp_path):
    info_path = copy_run / "bundles" / "metadata+depth_rgb" / "fold_1" / "bundle.json"
    info = json.loads(info_path.read_text())
    info["config"]["train.stage1.lr"] = 0.123
    info_path.write_text(json.dumps(info))
    proc = _main("--mode", "predict", "--run_name", copy_run.name, "--set", f"runtime.logs_dir={copy_run.parent}",
                 "--data_dir", str(tiny_data), "--combination", "metadata+depth_rgb", "--out", str(tmp_path / "p"))
    assert proc.returncode == 2
    assert "fold_1" in proc.stderr and "another config" in proc.stderr and "train.stage1.lr" in proc.stderr
    assert "0.123" in proc.stderr
    info["config"]["train.stage1.lr"] = json.loads((copy_run.parent / copy_run.name / "bundles" / "metadata+depth_rgb"
                                                    / "fold_0" / "bundle.json").read_text())["config"]["train.stage1.lr"]
    info["medfusion_version"] = "0.0.1"
    info_path.write_text(json.dumps(info))
    proc = _main("--mode", "predict", "--run_name", copy_run.name, "--set", f"runtime.logs_dir={copy_run.parent}",
                 "--data_dir", str(tiny_data), "--combination", "metadata+depth_rgb", "--out", str(tmp_path / "q"))
    assert proc.returncode == 2 and "made by medfusion '0.0.1'" in proc.stderr


def test_a_bundle_made_before_a_config_key_existed_counts_it_as_its_default():
    from medfusion import __version__
    from medfusion.bundles import BUNDLE_FORMAT, bundle_problem, config_slice
    from medfusion.config import load_config, replace

    cfg = load_config(str(ROOT / "configs" / "demo.yaml"))
    old = {k: v for k, v in config_slice(cfg).items() if k != "train.calibrate"}  # written before the key existed
    info = {"format": BUNDLE_FORMAT, "medfusion_version": __version__, "config": old}
    assert bundle_problem(info, cfg) is None
    problem = bundle_problem(info, replace(cfg, "train.calibrate", "temperature"))
    assert problem and "train.calibrate: bundle has 'none', the run has 'temperature'" in problem
