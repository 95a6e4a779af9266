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


def class_distribution(labels: np.ndarray) -> str:
    """'I 12 (30%), P 22 (55%), R 6 (15%)' for log lines."""
    counts = np.bincount(labels, minlength=len(CLASSES))
    return ", ".join(f"{c} {n} ({100.0 * n / max(len(labels), 1):.0f}%)" for c, n in zip(CLASSES, counts))


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


def selection_split(manifest: Manifest, train_idx: np.ndarray, fraction: float, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Split an outer fold's training samples into (fitting, selection) positional indices.

    Grouped by patient and stratified, so no selection patient is ever fitted on; the
    selection part makes every choice (best epoch, Stage 2 kept, fusion weight, thresholds)
    and the outer validation fold is only scored. Aborts if a patient lands on both sides.
    """
    train_idx = np.asarray(train_idx)
    patients = manifest.patients[train_idx]
    n_patients = len(set(patients))
    n_splits = min(max(2, int(round(1.0 / fraction))), n_patients)
    if n_patients < 2:
        raise ValueError(f"an inner selection split needs at least 2 training patients, the fold has {n_patients}; "
                         "lower --cv_folds or use --set search.selection=outer")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        fit_pos, sel_pos = next(splitter.split(np.zeros(len(train_idx)), manifest.labels[train_idx], patients))
    fit, sel = np.sort(train_idx[fit_pos]), np.sort(train_idx[sel_pos])
    shared = set(manifest.patients[fit]) & set(manifest.patients[sel])
    if shared:
        raise RuntimeError(f"selection split put patient {sorted(shared)[0]} in fitting and selection")
    return fit, sel


def read_fold_file(path, manifest: Manifest, n_folds: int) -> dict[str, int]:
    """A user's fold assignment (--folds): JSON mapping sample_id -> fold or patient -> fold.

    Validated like a computed one: every sample covered, no patient in two folds, exactly
    `n_folds` non-empty folds. Errors name the file and what to fix.
    """
    import json
    from pathlib import Path

    path = Path(path).expanduser()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--folds file {str(path)!r} does not exist") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"--folds file {str(path)!r} is not valid JSON ({exc}); expected a mapping "
                         "sample_id -> fold (as in a run's folds.json) or patient -> fold") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"--folds file {str(path)!r} must hold a non-empty JSON mapping sample_id -> fold "
                         "or patient -> fold")
    bad = [(k, v) for k, v in raw.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        raise ValueError(f"--folds file {str(path)!r}: {bad[0][0]!r} has fold {bad[0][1]!r}; folds are integers >= 0")
    ids = manifest.samples["sample_id"].astype(str)
    if set(raw) & set(ids):
        assignment = {str(k): int(v) for k, v in raw.items()}
    else:  # patient -> fold
        by_patient = {str(k).lstrip("P").lstrip("0") or "0": int(v) for k, v in raw.items()}
        keys = manifest.samples["patient"].astype(int).astype(str)
        assignment = {sid: by_patient[p] for sid, p in zip(ids, keys) if p in by_patient}
    missing = [s for s in ids if s not in assignment]
    if missing:
        raise ValueError(f"--folds file {str(path)!r} assigns no fold to {len(missing)} sample(s) of the dataset, "
                         f"e.g. {missing[0]!r} (patient {manifest.samples.loc[ids == missing[0], 'patient'].iloc[0]}); "
                         "every sample (or patient) needs a fold")
    assignment = {s: assignment[s] for s in ids}
    used = sorted(set(assignment.values()))
    if used != list(range(n_folds)):
        raise ValueError(f"--folds file {str(path)!r} uses folds {used}, but --cv_folds is {n_folds} "
                         f"(expected exactly 0..{n_folds - 1}); pass --cv_folds {len(used)} or fix the file")
    try:
        check_folds(manifest, assignment, n_folds)
    except RuntimeError as exc:
        raise ValueError(f"--folds file {str(path)!r}: {exc}; a patient's samples must share one fold") from None
    return assignment


def hold_out_patients(manifest: Manifest, fraction: float, seed: int) -> list:
    """Test patients set aside before any fold: `fraction` of the patients, stratified by patient label."""
    plab = patient_labels(manifest)
    n_test = int(round(len(plab) * fraction))
    if n_test < 1 or len(plab) - n_test < 2:
        raise ValueError(f"--test_fraction {fraction:g} of {len(plab)} patients leaves {n_test} test and "
                         f"{len(plab) - n_test} cross-validation patients; choose a fraction that keeps at least one "
                         "test patient and enough patients for the folds")
    counts = plab.value_counts()
    stratify = plab.to_numpy() if counts.min() >= 2 and n_test >= len(counts) else None
    _, test = train_test_split(plab.index.to_numpy(), test_size=n_test, stratify=stratify, random_state=seed)
    return sorted(int(p) for p in test)


def read_patient_file(path, manifest: Manifest) -> list:
    """--test_patients FILE: one patient number per line (or a JSON list); every one must be in the dataset."""
    import json
    from pathlib import Path

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--test_patients file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    try:
        raw = json.loads(text) if text.lstrip().startswith("[") else [t for t in text.replace(",", " ").split()]
        patients = sorted({int(str(p).strip().lstrip("Pp") or 0) for p in raw})
    except ValueError:
        raise ValueError(f"--test_patients file {str(path)!r} must list patient numbers (one per line, e.g. 12 or "
                         "P012, or a JSON list)") from None
    known = set(int(p) for p in manifest.patients)
    unknown = [p for p in patients if p not in known]
    if unknown or not patients:
        raise ValueError(f"--test_patients file {str(path)!r}: " + (f"patient {unknown[0]} ({len(unknown)} in all) is "
                         "not in the dataset" if unknown else "lists no patient"))
    return patients
