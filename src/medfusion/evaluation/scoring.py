"""The metrics a job record carries, from its prediction table alone (so rescoring needs nothing else)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES
from medfusion.evaluation.decisions import decide
from medfusion.evaluation.visits import PROBA_COLUMNS, visit_scores
from medfusion.models.metrics import score_predictions


def job_scores(pred: pd.DataFrame, rule) -> dict:
    """Per-view and per-visit metrics and predicted-class counts of one prediction table."""
    proba = pred[PROBA_COLUMNS].to_numpy()
    metrics = {**score_predictions(pred["y_true"].to_numpy(), proba, rule), **visit_scores(pred, rule)}
    counts = np.bincount(decide(proba, rule), minlength=len(CLASSES))
    return {"metrics": metrics, "val_pred_counts": dict(zip(CLASSES, counts.tolist()))}
