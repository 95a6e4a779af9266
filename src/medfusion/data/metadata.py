"""metadata.csv -> one row per wound visit: keys, parsed label, typed feature columns.

Choices and messages are listed in dfu.py's docstring and docs/data_problems.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES, DEFAULT_LABEL_COLUMN, LEAKY_COLUMNS
from medfusion.data.features import check_label_leaks, type_columns
from medfusion.data.names import N_EXAMPLES
from medfusion.data.tables import read_table

NON_FEATURE_COLUMNS = (
    "ID",
    "Patient#",
    "Appt#",
    "DFU#",
    "Appt Days",
    "Location",
    "Type of Pain",
    "Type of Pain2",
    DEFAULT_LABEL_COLUMN,
) + LEAKY_COLUMNS
KEY_COLUMNS = ("Patient#", "Appt#", "DFU#")
# the digits an image file name gives each key ({patient:3d}{appt:2d}{dfu:1d}): a value outside can match no frame
KEY_RANGES = {"Patient#": (0, 999), "Appt#": (0, 99), "DFU#": (0, 9)}
LABEL_INDEX = {c: i for i, c in enumerate(CLASSES)}


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _int_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    vals = pd.to_numeric(df[col].astype("string").str.strip(), errors="coerce")
    bad = vals.isna() | (vals.fillna(0) % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{str(path)!r}: row {i + 1} (line {i + 2} counting the header) has {col}={df[col].iloc[i]!r}; "
            f"expected an integer ({int(bad.sum())} row(s) affected). Fill in or delete the row."
        )
    out = vals.to_numpy().astype(np.int64)
    lo, hi = KEY_RANGES.get(col, (-np.inf, np.inf))
    outside = (out < lo) | (out > hi)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{str(path)!r}: row {i + 1} (line {i + 2} counting the header) has {col}={df[col].iloc[i]!r}, outside "
            f"{lo}..{hi} ({int(outside.sum())} row(s) affected): image file names carry {col} in "
            f"{len(str(hi))} digit(s) ('{{random}}_P{{patient:3d}}{{appt:2d}}{{dfu:1d}}...'), so such a row can match "
            "no frame. Correct the value or delete the row.")
    return out


def blank(series: pd.Series) -> pd.Series:
    """True where a value is missing or only whitespace."""
    return series.isna() | series.astype("string").str.strip().fillna("").eq("")


def _parse_labels(df: pd.DataFrame, label_column: str, path: Path, log: logging.Logger, report: dict) -> np.ndarray:
    labels, bad, normalised = [], [], []
    for i, v in enumerate(df[label_column].tolist()):
        text = "" if _is_missing(v) else str(v)
        s = text.strip().upper()
        if s not in LABEL_INDEX:
            bad.append((i, text))
            labels.append(-1)
            continue
        if s != text:
            normalised.append((i, text, s))
        labels.append(LABEL_INDEX[s])
    if bad:
        listed = "; ".join(f"row {i + 1} (line {i + 2} counting the header) has {label_column}={t!r}"
                           + (" (empty)" if not t.strip() else "") for i, t in bad[:N_EXAMPLES])
        more = f" and {len(bad) - N_EXAMPLES} more" if len(bad) > N_EXAMPLES else ""
        raise ValueError(
            f"{str(path)!r}: {len(bad)} row(s) have a {label_column} value that is not one of {', '.join(CLASSES)}: "
            f"{listed}{more}. Empty and unknown labels are never guessed: correct these rows or delete them "
            "(lower case and surrounding spaces are accepted)."
        )
    if normalised:
        log.warning("%s: %d %s value(s) normalised (surrounding spaces / lower case), e.g. %s", path.name,
                    len(normalised), label_column,
                    ", ".join(f"row {i + 1} {t!r} -> {s!r}" for i, t, s in normalised[:N_EXAMPLES]))
    report["labels_normalised"] = len(normalised)
    return np.asarray(labels, dtype=np.int64)


def _select_features(df: pd.DataFrame, path: Path, data_cfg: DataConfig, log: logging.Logger, report: dict) -> list:
    label_column = data_cfg.label_column
    # compared ignoring letter case: 'healing phase' is as label-derived as 'Healing Phase'
    excluded_cf = {c.casefold() for c in (*NON_FEATURE_COLUMNS, label_column, "__label")}
    leaky_cf = {c.casefold() for c in (*LEAKY_COLUMNS, label_column)}
    columns = [c for c in df.columns if c != "__label"]
    excluded = {c for c in columns if c.casefold() in excluded_cf}
    eligible = [c for c in columns if c not in excluded]
    leaky = set(LEAKY_COLUMNS) | {label_column} | {c for c in columns if c.casefold() in leaky_cf}

    def listing(cols):
        return ", ".join(repr(c) for c in cols)

    requested = [str(c).strip() for c in (getattr(data_cfg, "feature_columns", ()) or ())]
    for c in requested:
        if c in leaky or c.casefold() in leaky_cf:
            raise ValueError(
                f"data.feature_columns requests {c!r}, which is {'the label' if c == label_column else 'derived from the label'}"
                f" and would leak it into the features; remove it (never usable: {listing(sorted(leaky))})"
            )
        if c not in columns:
            raise ValueError(
                f"data.feature_columns requests {c!r}, which is not a column of {str(path)!r}; "
                f"available feature columns: {listing(eligible)}"
            )
    for c in getattr(data_cfg, "exclude_columns", ()) or ():
        if str(c).strip() not in columns:
            raise ValueError(
                f"data.exclude_columns names {str(c).strip()!r}, which is not a column of {str(path)!r}; "
                f"available feature columns: {listing(eligible)}"
            )
    if requested:
        features = list(dict.fromkeys(requested))
        extra = [c for c in features if c in excluded]
        if extra:
            log.warning("%s: data.feature_columns includes identifier/free-text column(s) %s that are not "
                        "features by default", path.name, extra)
    else:
        features = eligible
    exclude = {str(c).strip() for c in (getattr(data_cfg, "exclude_columns", ()) or ())}
    features = [c for c in features if c not in exclude]
    empty = [c for c in features if blank(df[c]).all()]
    if empty:
        (log.warning if requested else log.info)(
            "%s: %d entirely empty column(s) dropped from the features: %s", path.name, len(empty), empty)
    features = [c for c in features if c not in empty]
    report["empty_columns_dropped"] = empty
    report["feature_columns"] = {"n": len(features), "requested": requested, "excluded": sorted(exclude)}
    if not features:
        log.warning("%s: no metadata feature columns remain (check data.feature_columns / data.exclude_columns)",
                    path.name)
    return features


def _drop_duplicate_visits(df: pd.DataFrame, path: Path, log: logging.Logger, report: dict) -> pd.DataFrame:
    """Keep the first row of each visit key; count the rest, and those whose label differs from the kept row."""
    dup = df.duplicated(list(KEY_COLUMNS), keep="first")
    n_dup = int(dup.sum())
    dup_keys = [tuple(int(x) for x in k) for k in df.loc[dup, list(KEY_COLUMNS)].to_numpy()[:N_EXAMPLES]]
    conflicts, conflict_rows = 0, []
    if n_dup:
        first_label = df.loc[~dup].set_index(list(KEY_COLUMNS))["__label"]
        for i, key, lab in zip(np.flatnonzero(dup.to_numpy()), df.loc[dup, list(KEY_COLUMNS)].itertuples(index=False),
                               df.loc[dup, "__label"]):
            kept = int(first_label.loc[tuple(key)])
            if kept != lab:
                conflicts += 1
                if len(conflict_rows) < N_EXAMPLES:
                    conflict_rows.append(f"row {i + 1} {tuple(int(x) for x in key)}: {CLASSES[int(lab)]} dropped, "
                                         f"{CLASSES[kept]} kept")
        log.warning(
            "%s: %d duplicated visit key(s) (Patient#, Appt#, DFU#) dropped, first row kept "
            "(%d with a different label than the kept row%s); e.g. %s",
            path.name, n_dup, conflicts, (": " + "; ".join(conflict_rows)) if conflict_rows else "", dup_keys,
        )
        df = df.loc[~dup].reset_index(drop=True)
    report["duplicate_visits"] = n_dup
    report["duplicate_visit_keys"] = [list(k) for k in dup_keys]
    report["duplicate_visits_conflicting_labels"] = conflicts
    report["duplicate_visits_conflict_examples"] = conflict_rows
    return df


def read_metadata(path: Path, data_cfg: DataConfig, log: logging.Logger, report: dict):
    label_column = data_cfg.label_column
    required = list(KEY_COLUMNS) + ([label_column] if data_cfg.labels_required else [])
    table = read_table(path, "metadata", required, log)
    df = table.frame
    unlabelled = label_column not in df.columns  # only possible with labels_required false (--mode predict)
    report["unlabelled"] = unlabelled
    if unlabelled:
        log.info("%s has no %r column: predicting without labels (no metrics)", path.name, label_column)
    report["metadata_separator"] = table.separator
    report["metadata_short_rows"] = table.short_rows
    if not len(df):
        raise ValueError(f"metadata file {str(path)!r} has a header but no rows; it needs one row per wound visit")
    for c in KEY_COLUMNS:
        df[c] = _int_column(df, c, path)
    df["__label"] = -1 if unlabelled else _parse_labels(df, label_column, path, log, report)

    df = _drop_duplicate_visits(df, path, log, report)
    features = _select_features(df, path, data_cfg, log, report)
    no_value = type_columns(df, features, path, table.separator, log, report)
    if no_value:
        features = [c for c in features if c not in no_value]
        report["empty_columns_dropped"] = report["empty_columns_dropped"] + no_value
    if not unlabelled:
        check_label_leaks(df, features, df["__label"].to_numpy(), label_column, path)
    return df, features
