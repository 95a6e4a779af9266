"""Visit-level predictions: a clinician's unit is the visit, not the camera view.

A visit's probabilities are the mean of its views'; its label is the visit's (every view
of a visit carries the same metadata row and label).
"""

from __future__ import annotations

import pandas as pd

from medfusion.constants import CLASSES

PROBA_COLUMNS = [f"p_{c}" for c in CLASSES]


def visit_table(pred: pd.DataFrame) -> pd.DataFrame:
    """Per-view prediction rows (sample_id, patient, visit, y_true, p_*) -> one row per visit."""
    missing = [c for c in ["patient", "visit", "y_true", *PROBA_COLUMNS] if c not in pred.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing}")
    labels = pred.groupby("visit")["y_true"].nunique()
    if (labels > 1).any():
        raise ValueError(f"visit {labels[labels > 1].index[0]!r} has views with different labels")
    g = pred.groupby("visit", sort=True)
    out = g[PROBA_COLUMNS].mean()
    out["patient"] = g["patient"].first()
    out["y_true"] = g["y_true"].first()
    out["n_views"] = g.size()
    return out.reset_index()[["visit", "patient", "y_true", "n_views", *PROBA_COLUMNS]]


def visit_scores(pred: pd.DataFrame, rule: dict | None = None) -> dict:
    """visit_* metrics (qwk, kappa, accuracy, f1_macro) and n_val_visits of one fold's predictions."""
    from medfusion.models.metrics import score_predictions

    visits = visit_table(pred)
    s = score_predictions(visits["y_true"].to_numpy(), visits[PROBA_COLUMNS].to_numpy(), rule=rule)
    return {"n_val_visits": int(len(visits)), "visit_qwk": s["qwk"], "visit_kappa": s["kappa"],
            "visit_accuracy": s["accuracy"], "visit_f1_macro": s["f1_macro"]}


def pooled_visits(frames: list[tuple[pd.DataFrame, dict | None]]) -> pd.DataFrame:
    """Out-of-fold visit rows of several folds with each fold's decision applied: patient, y_true, y_pred."""
    from medfusion.evaluation.decisions import decide

    rows = []
    for pred, rule in frames:
        v = visit_table(pred)
        v["y_pred"] = decide(v[PROBA_COLUMNS].to_numpy(), rule)
        rows.append(v[["visit", "patient", "y_true", "y_pred"]])
    if not rows:
        return pd.DataFrame(columns=["visit", "patient", "y_true", "y_pred"])
    return pd.concat(rows, ignore_index=True)
