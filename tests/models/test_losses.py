import numpy as np
import pytest

from medfusion.models.losses import equal_alpha, focal_alpha, focal_loss


def _labels(counts):
    return np.concatenate([np.full(c, k) for k, c in enumerate(counts)])


def test_focal_alpha_capped_by_hand():
    # counts (50, 30, 5), n = 85, K = 3: raw_i = 85 / (3 * count_i)
    raw = np.array([85 / 150, 85 / 90, 85 / 15])  # 0.5667, 0.9444, 5.6667 (max/min = 10)
    capped = np.array([raw[0], raw[1], 3.0 * raw[0]])  # R clipped to 3 x min = 1.7
    expected = capped / capped.sum()  # [0.17647, 0.29412, 0.52941]
    alpha = focal_alpha(_labels((50, 30, 5)), 3, max_ratio=3.0)
    np.testing.assert_allclose(alpha, expected, rtol=1e-12)
    np.testing.assert_allclose(alpha, [3 / 17, 5 / 17, 9 / 17], rtol=1e-12)
    assert alpha.max() / alpha.min() == pytest.approx(3.0)
    assert alpha.sum() == pytest.approx(1.0)


def test_focal_alpha_uncapped():
    alpha = focal_alpha(_labels((50, 30, 5)), 3, max_ratio=0)
    inv = np.array([1 / 50, 1 / 30, 1 / 5])
    np.testing.assert_allclose(alpha, inv / inv.sum(), rtol=1e-12)
    assert alpha.max() / alpha.min() == pytest.approx(10.0)


def test_focal_alpha_balanced_is_equal():
    np.testing.assert_allclose(focal_alpha(_labels((10, 10, 10))), equal_alpha(3))
    np.testing.assert_allclose(equal_alpha(3), [1 / 3] * 3)


def test_focal_alpha_missing_class_names_it():
    with pytest.raises(ValueError, match=r"class P .*training part lacks it"):
        focal_alpha(_labels((10, 0, 4)))


def test_focal_loss_matches_hand_formula():
    alpha = np.array([0.2, 0.3, 0.5])
    gamma = 2.0
    y = np.eye(3, dtype="float32")[[0, 2, 1]]
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.5, 0.2], [0.1, 0.6, 0.3]], dtype="float32")
    # per row: -sum_k alpha_k * y_k * (1 - p_k)^gamma * log p_k ; Keras averages over rows
    expected = np.mean(-np.sum(alpha * y * (1 - p) ** gamma * np.log(p), axis=1))
    loss = focal_loss(alpha, gamma)
    assert loss.name == "focal_loss"
    assert float(loss(y, p)) == pytest.approx(expected, rel=1e-5)
    # alpha really is per class: the row of class R (alpha 0.5) = 0.5 * 0.8^2 * -log 0.2
    row = -0.5 * (1 - 0.2) ** 2 * np.log(0.2)
    assert float(loss(y[1:2], p[1:2])) == pytest.approx(row, rel=1e-5)
