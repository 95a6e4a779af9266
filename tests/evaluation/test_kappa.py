import numpy as np
from sklearn.metrics import cohen_kappa_score

from medfusion.evaluation.kappa import confusion, qwk_from_confusion


def test_qwk_from_confusion_matches_sklearn():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y, p = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
        want = cohen_kappa_score(y, p, labels=[0, 1, 2], weights="quadratic")
        assert abs(float(qwk_from_confusion(confusion(y, p))) - want) < 1e-12


def test_stack_and_undefined():
    a = confusion([0, 1, 2, 2], [0, 1, 1, 2])
    b = confusion([1, 1, 1], [1, 1, 1])  # one class on both sides: undefined -> 0, as sklearn's replace_undefined_by
    got = qwk_from_confusion(np.stack([a, b]))
    assert abs(got[0] - cohen_kappa_score([0, 1, 2, 2], [0, 1, 1, 2], weights="quadratic")) < 1e-12
    assert got[1] == 0.0
