"""Metadata feature columns: which are numbers, which are text, and which leak the label.

The forest treats a numeric column as a number and any other column as categories. A column of
numbers with a placeholder such as `-` or `?` would silently become text (every distinct number
a category), and a column that is a copy or recoding of the label, under any name, hands the
forest the answer. Both are decided here, on cells read as text (tables.read_table).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES

# read as missing in a numeric column (compared after stripping spaces, ignoring letter case)
PLACEHOLDERS = ("-", "--", "---", "?", "??", ".", "na", "n/a", "n.a.", "nan", "null", "none", "#n/a", "#na",
                "<na>", "-nan", "missing", "unknown")
# what pandas reads as missing by default; text columns keep that behaviour
PANDAS_MISSING = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                            "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})
N_SHOWN = 5
_DECIMAL_COMMA = re.compile(r"^[+-]?\d+,\d+$")
_LEADING_NUMBER = re.compile(r"^[+-]?\d")


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _classify(values: list[str], decimal_comma: bool) -> tuple[list, dict, list]:
    """Per value: float, None (placeholder or empty) or the text itself; placeholder counts; (i, bad) pairs."""
    out, placeholders, others = [], Counter(), []
    for i, raw in enumerate(values):
        v = raw.strip()
        if not v:
            out.append(None)
            continue
        if v.casefold() in PLACEHOLDERS:
            placeholders[v] += 1
            out.append(None)
            continue
        num = _number(v)
        if num is None and decimal_comma and _DECIMAL_COMMA.match(v):
            num = float(v.replace(",", "."))
        if num is None:
            others.append((i, raw))
            out.append(raw)
        else:
            out.append(num)
    return out, placeholders, others


def _refuse_stray_text(col, n_num: int, others: list, path: Path) -> None:
    shown = ", ".join(f"row {i + 1} {v!r}" for i, v in others[:N_SHOWN])
    comma = any(_DECIMAL_COMMA.match(v.strip()) for _, v in others)
    raise ValueError(
        f"{str(path)!r}: column {col!r} holds numbers in {n_num} rows but {len(others)} value(s) that are "
        f"not numbers: {shown}{' ...' if len(others) > N_SHOWN else ''}."
        + (" A decimal comma (or a thousands separator, '1,200') in a comma-separated file: write plain numbers "
           "with a decimal point." if comma else "")
        + " Correct them, leave the cells empty, or write one of the placeholders read as missing ("
        + ", ".join(PLACEHOLDERS[:6]) + ", ...); or drop the column with data.exclude_columns."
    )


def _as_text(df: pd.DataFrame, col, values: list, parsed: list, path: Path, log: logging.Logger, mixed: dict) -> None:
    """Make `col` a text (categorical) column, warning when some of its values are numbers or start with one."""
    stripped = [v.strip() for v in values]
    df[col] = pd.Series([np.nan if v in PANDAS_MISSING else raw for v, raw in zip(stripped, values)],
                        index=df.index, dtype=object)
    nums = [(i, values[i]) for i, v in enumerate(parsed) if isinstance(v, float)]
    filled = sum(1 for v in stripped if v and v not in PANDAS_MISSING)
    if nums:  # mostly text, yet some numbers: never switched to text silently
        mixed[col] = {"numbers": len(nums), "filled": filled}
        log.warning("%s: column %r is read as text (categories): %d of its %d filled values are not numbers, %d "
                    "are (e.g. %s); every distinct number becomes its own category. If it is a measurement, correct "
                    "the text values; else list it in data.exclude_columns", path.name, col, filled - len(nums),
                    filled, len(nums), ", ".join(f"row {i + 1} {v!r}" for i, v in nums[:N_SHOWN]))
        return
    lead = [v for v in stripped if v and v not in PANDAS_MISSING and _LEADING_NUMBER.match(v)]
    if filled and len(lead) >= 0.9 * filled and len(set(lead)) > 5:
        log.warning("%s: column %r is read as text (categories), yet %d of its %d values start with a number "
                    "(e.g. %r): if it is a measurement, remove the units so it is read as a number",
                    path.name, col, len(lead), filled, lead[0])


def type_columns(df: pd.DataFrame, columns: list, path: Path, sep: str, log: logging.Logger, report: dict) -> list:
    """Convert each feature column in place to float (numbers) or text (NaN where missing); see PLACEHOLDERS.

    A column whose values are mostly numbers but holds other values is refused, naming rows and values; one
    mostly of text that holds numbers becomes text with a warning. Returns the columns that hold nothing but
    placeholders and empty cells (no value at all: the caller drops them).
    """
    report_ph, numeric, text, mixed, no_value = {}, [], [], {}, []
    for col in columns:
        values = df[col].astype(str).tolist()
        parsed, placeholders, others = _classify(values, decimal_comma=sep != ",")
        n_num = sum(isinstance(v, float) for v in parsed)
        if n_num and others and n_num >= len(others):
            _refuse_stray_text(col, n_num, others, path)
        if placeholders and not others:
            report_ph[col] = dict(placeholders)
            log.warning("%s: column %r: %d placeholder value(s) read as missing: %s", path.name, col,
                        sum(placeholders.values()), ", ".join(f"{k!r} {n}" for k, n in placeholders.items()))
        if n_num and not others:
            df[col] = pd.Series([np.nan if v is None else v for v in parsed], index=df.index, dtype=float)
            numeric.append(col)
        elif not n_num and not others:  # only placeholders and empty cells
            no_value.append(col)
        else:
            _as_text(df, col, values, parsed, path, log, mixed)
            text.append(col)
    if no_value:
        log.warning("%s: %d column(s) hold only placeholders and empty cells, dropped from the features: %s",
                    path.name, len(no_value), no_value)
    report["placeholders_read_as_missing"] = report_ph
    report["column_types"] = {"numeric": len(numeric), "text": text, "text_with_numbers": mixed}
    if text:
        log.info("%s: %d text (categorical) feature column(s): %s", path.name, len(text), text)
    return no_value


def _norm(v) -> object:
    return v if isinstance(v, float) else str(v).strip().casefold()


def leak_kind(values: pd.Series, labels: np.ndarray) -> str | None:
    """'copy', 'recoding' or 'refinement' when a column's filled values give away the label, else None.

    copy: the label letters themselves; recoding: one value per class and one class per value;
    refinement: each value belongs to one class only (e.g. 'P-', 'P+'), every value seen at least twice.
    At least two classes and two rows per distinct value are required as evidence.
    """
    filled = values.notna().to_numpy() & ~values.astype(str).str.strip().eq("").to_numpy()
    if not filled.any():
        return None
    v = [_norm(x) for x in values[filled].tolist()]
    y = np.asarray(labels)[filled]
    pairs = pd.DataFrame({"v": v, "y": y})
    n_values, n_classes = pairs["v"].nunique(), pairs["y"].nunique()
    if n_classes < 2 or len(pairs) < 2 * n_values:
        return None
    if not (pairs.groupby("v")["y"].nunique() == 1).all():
        return None
    if all(isinstance(x, str) for x in v) and all(x == CLASSES[c].casefold() for x, c in zip(v, y)):
        return "copy"
    if (pairs.groupby("y")["v"].nunique() == 1).all():
        return "recoding"
    if pairs["v"].value_counts().min() >= 2:
        return "refinement"
    return None


_LEAK_TEXT = {"copy": "holds the label itself", "recoding": "is a one-to-one recoding of the label",
              "refinement": "determines the label (each of its values occurs with one class only)"}


def check_label_leaks(df: pd.DataFrame, columns: list, labels: np.ndarray, label_column: str, path: Path) -> None:
    """Refuse every feature column whose content gives away the label, whatever its name."""
    leaks = [(c, k) for c in columns if (k := leak_kind(df[c], labels)) is not None]
    if not leaks:
        return
    parts = []
    for col, kind in leaks[:N_SHOWN]:
        filled = df[col].notna() & df[col].astype(str).str.strip().ne("")
        pairs = pd.DataFrame({"v": df.loc[filled, col].tolist(), "y": np.asarray(labels)[filled.to_numpy()]})
        mapping = "; ".join(f"{CLASSES[y]} <- {sorted(map(str, g['v'].unique()))[:4]}" for y, g in pairs.groupby("y"))
        parts.append(f"{col!r} {_LEAK_TEXT[kind]} ({mapping})")
    raise ValueError(
        f"{str(path)!r}: {len(leaks)} feature column(s) leak the label {label_column!r}: " + "; ".join(parts)
        + ". The forest would read the answer. Delete the column(s) or list them in data.exclude_columns."
    )
