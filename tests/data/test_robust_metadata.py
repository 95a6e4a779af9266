"""Bad metadata input: every case names the file, row or value (or logs a counted skip)."""

import logging

import pytest

from medfusion.config import ConfigError, DataConfig, load_config
from medfusion.data.dfu import load_dfu
from tests.data.conftest import B1, META_COLUMNS, build_layout, meta_row

DEPTH = {"1_P003001ADMW.png": [(1, B1)], "2_P003011ADMW.png": [(1, B1)], "3_P004001ADMW.png": [(1, B1)]}
THERMAL = {"11_P003001ATMW.png": [(1, B1)], "12_P003011ATMW.png": [(1, B1)], "13_P004001ATMW.png": [(1, B1)]}


def _layout(tmp_path, rows=None):
    rows = rows or [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 4, 0, 1, "R")]
    return build_layout(tmp_path / "dfu", rows, DEPTH, THERMAL)


def _rewrite_meta(root, edit):
    p = root / "metadata.csv"
    p.write_text(edit(p.read_text(encoding="utf-8-sig")), encoding="utf-8")


def test_missing_metadata_file_names_it(tmp_path):
    root = _layout(tmp_path)
    (root / "metadata.csv").unlink()
    with pytest.raises(FileNotFoundError) as exc:
        load_dfu(root, DataConfig())
    assert "metadata.csv" in str(exc.value) and "data.data_dir" in str(exc.value)


@pytest.mark.parametrize("column", ["Healing Phase Abs", "Patient#", "DFU#"])
def test_missing_required_column_names_it(tmp_path, column):
    root = _layout(tmp_path)
    _rewrite_meta(root, lambda t: t.replace(column, "Something Else", 1))
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "metadata.csv" in msg and repr(column) in msg and "columns found" in msg


def test_non_integer_patient_names_row_and_value(tmp_path):
    root = _layout(tmp_path)
    _rewrite_meta(root, lambda t: t.replace("\n2,3,1,1,", "\n2,three,1,1,"))
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "row 2" in msg and "Patient#='three'" in msg and "integer" in msg


@pytest.mark.parametrize("bad,shown", [("", "''"), ("X", "'X'"), ("Proliferative", "'Proliferative'")])
def test_empty_or_unknown_labels_are_errors_listing_the_rows(tmp_path, bad, shown):
    rows = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, bad), meta_row(3, 4, 0, 1, bad)]
    root = _layout(tmp_path, rows)
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "metadata.csv" in msg and "2 row(s)" in msg and "Healing Phase Abs" in msg
    assert "row 2 (line 3" in msg and "row 3 (line 4" in msg and shown in msg
    assert "correct these rows or delete them" in msg


def test_lowercase_and_padded_labels_are_normalised_and_counted(tmp_path, caplog):
    rows = [meta_row(1, 3, 0, 1, "i"), meta_row(2, 3, 1, 1, " P "), meta_row(3, 4, 0, 1, "R")]
    root = _layout(tmp_path, rows)
    with caplog.at_level(logging.INFO):
        man = load_dfu(root, DataConfig())
    assert man.report["labels_normalised"] == 2
    assert "2 Healing Phase Abs value(s) normalised" in caplog.text and "' P ' -> 'P'" in caplog.text
    assert sorted(man.samples.label.tolist()) == [0, 1, 2]


def test_duplicated_visits_count_label_conflicts(tmp_path, caplog):
    rows = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 4, 0, 1, "R"),
            meta_row(4, 3, 0, 1, "R"), meta_row(5, 3, 1, 1, "P")]
    root = _layout(tmp_path, rows)
    with caplog.at_level(logging.INFO):
        man = load_dfu(root, DataConfig())
    assert man.report["duplicate_visits"] == 2 and man.report["duplicate_visits_conflicting_labels"] == 1
    assert "2 duplicated visit key(s)" in caplog.text and "1 with a different label" in caplog.text
    assert man.samples.set_index("visit").loc["P003001", "label"] == 0  # first row kept


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16"])
def test_non_utf8_metadata_names_file_line_and_fix(tmp_path, encoding):
    root = _layout(tmp_path)
    p = root / "metadata.csv"
    text = p.read_text(encoding="utf-8-sig").replace("hallux", "hallux \u00e9t\u00e9")  # é in a legacy encoding
    p.write_bytes(text.encode(encoding))
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "metadata.csv" in msg and "not UTF-8" in msg and "Re-save it as UTF-8" in msg
    if encoding == "cp1252":
        assert "line 2" in msg and "b'\\xe9" in msg


def test_entirely_empty_feature_column_is_dropped_with_a_log_line(tmp_path, caplog):
    root = _layout(tmp_path)
    with caplog.at_level(logging.INFO):
        man = load_dfu(root, DataConfig())
    assert "Empty Col" not in man.feature_columns and man.report["empty_columns_dropped"] == ["Empty Col"]
    assert "1 entirely empty column(s) dropped from the features: ['Empty Col']" in caplog.text


def test_missing_values_are_reported_per_column(tmp_path):
    rows = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 4, 0, 1, "R", age="")]
    man = load_dfu(_layout(tmp_path, rows), DataConfig())
    assert man.report["missing_values"] == {"n_rows": 3, "columns": {"Age": 1}}


# ----------------------------------------------------------------------------- feature selection


def test_feature_columns_select_and_exclude(tmp_path):
    root = _layout(tmp_path)
    man = load_dfu(root, DataConfig(feature_columns=("Sex (F:0, M:1)",)))
    assert man.feature_columns == ["Sex (F:0, M:1)"] and "Age" not in man.samples.columns
    man = load_dfu(root, DataConfig(exclude_columns=("Age",)))
    assert man.feature_columns == ["Sex (F:0, M:1)"]


@pytest.mark.parametrize("column", ["Healing Phase", "Phase Confidence (%)", "Healing Phase Abs"])
def test_label_leaking_feature_is_refused_by_loader_and_config(tmp_path, column):
    root = _layout(tmp_path)
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig(feature_columns=("Age", column)))
    assert repr(column) in str(exc.value) and "leak" in str(exc.value)
    with pytest.raises(ConfigError) as cexc:
        load_config(None, {"data.feature_columns": ["Age", column]})
    assert "data.feature_columns" in str(cexc.value) and repr(column) in str(cexc.value)


def test_custom_label_column_is_refused_as_a_feature():
    with pytest.raises(ConfigError, match="'Phase'.*is the label"):
        load_config(None, {"data.label_column": "Phase", "data.feature_columns": ["Phase"]})


@pytest.mark.parametrize("key", ["feature_columns", "exclude_columns"])
def test_unknown_requested_column_lists_the_available_ones(tmp_path, key):
    root = _layout(tmp_path)
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig(**{key: ("Weight (Kg)",)}))
    msg = str(exc.value)
    assert f"data.{key}" in msg and "'Weight (Kg)'" in msg and "metadata.csv" in msg
    assert "available feature columns: 'Age', 'Empty Col', 'Sex (F:0, M:1)'" in msg


def test_feature_columns_from_a_comma_string_keep_inner_spaces():
    cfg = load_config(None, {"data.feature_columns": "Age, Weight (Kg)"})
    assert cfg.data.feature_columns == ("Age", "Weight (Kg)")


def test_meta_columns_fixture_has_the_leaky_columns():
    # the fixtures above rely on the conftest layout carrying both leaky columns
    assert "Healing Phase" in META_COLUMNS and "Phase Confidence (%)" in META_COLUMNS
