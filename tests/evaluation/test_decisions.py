import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from medfusion.evaluation.decisions import decide, fit_decision, fit_fusion_weight


def test_fusion_weight_recovers_the_better_branch():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    good[np.arange(300), y] = 0.8
    noise = rng.dirichlet([1, 1, 1], 300)
    assert fit_fusion_weight(good, noise, y, 0.7)["weight"] > 0.8  # forest informative, image noise
    assert fit_fusion_weight(noise, good, y, 0.7)["weight"] < 0.2


def test_fusion_weight_minimises_log_loss_by_hand():
    y = np.array([0, 1])
    p_rf = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]])
    p_img = np.array([[0.2, 0.7, 0.1], [0.2, 0.7, 0.1]])
    # loss(s) = -[log(0.2 + 0.7 s) + log(0.7 - 0.65 s)] / 2, minimum where d/ds = 0: s = (0.7*0.7 - 0.65*0.2) / (2*0.7*0.65)
    s_star = (0.7 * 0.7 - 0.65 * 0.2) / (2 * 0.7 * 0.65)
    assert abs(fit_fusion_weight(p_rf, p_img, y, 0.7)["weight"] - s_star) <= 0.005 + 1e-9


def test_ordinal_thresholds_find_separating_cuts():
    # expected class index e = p_P + 2 p_R; truth is I below 0.8, P in [0.8, 1.25), R above: argmax gets many wrong
    e = np.linspace(0.3, 1.7, 60)
    y = np.digitize(e, [0.8, 1.25])
    p_r = np.clip(e - 1, 0, None)
    proba = np.stack([1 - (e - 2 * p_r) - p_r, e - 2 * p_r, p_r], axis=1)
    np.testing.assert_allclose(proba @ [0, 1, 2], e)
    rule = fit_decision("ordinal_thresholds", proba, y)
    assert rule["selection_qwk"] == pytest.approx(1.0)
    assert cohen_kappa_score(y, decide(proba, rule), weights="quadratic") == pytest.approx(1.0)
    assert cohen_kappa_score(y, decide(proba, None), weights="quadratic") < 1.0


def test_argmax_rule_and_unknown():
    proba = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert decide(proba, fit_decision("argmax", proba, [1, 0])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="unknown decision rule"):
        fit_decision("median", proba, [1, 0])
