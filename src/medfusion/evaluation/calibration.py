"""Can the probabilities be trusted: expected calibration error and reliability tables.

Confidence is the predicted class's probability, correctness whether that class is the true
one; equal-width bins over [0, 1]. Computed on the pooled out-of-fold predictions, per view
and per visit (a visit's probabilities are the mean of its views').
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfusion.evaluation.visits import PROBA_COLUMNS, visit_table

N_BINS = 10
CALIBRATION_COLUMNS = ["combination", "unit", "n", "ece", "mean_confidence", "accuracy"]


def reliability(y_true, proba, n_bins: int = N_BINS) -> pd.DataFrame:
    """Per bin: lower/upper edge, count, mean confidence, accuracy (empty bins have count 0)."""
    proba = np.asarray(proba, dtype=np.float64)
    conf, pred = proba.max(axis=1), proba.argmax(axis=1)
    correct = (pred == np.asarray(y_true, int)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)  # (lo, hi], first bin [0, hi]
    rows = []
    for b in range(n_bins):
        sel = which == b
        rows.append({"lo": edges[b], "hi": edges[b + 1], "count": int(sel.sum()),
                     "confidence": float(conf[sel].mean()) if sel.any() else np.nan,
                     "accuracy": float(correct[sel].mean()) if sel.any() else np.nan})
    return pd.DataFrame(rows)


def expected_calibration_error(y_true, proba, n_bins: int = N_BINS) -> float:
    """sum over bins of (bin share) x |accuracy - mean confidence|."""
    table = reliability(y_true, proba, n_bins)
    used = table[table["count"] > 0]
    n = used["count"].sum()
    return float((used["count"] / n * (used["accuracy"] - used["confidence"]).abs()).sum()) if n else float("nan")


def calibration_table(predictions: dict) -> pd.DataFrame:
    """combination -> [(prediction table, rule)] -> one row per combination and unit (view, visit)."""
    rows = []
    for combo, frames in predictions.items():
        views = pd.concat([p for p, _ in frames], ignore_index=True)
        visits = pd.concat([visit_table(p) for p, _ in frames], ignore_index=True)
        for unit, t in (("view", views), ("visit", visits)):
            proba, y = t[PROBA_COLUMNS].to_numpy(), t["y_true"].to_numpy()
            rows.append({"combination": combo, "unit": unit, "n": int(len(t)),
                         "ece": expected_calibration_error(y, proba), "mean_confidence": float(proba.max(1).mean()),
                         "accuracy": float((proba.argmax(1) == y).mean())})
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)
