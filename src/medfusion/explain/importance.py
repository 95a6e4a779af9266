"""Permutation importance of the metadata features, with permutations grouped by patient.

sklearn.inspection.permutation_importance shuffles rows independently. A patient's visits are
not independent rows: they share most of their metadata (age, sex, diabetes type...) and the
forest's score is read per patient as well as per visit. Shuffling rows would give one patient
the values of many patients across visits (combinations that never occur) and, for a column that
is constant within patients, would measure something other than "this feature carries no
information about this patient". Here each patient's visits receive, as one block, the values of
another patient (a random permutation of the patients; a donor with fewer visits repeats its
last value, one with more gives its first ones), and the drop in validation QWK is measured.
It is otherwise sklearn's procedure: a fitted model, a held-out set, repeated seeded shuffles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfusion.evaluation.kappa import confusion, qwk_from_confusion

IMPORTANCE_COLUMNS = ["feature", "qwk_drop_mean", "qwk_drop_std", "qwk_drop_fold_min", "qwk_drop_fold_max", "n_folds",
                      "n_repeats", "baseline_qwk_mean"]


def qwk(y_true, y_pred) -> float:
    return float(qwk_from_confusion(confusion(y_true, y_pred)))


def grouped_permutation(groups, rng) -> np.ndarray:
    """Row indices: each group's rows take, in order, the rows of another group (a permutation of the groups)."""
    groups = np.asarray(groups)
    uniq = list(dict.fromkeys(groups.tolist()))
    rows = {g: np.flatnonzero(groups == g) for g in uniq}
    donors = [uniq[i] for i in rng.permutation(len(uniq))]
    out = np.empty(len(groups), dtype=int)
    for g, d in zip(uniq, donors):
        src = rows[d]
        out[rows[g]] = src[np.minimum(np.arange(len(rows[g])), len(src) - 1)]
    return out


def permutation_importance_grouped(predict, X: pd.DataFrame, y, groups, n_repeats: int, seed: int) -> pd.DataFrame:
    """QWK drop per column of X (predict: DataFrame -> class indices), each of n_repeats grouped shuffles.

    Returns one row per (feature, repeat) with the baseline QWK and the drop.
    """
    y = np.asarray(y, int)
    base = qwk(y, predict(X))
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_repeats):
        perm = grouped_permutation(groups, rng)  # one shuffle per repeat, shared by every column
        for col in X.columns:
            Xp = X.copy()
            Xp[col] = X[col].to_numpy()[perm]
            rows.append({"feature": col, "repeat": r, "baseline_qwk": base, "qwk_drop": base - qwk(y, predict(Xp))})
    return pd.DataFrame(rows)


def aggregate_importance(per_fold: dict) -> pd.DataFrame:
    """fold -> per-repeat rows -> one row per feature: mean and std over folds x repeats, fold-mean range; ranked."""
    long = pd.concat([t.assign(fold=k) for k, t in per_fold.items()], ignore_index=True)
    fold_means = long.groupby(["feature", "fold"])["qwk_drop"].mean().unstack("fold")
    g = long.groupby("feature")
    table = pd.DataFrame({"qwk_drop_mean": g["qwk_drop"].mean(), "qwk_drop_std": g["qwk_drop"].std(ddof=1),
                          "qwk_drop_fold_min": fold_means.min(axis=1), "qwk_drop_fold_max": fold_means.max(axis=1),
                          "n_folds": g["fold"].nunique(), "n_repeats": g["repeat"].nunique(),
                          "baseline_qwk_mean": g["baseline_qwk"].mean()}).reset_index()
    table = table.sort_values(["qwk_drop_mean", "feature"], ascending=[False, True], kind="stable")
    return table[IMPORTANCE_COLUMNS].reset_index(drop=True)
