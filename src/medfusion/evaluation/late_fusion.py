"""Late-fusion baselines: the simplest alternatives a learned fusion weight has to beat.

* ``late_mean:<combination>``: per fold, the mean of the validation probabilities of the
  combination's single-modality members (read from ``predictions/<member>/fold_<k>.csv``).
* ``ensemble:metadata``: per fold, the mean of every combination containing metadata (the
  reference study's best ensemble), written only when the search has a fusion with metadata.

Both are scored like every other row (per view and per visit, argmax decision). Nothing is
trained and no choice is made, so they need no selection split and no job record. The names
hold ':', which Windows refuses in file names: their prediction folders use ``-`` instead
(``predictions/late_mean-metadata+depth_rgb/fold_0.csv``); combination names never hold ``-``.
Pure functions over prediction tables; the search writes what they return.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfusion.evaluation.visits import PROBA_COLUMNS, visit_scores

LATE_MEAN = "late_mean"
ENSEMBLE_METADATA = "ensemble:metadata"
PREDICTION_COLUMNS = ["sample_id", "patient", "visit", "y_true", *PROBA_COLUMNS]


def is_late_fusion(name: str) -> bool:
    """True for a late-fusion row's name (it has no job record, stages or fusion weight)."""
    return name.startswith(LATE_MEAN + ":") or name == ENSEMBLE_METADATA


def folder_name(name: str) -> str:
    """File-system-safe folder of a row's predictions: ':' (refused on Windows) becomes '-'."""
    return name.replace(":", "-")


def name_of_folder(folder: str) -> str:
    """The row name a predictions/ folder holds (the inverse of folder_name)."""
    return folder.replace("-", ":", 1) if folder.startswith((LATE_MEAN + "-", folder_name(ENSEMBLE_METADATA))) \
        else folder


def late_fusion_plan(combinations) -> dict[str, list[str]]:
    """Late-fusion name -> the combinations whose probabilities it averages, for a search's combinations.

    Only searches with a fusion (multi-modality) combination get baselines; ensemble:metadata needs
    a fusion that contains metadata.
    """
    combos = [c for c in combinations if not is_late_fusion(c)]
    fusions = [c for c in combos if "+" in c]
    plan = {f"{LATE_MEAN}:{c}": c.split("+") for c in fusions}
    with_meta = [c for c in combos if "metadata" in c.split("+")]
    if any("+" in c for c in with_meta):
        plan[ENSEMBLE_METADATA] = with_meta
    return plan


def mean_table(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The mean of several prediction tables of the same validation samples (rows in the first one's order).

    Tables are aligned by sample_id; a table covering other samples or another label is refused, named.
    """
    names = list(tables)
    first = tables[names[0]].reset_index(drop=True)
    ids = first["sample_id"].astype(str)
    total = first[PROBA_COLUMNS].to_numpy(np.float64).copy()
    for name in names[1:]:
        t = tables[name].assign(sample_id=tables[name]["sample_id"].astype(str)).set_index("sample_id")
        if set(t.index) != set(ids) or t.index.duplicated().any():
            extra, missing = sorted(set(t.index) - set(ids)), sorted(set(ids) - set(t.index))
            raise ValueError(f"late fusion: {name}'s predictions cover other samples than {names[0]}'s "
                             f"({len(extra)} extra, e.g. {extra[:3]}; {len(missing)} missing, e.g. {missing[:3]}); "
                             "the members must come from the same fold of the same run")
        t = t.loc[ids]
        if not np.array_equal(t["y_true"].to_numpy(int), first["y_true"].to_numpy(int)):
            raise ValueError(f"late fusion: {name} and {names[0]} give the same samples different labels")
        total += t[PROBA_COLUMNS].to_numpy(np.float64)
    out = first[["sample_id", "patient", "visit", "y_true"]].copy()
    for i, c in enumerate(PROBA_COLUMNS):
        out[c] = total[:, i] / len(names)
    return out[PREDICTION_COLUMNS]


def late_fusion_tables(by_fold: dict[str, dict[int, pd.DataFrame]], combinations) -> dict[str, dict[int, pd.DataFrame]]:
    """name -> fold -> averaged prediction table, for every fold where all of a baseline's members finished.

    ``by_fold`` maps each finished combination to its folds' prediction tables.
    """
    out: dict[str, dict[int, pd.DataFrame]] = {}
    for name, members in late_fusion_plan(combinations).items():
        folds = sorted(set.intersection(*(set(by_fold.get(m, {})) for m in members)))
        tables = {k: mean_table({m: by_fold[m][k] for m in members}) for k in folds}
        if tables:
            out[name] = tables
    return out


def late_fusion_row(name: str, fold: int, pred: pd.DataFrame) -> dict:
    """A results.csv row of one baseline's fold: scores (argmax) and empty stage columns."""
    from medfusion.models.metrics import score_predictions

    scores = {**score_predictions(pred["y_true"].to_numpy(), pred[PROBA_COLUMNS].to_numpy()), **visit_scores(pred)}
    return {"combination": name, "fold": int(fold), "n_val": int(len(pred)), **scores, "decision": "argmax"}


def comparison_members(name: str, combinations) -> list[str]:
    """What a row is compared with in comparisons.csv: a baseline's members, a combination's modalities."""
    plan = late_fusion_plan(combinations)
    return plan.get(name) or name.split("+")
