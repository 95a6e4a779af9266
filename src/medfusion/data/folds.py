"""Patient-level stratified folds: the one split every combination in a search shares.

A patient's visits are correlated, so every split groups by patient. Folds are written
to logs/<run>/folds.json (sample_id -> fold) and that file is the source of truth.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from medfusion.constants import CLASSES
from medfusion.data.manifest import Manifest


def patient_labels(manifest: Manifest) -> pd.Series:
    """One label per patient (their most frequent class; ties go to the lower class) for stratifying patients."""
    df = manifest.samples[["patient", "label"]]
    return df.groupby("patient")["label"].agg(lambda s: int(np.bincount(s, minlength=len(CLASSES)).argmax()))


def subsample_patients(manifest: Manifest, percentage: float, seed: int, n_folds: int | None = None) -> Manifest:
    """Keep `percentage` % of patients, stratified by patient label, before any folding.

    ValueError when too few patients remain: fewer than 2, or (given `n_folds`) fewer than the folds;
    the message says which percentage is needed.
    """
    if percentage >= 100:
        return manifest
    plab = patient_labels(manifest)
    n_keep = int(round(len(plab) * percentage / 100.0))
    need = max(2, n_folds or 2)
    if n_keep < need:
        least = math.ceil(need / len(plab) * 100.0 * 10) / 10
        what = f"fewer than the {n_folds} folds" if n_folds and n_keep >= 2 else "too few to split"
        raise ValueError(f"--data_percentage {percentage:g} keeps {n_keep} of {len(plab)} patients, {what}; "
                         f"use --data_percentage {least:g} or more" + (" (or lower --cv_folds)" if n_folds else ""))
    counts = plab.value_counts()
    stratify = plab.to_numpy() if counts.min() >= 2 and n_keep >= len(counts) else None
    keep, _ = train_test_split(plab.index.to_numpy(), train_size=n_keep, stratify=stratify, random_state=seed)
    return manifest.subset(manifest.samples["patient"].isin(set(keep)).to_numpy())


def make_folds(manifest: Manifest, n_folds: int, seed: int) -> dict[str, int]:
    """sample_id -> fold index, StratifiedGroupKFold by patient with a fixed seed."""
    n_patients = manifest.samples["patient"].nunique()
    if n_patients < n_folds:
        raise ValueError(f"{n_patients} patients cannot fill {n_folds} folds: every fold needs its own patients; "
                         f"lower --cv_folds to at most {n_patients}")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.full(len(manifest), -1, dtype=int)
    with warnings.catch_warnings():
        # "least populated class has only N members": check_class_patients says it per class, in patients
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(manifest)), manifest.labels, manifest.patients))
    for k, (_, val_idx) in enumerate(splits):
        fold_of[val_idx] = k
    assignment = dict(zip(manifest.samples["sample_id"].tolist(), fold_of.tolist()))
    check_folds(manifest, assignment, n_folds)
    return assignment


def check_folds(manifest: Manifest, assignment: dict[str, int], n_folds: int | None = None) -> None:
    """Abort if a patient sits in two folds or a sample has no fold: a leak makes every number wrong.

    With `n_folds`, fold numbers outside 0..n_folds-1 and empty folds are errors too.
    """
    folds = manifest.samples["sample_id"].map(assignment)
    if folds.isna().any():
        missing = manifest.samples.loc[folds.isna(), "sample_id"]
        raise RuntimeError(f"sample {missing.iloc[0]!r} has no fold in the fold assignment "
                           f"({len(missing)} sample(s) without a fold)")
    if n_folds is not None:
        bad = sorted(set(int(f) for f in folds) - set(range(n_folds)))
        if bad:
            raise RuntimeError(f"fold assignment uses fold {bad[0]}, outside 0..{n_folds - 1}")
        empty = sorted(set(range(n_folds)) - set(int(f) for f in folds))
        if empty:
            raise RuntimeError(f"fold {empty[0]} of {n_folds} has no samples")
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


def class_patient_counts(manifest: Manifest) -> dict[str, int]:
    """Class -> number of patients with at least one sample of that class."""
    s = manifest.samples
    return {c: int(s.loc[s["label"] == i, "patient"].nunique()) for i, c in enumerate(CLASSES)}


def fold_class_counts(manifest: Manifest, assignment: dict[str, int], n_folds: int) -> list[dict]:
    """Per fold: {"fold", "train": {class: n}, "val": {class: n}, "train_patients", "val_patients"}."""
    folds = manifest.samples["sample_id"].map(assignment).to_numpy()
    out = []
    for k in range(n_folds):
        parts = {}
        for part, sel in (("train", folds != k), ("val", folds == k)):
            counts = np.bincount(manifest.labels[sel], minlength=len(CLASSES))
            parts[part] = {c: int(n) for c, n in zip(CLASSES, counts)}
            parts[f"{part}_patients"] = int(len(set(manifest.patients[sel])))
        out.append({"fold": k, **parts})
    return out


def check_fold_classes(manifest: Manifest, assignment: dict[str, int], n_folds: int) -> list[str]:
    """Abort (ValueError naming the fold and class) if a fold's training part lacks a class.

    A network and forest trained without a class can never predict it, and the focal-loss alpha
    of that fold is undefined. Returns warnings (not errors) for validation parts that lack a
    class: the fold is still scored, but its per-class F1 for that class is meaningless.
    """
    notes = []
    per_class = class_patient_counts(manifest)
    for row in fold_class_counts(manifest, assignment, n_folds):
        k = row["fold"]
        absent = [c for c in CLASSES if row["train"][c] == 0]
        if absent:
            c = absent[0]
            where = (f"class {c} has {per_class[c]} patient(s) in total, all in validation fold {k}" if per_class[c]
                     else f"the dataset has no samples of class {c} at all")
            raise ValueError(
                f"fold {k}: the training part has no samples of class {c} (training classes "
                f"{', '.join(f'{x} {n}' for x, n in row['train'].items())}; {where}). Nothing could learn {c} in this fold: lower --cv_folds, "
                f"raise --data_percentage or add patients with class {c}."
            )
        missing_val = [c for c in CLASSES if row["val"][c] == 0]
        if missing_val:
            notes.append(
                f"fold {k}: the validation part has no samples of class {', '.join(missing_val)} "
                f"({row['val_patients']} patients); its per-class scores for it are undefined"
            )
    return notes


def check_class_patients(manifest: Manifest, n_folds: int) -> list[str]:
    """Warnings for classes with fewer patients than folds (some validation folds will lack them)."""
    out = []
    for c, n in class_patient_counts(manifest).items():
        if 0 < n < n_folds:
            out.append(f"class {c} has {n} patient(s), fewer than the {n_folds} folds: at least {n_folds - n} "
                       f"validation fold(s) will have no {c} sample")
    return out
