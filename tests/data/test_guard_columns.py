"""Metadata columns that would silently change a study: duplicated names, label copies under any name,
numbers with placeholders or stray text (issue 13, items 1-2)."""

import csv
import logging

import numpy as np
import pytest

from medfusion.config import DataConfig
from medfusion.data.dfu import load_dfu
from medfusion.data.features import PLACEHOLDERS, leak_kind
from tests.data.conftest import B1, build_layout

# 12 visits of 12 patients, labels I, P, R four times; one depth and one thermal frame each
N = 12
LABELS = ["I", "P", "R"] * 4
DEPTH = {f"{p}_P{p:03d}001ADMW.png": [(1, B1)] for p in range(1, N + 1)}
THERMAL = {f"{20 + p}_P{p:03d}001ATMW.png": [(1, B1)] for p in range(1, N + 1)}
AGES = [61, 72, 55, 48, 66, 70, 59, 80, 63, 52, 77, 69]


def _layout(tmp_path, header, rows, sep=",", bom=True):
    """The fixture layout with a metadata.csv written from `header` and `rows` as given (no pandas)."""
    root = build_layout(tmp_path / "dfu", [], DEPTH, THERMAL)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(header)
        w.writerows(rows)
    return root


def _base(extra_header=(), extra=lambda i: ()):
    header = ["Patient#", "Appt#", "DFU#", "Healing Phase Abs", "Age", *extra_header]
    rows = [[p, 0, 1, LABELS[p - 1], AGES[p - 1], *extra(p - 1)] for p in range(1, N + 1)]
    return header, rows


def _load(root, caplog=None, **cfg):
    if caplog is None:
        return load_dfu(root, DataConfig(**cfg))
    with caplog.at_level(logging.INFO):
        return load_dfu(root, DataConfig(**cfg))


def test_well_formed_metadata_loads_with_numeric_age(tmp_path):
    man = _load(_layout(tmp_path, *_base()))
    assert man.feature_columns == ["Age"] and len(man) == N
    assert man.samples["Age"].dtype == float and sorted(man.samples["Age"]) == sorted(AGES)


@pytest.mark.parametrize("second", ["Age", " Age ", "\ufeffAge"])
def test_duplicated_column_names_stop_naming_both_positions(tmp_path, second):
    header, rows = _base([second], lambda i: [AGES[i] + 1])
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    msg = str(exc.value)
    assert "metadata.csv" in msg and "duplicated column name" in msg and "'Age' is column 5 and 6" in msg


def test_duplicated_label_column_stops_before_it_can_become_a_feature(tmp_path):
    header, rows = _base(["Healing Phase Abs"], lambda i: [LABELS[i]])
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    assert "'Healing Phase Abs' is column 4 and 6" in str(exc.value)


def test_unnamed_column_with_values_is_refused_naming_its_position(tmp_path):
    header, rows = _base([""], lambda i: [i])  # a row index written by to_csv(index=True), at the end
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    assert "column 6 has no name" in str(exc.value) and "row 1 has '0'; 12 row(s) filled" in str(exc.value)


@pytest.mark.parametrize("name,values,kind", [
    ("Outcome", lambda i: LABELS[i].lower(), "holds the label itself"),
    ("Phase code", lambda i: "IPR".index(LABELS[i]) * 10, "is a one-to-one recoding"),
    ("Stage", lambda i: LABELS[i] + ("+" if i < 6 else "-"), "determines the label"),
])
def test_a_column_giving_away_the_label_is_refused_whatever_its_name(tmp_path, name, values, kind):
    header, rows = _base([name], lambda i: [values(i)])
    root = _layout(tmp_path, header, rows)
    with pytest.raises(ValueError) as exc:
        _load(root)
    msg = str(exc.value)
    assert f"{name!r} {kind}" in msg and "leak the label 'Healing Phase Abs'" in msg and "data.exclude_columns" in msg
    assert _load(root, exclude_columns=(name,)).feature_columns == ["Age"]  # the documented way out


def test_leak_check_ignores_ordinary_columns_and_needs_evidence():
    y = np.array([0, 1, 2] * 4)
    import pandas as pd

    assert leak_kind(pd.Series([float(a) for a in AGES]), y) is None  # every value distinct: no evidence
    assert leak_kind(pd.Series(["M", "F", "M"] * 4), y) is None
    assert leak_kind(pd.Series([1.0, 2.0, 3.0, np.nan, np.nan, np.nan] * 2), y) == "recoding"
    assert leak_kind(pd.Series(["i", "p", "r"] * 4), y) == "copy"
    assert leak_kind(pd.Series([1.0, 2.0, 3.0] + [np.nan] * 9), y) is None  # one row per value: no evidence


def test_label_derived_name_in_another_letter_case_is_not_a_feature(tmp_path):
    header, rows = _base(["healing phase", "phase confidence (%)"], lambda i: [LABELS[i] + "+", 80 + i])
    man = _load(_layout(tmp_path, header, rows))
    assert man.feature_columns == ["Age"]


def test_numeric_placeholders_are_read_as_missing_and_counted(tmp_path, caplog):
    ages = ["61", "-", "55", "?", "66", "N/A", "59", "-", "63", "71", "", "58"]
    header, rows = _base(["Weight (Kg)"], lambda i: [ages[i]])
    man = _load(_layout(tmp_path, header, rows), caplog)
    assert man.samples["Weight (Kg)"].dtype == float
    assert int(man.samples["Weight (Kg)"].isna().sum()) == 5  # 4 placeholders + 1 empty cell
    assert man.report["placeholders_read_as_missing"] == {"Weight (Kg)": {"-": 2, "?": 1, "N/A": 1}}
    assert "column 'Weight (Kg)': 4 placeholder value(s) read as missing: '-' 2, '?' 1, 'N/A' 1" in caplog.text
    assert man.report["missing_values"]["columns"]["Weight (Kg)"] == 5
    assert {"-", "?", "n/a"} <= set(PLACEHOLDERS)


def test_text_in_a_numeric_column_is_refused_with_row_and_value(tmp_path):
    weights = ["61", "72", "sixty", "48", "66", "70 kg", "59", "80", "63", "52", "77", "69"]
    header, rows = _base(["Weight (Kg)"], lambda i: [weights[i]])
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    msg = str(exc.value)
    assert "column 'Weight (Kg)' holds numbers in 10 rows but 2 value(s) that are not numbers" in msg
    assert "row 3 'sixty'" in msg and "row 6 '70 kg'" in msg and "data.exclude_columns" in msg


def test_decimal_comma_in_a_comma_separated_file_is_refused(tmp_path):
    temps = ["36,5", "37.0", "36.1", "35.9", "36.6", "37.2", "36.0", "36.8", "36.3", "36.2", "36.4", "37.1"]
    header, rows = _base(["Temp"], lambda i: [temps[i]])
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    assert "row 1 '36,5'" in str(exc.value) and "decimal comma" in str(exc.value)


def test_semicolon_file_with_decimal_commas_reads_numbers(tmp_path, caplog):
    temps = ["36,5", "37,0", "36,1", "35,9", "36,6", "37,2", "36,0", "36,8", "36,3", "36,2", "36,4", "-"]
    header, rows = _base(["Temp", "Sex (F:0, M:1)"], lambda i: [temps[i], "FM"[i % 2]])
    man = _load(_layout(tmp_path, header, rows, sep=";"), caplog)
    assert "separator detected: semicolon" in caplog.text
    assert man.samples["Temp"].dtype == float
    assert man.samples.sort_values("patient")["Temp"].tolist()[:2] == [36.5, 37.0]
    assert man.samples["Sex (F:0, M:1)"].dtype == object  # a text column stays text
    assert man.report["placeholders_read_as_missing"] == {"Temp": {"-": 1}}


@pytest.mark.parametrize("sep,bom", [(";", True), (";", False), ("\t", True), ("|", False)])
def test_separator_and_bom_variants_load_the_same(tmp_path, sep, bom):
    header, rows = _base()
    man = _load(_layout(tmp_path, header, rows, sep=sep, bom=bom))
    assert man.report["metadata_separator"] == sep and len(man) == N
    assert sorted(man.samples["Age"]) == sorted(AGES)


def test_unknown_separator_names_the_ones_tried(tmp_path):
    header, rows = _base()
    root = _layout(tmp_path, header, rows)
    p = root / "metadata.csv"
    p.write_text(p.read_text(encoding="utf-8-sig").replace(",", "#"), encoding="utf-8")
    with pytest.raises(ValueError) as exc:
        _load(root)
    assert "tried comma, semicolon, tab, vertical bar" in str(exc.value)


def test_row_with_extra_values_is_refused_not_shifted(tmp_path):
    header, rows = _base()
    rows[3] = rows[3] + ["stray"]
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    assert "row 4 (line 5) has 6 fields but the header has 5" in str(exc.value) and "'stray'" in str(exc.value)


def test_header_only_metadata_and_trailing_empty_rows(tmp_path, caplog):
    header, rows = _base()
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path / "a", header, []))
    assert "has a header but no rows" in str(exc.value)
    man = _load(_layout(tmp_path / "b", header, rows + [[""] * 5, [""] * 5]), caplog)
    assert len(man) == N and "2 trailing row(s) with every field empty ignored" in caplog.text


def test_key_column_in_another_case_suggests_the_name(tmp_path):
    header, rows = _base()
    header[0] = "patient#"
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    assert "no column 'Patient#'" in str(exc.value) and "Did you mean 'patient#'?" in str(exc.value)


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_old_mac_line_ends_load_the_same(tmp_path, newline):
    header, rows = _base()
    root = _layout(tmp_path, header, rows)
    p = root / "metadata.csv"
    p.write_bytes(p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", newline.encode()))
    man = _load(root)
    assert len(man) == N and sorted(man.samples["Age"]) == sorted(AGES)
