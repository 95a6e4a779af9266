import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from medfusion.evaluation.visits import visit_scores, visit_table


def _pred():
    # visit A (patient 1, true I): views 0.6/0.4 I -> mean I 0.5, P 0.4 -> I
    # visit B (patient 1, true P): views say R, P -> mean P 0.45, R 0.45-? chosen so P wins
    # visit C (patient 2, true R): one view, R
    # visit D (patient 3, true P): two views, mean I -> wrong
    rows = [
        ("s1", 1, "A", 0, 0.6, 0.3, 0.1), ("s2", 1, "A", 0, 0.4, 0.5, 0.1),
        ("s3", 1, "B", 1, 0.1, 0.4, 0.5), ("s4", 1, "B", 1, 0.1, 0.6, 0.3),
        ("s5", 2, "C", 2, 0.1, 0.2, 0.7),
        ("s6", 3, "D", 1, 0.7, 0.2, 0.1), ("s7", 3, "D", 1, 0.5, 0.4, 0.1),
    ]
    return pd.DataFrame(rows, columns=["sample_id", "patient", "visit", "y_true", "p_I", "p_P", "p_R"])


def test_visit_table_is_mean_of_views():
    v = visit_table(_pred()).set_index("visit")
    np.testing.assert_allclose(v.loc["A", ["p_I", "p_P", "p_R"]].to_numpy(float), [0.5, 0.4, 0.1])
    np.testing.assert_allclose(v.loc["B", ["p_I", "p_P", "p_R"]].to_numpy(float), [0.1, 0.5, 0.4])
    assert v.loc["D", "n_views"] == 2 and v.loc["C", "n_views"] == 1


def test_visit_qwk_equals_sklearn_on_hand_made_visits():
    s = visit_scores(_pred())
    # by hand: visit predictions A->I, B->P, C->R, D->I; truths I, P, R, P
    want = cohen_kappa_score([0, 1, 2, 1], [0, 1, 2, 0], weights="quadratic")
    assert s["n_val_visits"] == 4
    assert abs(s["visit_qwk"] - want) < 1e-12
    assert abs(s["visit_accuracy"] - 0.75) < 1e-12


def test_views_of_one_visit_with_two_labels_are_refused():
    p = _pred()
    p.loc[1, "y_true"] = 2
    with pytest.raises(ValueError, match="visit 'A'"):
        visit_table(p)
