"""What each branch adds: the QWK lost when its input is replaced by its training-set mean.

For a fold's model and validation samples, one branch's input (an image modality's crops, or
the forest's probabilities fed to the fusion layer) is set, for every sample, to the mean of
that input over the fold's training samples; the other inputs stay as they are. A branch the
model ignores costs exactly nothing; a branch it relies on costs QWK. The learned forest weight
of the fusion layer is reported next to it: the weight says how the two probability vectors are
mixed, the ablation says how much the decisions depend on each.
"""

from __future__ import annotations

import numpy as np

from medfusion.evaluation.decisions import decide
from medfusion.explain.importance import qwk

CONTRIBUTION_COLUMNS = ["combination", "fold", "branch", "forest_weight", "qwk_full", "qwk_ablated", "qwk_drop",
                        "changed_decisions", "n_val"]


def mean_input(train_input: np.ndarray) -> np.ndarray:
    """The training-set mean of one input, one row (pixel-wise for crops)."""
    return np.asarray(train_input, np.float64).mean(axis=0, keepdims=True).astype(np.float32)


def ablate(predict, inputs: dict, means: dict, y_true, rule: dict | None) -> list[dict]:
    """One row per branch: QWK with every input, with that branch at its mean, the drop, decisions changed.

    predict: dict of inputs -> probabilities; means: branch -> one-row mean input.
    """
    y = np.asarray(y_true, int)
    full = decide(predict(inputs), rule)
    q_full = qwk(y, full)
    rows = []
    for branch, m in means.items():
        x = dict(inputs)
        x[branch] = np.repeat(m, len(y), axis=0)
        ablated = decide(predict(x), rule)
        q = qwk(y, ablated)
        rows.append({"branch": branch, "qwk_full": q_full, "qwk_ablated": q, "qwk_drop": q_full - q,
                     "changed_decisions": int((ablated != full).sum()), "n_val": int(len(y))})
    return rows


def forest_weight(info: dict) -> float:
    """The fusion layer's forest weight the bundle's model carries (NaN without metadata or a fusion layer)."""
    w = info.get("fusion_rf_weight")
    if isinstance(w, dict):
        w = w.get("end")
    try:
        return float(w)
    except (TypeError, ValueError):
        return float("nan")
