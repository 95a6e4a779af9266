import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from sklearn.metrics import log_loss as sk_log_loss

from medfusion.evaluation.calibration import (apply_temperature, calibrate_job, calibration_table,
                                             expected_calibration_error, fit_temperature, reliability)
from tests.test_honest import honest_data  # noqa: F401  (the [honest] dataset fixture)


def test_ece_equals_a_hand_computation():
    # confidences 0.9, 0.9, 0.6, 0.6, 0.4 (bins (0.8, 0.9], (0.5, 0.6], (0.3, 0.4]); correct: 1, 0, 1, 1, 0
    proba = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.6, 0.3, 0.1], [0.2, 0.6, 0.2], [0.35, 0.25, 0.4]])
    y = np.array([0, 0, 0, 1, 1])
    # bin 0.9: acc 0.5, conf 0.9 -> 2/5 * 0.4; bin 0.6: acc 1.0, conf 0.6 -> 2/5 * 0.4; bin 0.4: acc 0, conf 0.4 -> 1/5 * 0.4
    want = 2 / 5 * 0.4 + 2 / 5 * 0.4 + 1 / 5 * 0.4
    assert expected_calibration_error(y, proba) == pytest.approx(want, abs=1e-12)
    table = reliability(y, proba)
    assert table["count"].sum() == 5 and table.loc[8, "count"] == 2 and table.loc[5, "count"] == 2


def test_perfect_calibration_is_zero():
    # 10 samples at confidence 0.7 of which exactly 7 correct
    proba = np.tile([0.7, 0.2, 0.1], (10, 1))
    y = np.array([0] * 7 + [1] * 3)
    assert expected_calibration_error(y, proba) == pytest.approx(0.0, abs=1e-12)


def test_calibration_table_per_view_and_visit():
    pred = pd.DataFrame({"sample_id": ["a", "b", "c"], "patient": [1, 1, 2], "visit": ["V1", "V1", "V2"],
                         "y_true": [0, 0, 2], "p_I": [0.8, 0.6, 0.1], "p_P": [0.1, 0.3, 0.2], "p_R": [0.1, 0.1, 0.7]})
    t = calibration_table({"m": [(pred, None)]}).set_index("unit")
    assert t.loc["view", "n"] == 3 and t.loc["visit", "n"] == 2
    # visits: V1 mean conf 0.7 correct, V2 conf 0.7 correct -> both in bin (0.6, 0.7], accuracy 1 -> ECE 0.3
    assert t.loc["visit", "ece"] == pytest.approx(0.3, abs=1e-12)


def _tempered_sample(t_true, n=4000, seed=0):
    """Labels drawn from softmax(z), probabilities reported as softmax(z * t_true): fitting must find t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(z, axis=1)])
    return y, softmax(z * t_true, axis=1)


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_temperature_recovers_a_known_temperature(t_true):
    y, proba = _tempered_sample(t_true)
    assert fit_temperature(y, proba) == pytest.approx(t_true, rel=0.08)


def test_temperature_one_is_the_identity_and_argmax_is_kept():
    y, proba = _tempered_sample(1.7, n=200, seed=1)
    assert np.allclose(apply_temperature(proba, 1.0), proba, atol=1e-12)
    assert (apply_temperature(proba, 3.0).argmax(1) == proba.argmax(1)).all()


def test_none_returns_the_inputs_unchanged():
    y, proba = _tempered_sample(2.0, n=50, seed=2)
    p_sel, p_val = proba[:30], proba[30:]
    sel, val, rec = calibrate_job("none", p_sel, y[:30], p_val)
    assert sel is p_sel and val is p_val and rec == {"method": "none"}


@pytest.mark.parametrize("seed", range(6))
def test_selection_log_loss_never_increases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y, proba = rng.integers(0, 3, n), softmax(rng.normal(0, 3, (n, 3)), axis=1)  # arbitrary, often miscalibrated
    sel, val, rec = calibrate_job("temperature", proba, y, proba[:3])
    before = sk_log_loss(y, proba, labels=[0, 1, 2])  # sklearn as the independent reference
    after = sk_log_loss(y, sel, labels=[0, 1, 2])
    assert after <= before + 1e-12
    assert rec["selection_log_loss_before"] == pytest.approx(before, rel=1e-9)
    assert rec["selection_log_loss_after"] == pytest.approx(after, rel=1e-9)
    assert np.allclose(val, apply_temperature(proba[:3], rec["temperature"]))


def test_an_empty_selection_split_and_an_unknown_method_are_refused():
    y, proba = _tempered_sample(2.0, n=30, seed=3)
    with pytest.raises(ValueError, match="selection split is empty"):
        calibrate_job("temperature", proba[:0], y[:0], proba)
    with pytest.raises(ValueError, match="platt"):
        calibrate_job("platt", proba, y, proba)


@pytest.mark.slow
def test_temperature_fit_on_selection_never_reads_the_validation_labels(tmp_path, honest_data):
    """[honest]'s relabelling with train.calibrate: temperature: fold 0's T and predictions stay bit-identical."""
    import json

    from tests.harness import DETERMINISTIC_ENV, relabel_patients, run_search
    from tests.test_honest import COMBOS, _fold0

    extra = ["--combinations", "metadata+depth_rgb", "--deterministic", "--set", "train.calibrate=temperature",
             "--set", "train.pretrain.epochs=4", "--set", "train.stage1.epochs=4"]
    a, _ = run_search(tmp_path / "a", honest_data, *extra, env=DETERMINISTIC_ENV)
    val0 = pd.read_csv(a / "predictions" / "metadata" / "fold_0.csv")
    relabelled = relabel_patients(honest_data, tmp_path / "relabelled", set(val0["patient"]))
    b, _ = run_search(tmp_path / "b", relabelled, *extra, "--folds", str(a / "folds.json"), env=DETERMINISTIC_ENV)
    yb = pd.read_csv(b / "predictions" / "metadata" / "fold_0.csv")
    assert (yb["y_true"] != val0["y_true"]).all()  # every fold-0 validation label moved

    def calibration(run):
        return {c: json.loads((run / "jobs" / c / "fold_0.json").read_text())["calibration"] for c in COMBOS}

    cal_a, cal_b = calibration(a), calibration(b)
    assert all(r["method"] == "temperature" and r["temperature"] != 1.0 for r in cal_a.values()), cal_a
    assert json.dumps(cal_a, sort_keys=True) == json.dumps(cal_b, sort_keys=True)  # T bit-identical (repr in JSON)
    fa, fb = _fold0(a), _fold0(b)
    changed = [k for k in fa if fa[k] != fb[k]]
    assert changed == [], changed
    # the saved metadata predictions are the forest's probabilities rescaled by T, not the raw ones
    with np.load(a / "forest" / "fold_0.npz") as z:
        raw = z[[k for k in z.files if k.startswith("val")][0]]
    saved = pd.read_csv(a / "predictions" / "metadata" / "fold_0.csv")[["p_I", "p_P", "p_R"]].to_numpy()
    assert np.allclose(saved, apply_temperature(raw, cal_a["metadata"]["temperature"]), atol=1e-5)
    assert not np.allclose(saved, raw, atol=1e-3)
    # a bundle applies its job's temperature: --mode predict's per-fold probabilities are the saved ones
    from pathlib import Path

    from medfusion.config import load_config
    from medfusion.data.dfu import load_dfu
    from medfusion.predict import fold_ensemble

    cfg = load_config(a / "config.yaml")
    want = pd.read_csv(a / "predictions" / "metadata+depth_rgb" / "fold_0.csv").set_index("sample_id")
    manifest = load_dfu(Path(cfg.data.data_dir), cfg.data)
    manifest = manifest.subset(manifest.samples["sample_id"].isin(set(want.index)).to_numpy())
    _, _, per_fold = fold_ensemble(a, cfg, "metadata+depth_rgb", manifest)
    got = pd.DataFrame(per_fold[0], columns=["p_I", "p_P", "p_R"], index=manifest.samples["sample_id"].to_numpy())
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want[["p_I", "p_P", "p_R"]].to_numpy(), atol=1e-5)
