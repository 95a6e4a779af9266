import numpy as np
import pandas as pd
import pytest

from medfusion.evaluation.calibration import calibration_table, expected_calibration_error, reliability


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
