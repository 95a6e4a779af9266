"""Patient-level stratified folds: the one split every combination in a search shares.

A patient's visits are correlated, so every split groups by patient. Folds are written
to logs/<run>/folds.json (sample_id -> fold) and that file is the source of truth.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medfusion.constants import CLASSES
from medfusion.data.manifest import Manifest


def patient_labels(manifest: Manifest) -> pd.Series:
    """One label per patient (their most frequent class; ties go to the lower class) for stratifying patients."""
    df = manifest.samples[["patient", "label"]]
    return df.groupby("patient")["label"].agg(lambda s: int(np.bincount(s, minlength=len(CLASSES)).argmax()))


def subsample_patients(manifest: Manifest, percentage: float, seed: int) -> Manifest:
    """Keep `percentage` % of patients, stratified by patient label, before any folding."""
    if percentage >= 100:
        return manifest
    plab = patient_labels(manifest)
    n_keep = int(round(len(plab) * percentage / 100.0))
    if n_keep < 2:
        raise ValueError(f"--data_percentage {percentage} keeps {n_keep} of {len(plab)} patients; "
                         "raise it so at least a few patients per fold remain")
    counts = plab.value_counts()
    stratify = plab.to_numpy() if counts.min() >= 2 and n_keep >= len(counts) else None
    keep, _ = train_test_split(plab.index.to_numpy(), train_size=n_keep, stratify=stratify, random_state=seed)
    return manifest.subset(manifest.samples["patient"].isin(set(keep)).to_numpy())


def make_folds(manifest: Manifest, n_folds: int, seed: int) -> dict[str, int]:
    """sample_id -> fold index, StratifiedGroupKFold by patient with a fixed seed."""
    n_patients = manifest.samples["patient"].nunique()
    if n_patients < n_folds:
        raise ValueError(f"{n_patients} patients cannot fill {n_folds} folds; lower --cv_folds to at most {n_patients}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.full(len(manifest), -1, dtype=int)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(manifest)), manifest.labels, manifest.patients)):
        fold_of[val_idx] = k
    assignment = dict(zip(manifest.samples["sample_id"].tolist(), fold_of.tolist()))
    check_folds(manifest, assignment)
    return assignment


def check_folds(manifest: Manifest, assignment: dict[str, int]) -> None:
    """Abort if a patient sits in two folds or a sample has no fold: a leak makes every number wrong."""
    folds = manifest.samples["sample_id"].map(assignment)
    if folds.isna().any():
        missing = manifest.samples.loc[folds.isna(), "sample_id"].iloc[0]
        raise RuntimeError(f"sample {missing!r} has no fold in the fold assignment")
    per_patient = pd.Series(folds.to_numpy()).groupby(manifest.patients).nunique()
    leaked = per_patient[per_patient > 1]
    if len(leaked):
        raise RuntimeError(f"patient leakage: patient {leaked.index[0]} appears in {int(leaked.iloc[0])} folds")


def fold_indices(manifest: Manifest, assignment: dict[str, int], fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Positional (train, validation) indices of one fold; aborts if a patient is on both sides."""
    folds = manifest.samples["sample_id"].map(assignment).to_numpy()
    train, val = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    shared = set(manifest.patients[train]) & set(manifest.patients[val])
    if shared:
        raise RuntimeError(f"patient leakage in fold {fold}: patient {sorted(shared)[0]} is in training and validation")
    if len(val) == 0:
        raise RuntimeError(f"fold {fold} has no validation samples")
    return train, val
