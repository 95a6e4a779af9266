"""Can the probabilities be trusted: expected calibration error, reliability tables, temperature scaling.

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


# ----------------------------------------------------------------------------- temperature scaling
CALIBRATE_METHODS = ("none", "temperature")
TEMPERATURE_BOUNDS = (0.05, 20.0)  # T far outside this is a broken model, not a calibration
_EPS = 1e-12


def apply_temperature(proba, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): T > 1 softens, T < 1 sharpens, T = 1 returns p (up to rounding); argmax unchanged."""
    logits = np.log(np.clip(np.asarray(proba, dtype=np.float64), _EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(y_true, proba) -> float:
    """Mean negative log probability of the true class (probabilities clipped at 1e-12)."""
    p = np.asarray(proba, dtype=np.float64)[np.arange(len(y_true)), np.asarray(y_true, int)]
    return float(-np.log(np.clip(p, _EPS, 1.0)).mean())


def fit_temperature(y_true, proba) -> float:
    """The T in TEMPERATURE_BOUNDS minimising the log loss of softmax(log(p) / T) (bounded scalar search)."""
    from scipy.optimize import minimize_scalar

    lo, hi = np.log(TEMPERATURE_BOUNDS)  # search log T: the loss is far better conditioned there
    res = minimize_scalar(lambda u: log_loss(y_true, apply_temperature(proba, np.exp(u))), bounds=(lo, hi),
                          method="bounded", options={"xatol": 1e-6})
    t = float(np.exp(res.x))
    # a bounded search can stop near, not at, the identity: never return a T that is worse than T = 1
    return t if log_loss(y_true, apply_temperature(proba, t)) <= log_loss(y_true, proba) else 1.0


def calibrate_job(calibrate: str, proba_sel, y_sel, proba_val):
    """(proba_sel, proba_val, record): train.calibrate applied to one job's probabilities.

    "none": the inputs unchanged and {"method": "none"}. "temperature": one T fit on the
    selection split only (its labels are the only ones read), both tables rescaled by it, and
    the record {"method", "temperature", "n_selection", "selection_log_loss_before", "..._after"}.
    """
    if calibrate not in CALIBRATE_METHODS:
        raise ValueError(f"train.calibrate {calibrate!r} is not one of {', '.join(CALIBRATE_METHODS)}")
    if calibrate == "none":
        return proba_sel, proba_val, {"method": "none"}
    y_sel = np.asarray(y_sel, int)
    if len(y_sel) == 0:
        raise ValueError("train.calibrate: temperature needs selection-split samples to fit T on; the selection "
                         "split is empty (search.selection: outer has none; use train.calibrate: none there)")
    t = fit_temperature(y_sel, proba_sel)
    sel, val = apply_temperature(proba_sel, t), apply_temperature(proba_val, t)
    record = {"method": "temperature", "temperature": t, "n_selection": int(len(y_sel)),
              "selection_log_loss_before": log_loss(y_sel, proba_sel), "selection_log_loss_after": log_loss(y_sel, sel)}
    return sel, val, record
