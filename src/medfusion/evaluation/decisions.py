"""Choices made on the inner selection split: the fusion weight and the decision rule.

Each is fit on probabilities that no branch was trained on, and only then applied to the
outer validation fold, whose labels only the scorer reads.
"""

from __future__ import annotations

import numpy as np

from medfusion.evaluation.kappa import confusion, qwk_from_confusion

DECISIONS = ("argmax", "ordinal_thresholds")
# candidate forest weights: away from 0 and 1 so the fusion layer's logit stays finite
WEIGHT_GRID = np.round(np.linspace(0.01, 0.99, 99), 4)
THRESHOLD_GRID = np.round(np.linspace(0.05, 1.95, 39), 4)  # on the expected class index in [0, 2]


def fit_fusion_weight(p_rf: np.ndarray, p_img: np.ndarray, y: np.ndarray, init: float) -> dict:
    """Forest weight s minimising the mean log loss of s*p_rf + (1-s)*p_img on held-out rows.

    Log loss, not QWK: it is smooth in s and rewards calibrated mixing; ties go to the
    weight closest to `init`. Returns {"weight", "log_loss", "init", "n"}.
    """
    y = np.asarray(y, int)
    p_rf, p_img = np.asarray(p_rf, np.float64), np.asarray(p_img, np.float64)
    rows = np.arange(len(y))
    mixed = WEIGHT_GRID[:, None] * p_rf[None, rows, y] + (1 - WEIGHT_GRID[:, None]) * p_img[None, rows, y]
    loss = -np.log(np.clip(mixed, 1e-12, 1.0)).mean(axis=1)
    best = np.flatnonzero(loss <= loss.min() + 1e-12)
    s = float(WEIGHT_GRID[best[np.argmin(np.abs(WEIGHT_GRID[best] - init))]])
    return {"weight": s, "log_loss": float(loss[WEIGHT_GRID == s][0]), "init": float(init), "n": int(len(y))}


def expected_index(proba: np.ndarray) -> np.ndarray:
    return np.asarray(proba, np.float64) @ np.arange(np.asarray(proba).shape[1], dtype=np.float64)


def fit_decision(kind: str, proba: np.ndarray, y: np.ndarray) -> dict:
    """A decision rule fit on held-out rows: argmax, or two thresholds on the expected class index.

    Thresholds maximise QWK; ties go to the pair closest to the argmax-like (0.5, 1.5).
    """
    if kind not in DECISIONS:
        raise ValueError(f"unknown decision rule {kind!r}; use one of {', '.join(DECISIONS)}")
    if kind == "argmax":
        return {"kind": "argmax"}
    e, y = expected_index(proba), np.asarray(y, int)
    best, best_q, best_d = (0.5, 1.5), -np.inf, np.inf
    for a in THRESHOLD_GRID:
        for b in THRESHOLD_GRID[THRESHOLD_GRID > a]:
            q = float(qwk_from_confusion(confusion(y, np.digitize(e, [a, b]))))
            d = abs(a - 0.5) + abs(b - 1.5)
            if q > best_q + 1e-12 or (abs(q - best_q) <= 1e-12 and d < best_d):
                best, best_q, best_d = (float(a), float(b)), q, d
    return {"kind": "ordinal_thresholds", "thresholds": list(best), "selection_qwk": best_q, "n": int(len(y))}


def decide(proba: np.ndarray, rule: dict | None) -> np.ndarray:
    """Predicted class per row under a fitted rule (None or argmax: the most probable class)."""
    proba = np.asarray(proba)
    if not rule or rule.get("kind", "argmax") == "argmax":
        return proba.argmax(axis=1)
    return np.digitize(expected_index(proba), rule["thresholds"])
