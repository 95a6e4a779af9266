import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from medfusion.evaluation.bootstrap import bootstrap_qwk, paired_bootstrap


def _visits(seed=0, n_patients=30, noise=0.3):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for v in range(rng.integers(1, 4)):
            y = int(rng.integers(0, 3))
            pred = y if rng.random() > noise else int(rng.integers(0, 3))
            rows.append({"visit": f"P{p:03d}{v:02d}1", "patient": p, "y_true": y, "y_pred": pred})
    return pd.DataFrame(rows)


def test_interval_reproducible_and_covers_point():
    v = _visits()
    a, b = bootstrap_qwk(v, n=500, seed=3), bootstrap_qwk(v, n=500, seed=3)
    assert a == b
    assert abs(a["qwk"] - cohen_kappa_score(v["y_true"], v["y_pred"], weights="quadratic")) < 1e-12
    assert a["ci_low"] <= a["qwk"] <= a["ci_high"] and a["ci_high"] - a["ci_low"] > 0.01
    assert bootstrap_qwk(v, n=500, seed=4) != a  # the seed matters


def test_resampling_is_by_patient():
    """One patient with all visits: every resample holds that patient only, so the interval is a point."""
    v = _visits(n_patients=1)
    out = bootstrap_qwk(v, n=200, seed=0)
    assert out["ci_low"] == out["ci_high"] == out["qwk"]


def test_paired_difference():
    a = _visits(seed=1, noise=0.1)
    same = paired_bootstrap(a, a, n=300, seed=0)
    assert same["delta"] == same["ci_low"] == same["ci_high"] == 0.0
    b = a.copy()
    b["y_pred"] = 1  # a constant predictor: QWK 0
    d = paired_bootstrap(a, b, n=300, seed=0)
    want = cohen_kappa_score(a["y_true"], a["y_pred"], weights="quadratic")
    assert abs(d["delta"] - want) < 1e-12 and d["ci_low"] > 0
