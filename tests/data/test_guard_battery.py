"""Broken inputs from the held-out battery of issue 13 that used to go through silently or with an unclear
message: a metadata file cut short, rows with fewer fields, keys no file name can carry, text columns holding
numbers, columns of placeholders only, duplicated visits with another label, missing image folders, frames in
a subfolder; and command lines refused before anything is written."""

import pytest

from medfusion import cli
from medfusion.config import load_config
from medfusion.data.check import check_dataset
from tests.harness import ROOT
from tests.data.test_guard_columns import AGES, LABELS, N, _base, _layout, _load


def _check(root):
    return check_dataset(load_config(None, {"data.data_dir": str(root), "search.cv_folds": 2}))


# ----------------------------------------------------------------------------- row shapes


def test_metadata_cut_short_in_its_last_row_is_refused(tmp_path):
    root = _layout(tmp_path, *_base(["Weight (Kg)"], lambda i: [70 + i]))
    p = root / "metadata.csv"
    p.write_bytes(p.read_bytes().rstrip(b"\r\n")[:-6])  # the copy stopped inside the last row: no line end
    with pytest.raises(ValueError) as exc:
        _load(root)
    msg = str(exc.value)
    assert "metadata.csv" in msg and "looks cut short" in msg and f"last row {N} (line {N + 1})" in msg
    assert "of the header's 6 fields and no line end" in msg


def test_a_row_with_fewer_fields_is_read_with_a_warning_naming_it(tmp_path, caplog):
    header, rows = _base(["Weight (Kg)"], lambda i: [70 + i])
    rows[4] = rows[4][:4]  # Age and Weight missing: read as empty, but said
    root = _layout(tmp_path, header, rows)
    man = _load(root, caplog)
    assert len(man) == N and man.report["metadata_short_rows"] == [5]
    assert "1 row(s) have fewer fields than the header's 6" in caplog.text and "row 5 (line 6, 4 fields)" in caplog.text
    check = _check(root)
    assert any("1 row(s) of metadata.csv have fewer fields than its header" in w and "rows 5" in w
               for w in check.warnings), check.warnings


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("col,value,shown", [("Appt#", -1, "'-1', outside 0..99"),
                                             ("Patient#", 1000, "'1000', outside 0..999"),
                                             ("DFU#", 10, "'10', outside 0..9")])
def test_a_key_no_file_name_can_carry_is_refused_with_row_and_value(tmp_path, col, value, shown):
    header, rows = _base()
    rows[2][header.index(col)] = value
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, header, rows))
    msg = str(exc.value)
    assert "metadata.csv" in msg and f"row 3 (line 4 counting the header) has {col}={shown}" in msg
    assert "can match no frame" in msg


# ----------------------------------------------------------------------------- column types


def test_a_text_column_holding_numbers_is_never_silently_text(tmp_path, caplog):
    weights = ["heavy", "light", "70", "heavy", "light", "heavy", "81", "light", "heavy", "light", "heavy", "light"]
    root = _layout(tmp_path, *_base(["Weight (Kg)"], lambda i: [weights[i]]))
    man = _load(root, caplog)
    assert man.samples["Weight (Kg)"].dtype == object
    assert man.report["column_types"]["text_with_numbers"] == {"Weight (Kg)": {"numbers": 2, "filled": 12}}
    assert ("column 'Weight (Kg)' is read as text (categories): 10 of its 12 filled values are not numbers, 2 are "
            "(e.g. row 3 '70', row 7 '81')") in caplog.text
    assert any("column 'Weight (Kg)' of metadata.csv is read as text (categories) although 2 of its 12" in w
               for w in _check(root).warnings)


def test_a_column_of_placeholders_only_is_dropped_and_counted(tmp_path, caplog):
    marks = ["-", "?", "", "N/A"] * 3
    man = _load(_layout(tmp_path, *_base(["Onset (Days)"], lambda i: [marks[i]])), caplog)
    assert man.feature_columns == ["Age"] and "Onset (Days)" in man.report["empty_columns_dropped"]
    assert man.report["placeholders_read_as_missing"] == {"Onset (Days)": {"-": 3, "?": 3, "N/A": 3}}
    assert "1 column(s) hold only placeholders and empty cells, dropped from the features: ['Onset (Days)']" \
        in caplog.text


def test_a_duplicated_visit_with_another_label_is_named_in_the_check(tmp_path, caplog):
    header, rows = _base()
    rows.append([2, 0, 1, "R", 50])  # patient 2's visit again, labelled R; the first row (P) is kept
    root = _layout(tmp_path, header, rows)
    man = _load(root, caplog)
    assert man.report["duplicate_visits_conflict_examples"] == ["row 13 (2, 0, 1): R dropped, P kept"]
    assert "1 with a different label than the kept row: row 13 (2, 0, 1): R dropped, P kept" in caplog.text
    assert any("1 duplicated visit row(s) of metadata.csv carry another label" in w and "row 13 (2, 0, 1)" in w
               for w in _check(root).warnings)
    assert sorted(man.samples["Age"]) == sorted(AGES) and man.labels.tolist().count(2) == LABELS.count("R")


# ----------------------------------------------------------------------------- folders


def test_missing_image_folders_are_all_named_and_a_file_is_called_a_file(tmp_path):
    import shutil

    root = _layout(tmp_path, *_base())
    shutil.rmtree(root / "depth_map")
    shutil.rmtree(root / "thermal_map")
    (root / "thermal_map").write_text("not a folder")
    check = _check(root)
    assert not check.ok and len(check.problems) == 1
    msg = check.problems[0]
    assert f"depth_map ({str(root / 'depth_map')!r} not found)" in msg
    assert f"thermal_map ({str(root / 'thermal_map')!r} is a file, not a folder)" in msg
    assert "the folder holds bounding_boxes_depth.csv" in msg and "metadata.csv" in msg


def test_frames_in_a_subfolder_are_diagnosed(tmp_path):
    root = _layout(tmp_path, *_base())
    sub = root / "thermal_rgb" / "export"
    sub.mkdir()
    for p in list((root / "thermal_rgb").glob("*.png")):
        p.rename(sub / p.name)
    check = _check(root)
    assert not check.ok and "no samples could be built" in check.problems[0]
    assert "thermal_rgb holds no .png frame itself but its subfolder(s) hold 12 (e.g. 'export/" in check.problems[0]


# ----------------------------------------------------------------------------- command lines


@pytest.mark.parametrize("args,fragment", [
    (["--cv_folds", "1"], "'search.cv_folds' = 1 is out of range: must be >= 2"),
    (["--data_percentage", "0"], "'search.data_percentage' = 0.0 is out of range: must be in (0, 100]"),
    (["--data_percentage", "150"], "'search.data_percentage' = 150.0 is out of range"),
    (["--set", "data.nonexistent=3"], "unknown config key 'data.nonexistent'; valid keys under data:"),
    (["--set", "search.cv_folds=abc"], "'search.cv_folds' must be an integer, got 'abc'"),
    (["--set", "search.cv_folds"], "--set expects key=value"),
    (["--modalities", "metadata,depth_rbg"], "'depth_rbg' is out of range: valid modalities:"),
])
def test_bad_command_lines_are_refused_before_anything_is_written(tmp_path, capsys, args, fragment):
    root = _layout(tmp_path, *_base())
    logs = tmp_path / "logs"
    rc = cli.main(["--mode", "check_data", "--config", str(ROOT / "configs" / "default.yaml"), "--data_dir", str(root),
                   "--set", f"runtime.logs_dir={logs}", *args])
    assert rc == 2 and fragment in capsys.readouterr().err
    assert not logs.exists()


def test_a_config_that_is_a_list_is_named(tmp_path, capsys):
    cfg = tmp_path / "list.yaml"
    cfg.write_text("- a\n- b\n")
    assert cli.main(["--mode", "check_data", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "must hold a mapping of sections" in err and "got a list" in err


def test_more_folds_than_patients_names_the_largest_that_works(tmp_path):
    root = _layout(tmp_path, *_base())
    check = check_dataset(load_config(None, {"data.data_dir": str(root), "search.cv_folds": 50}))
    assert not check.ok and "12 patients cannot fill 50 folds" in check.problems[0]
    assert "lower --cv_folds to at most 12" in check.problems[0]


def test_lower_case_and_unknown_labels(tmp_path, caplog):
    header, rows = _base()
    rows[1][3] = "p"
    man = _load(_layout(tmp_path / "a", header, rows), caplog)
    assert man.report["labels_normalised"] == 1 and "row 2 'p' -> 'P'" in caplog.text
    rows[1][3] = "X"
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path / "b", header, rows))
    assert "row 2 (line 3 counting the header) has Healing Phase Abs='X'" in str(exc.value)


# ----------------------------------------------------------------------------- found by the second battery


def test_excel_separator_hint_line_is_read_and_skipped(tmp_path, caplog):
    root = _layout(tmp_path, *_base(), sep=";", bom=False)
    p = root / "metadata.csv"
    p.write_text("sep=;\n" + p.read_text())
    man = _load(root, caplog)
    assert len(man) == N and sorted(man.samples["Age"]) == sorted(AGES)
    assert "first line 'sep=;' (Excel's separator hint) read and skipped" in caplog.text


def test_two_frames_whose_names_differ_only_in_letter_case_are_one_frame(tmp_path, caplog):
    import shutil

    root = _layout(tmp_path, *_base())
    for folder in ("depth_rgb", "depth_map"):
        shutil.copy(root / folder / "1_P001001ADMW.png", root / folder / "1_p001001admw.png")
    man = _load(root, caplog)
    assert len(man) == N and man.samples["sample_id"].is_unique
    e = man.report["skipped"]["case_duplicate"]
    assert e["examples"] == ["1_p001001admw.png (same name as 1_P001001ADMW.png ignoring letter case)"]
    assert "DFU depth frames skipped (case_duplicate): 1" in caplog.text


def test_random_numbers_equal_as_integers_still_give_unique_sample_ids(tmp_path):
    import shutil

    from tests.data.conftest import B1

    root = _layout(tmp_path, *_base())
    for folder in ("depth_rgb", "depth_map"):
        shutil.copy(root / folder / "1_P001001ADMW.png", root / folder / "01_P001001ADMW.png")
    with open(root / "bounding_boxes_depth.csv", "a") as f:
        f.write("01_P001001ADMW.png,1,0,1,A,D,MW,1," + ",".join(map(str, B1)) + "\n")
    man = _load(root)
    ids = sorted(i for i in man.samples["sample_id"] if i.startswith("P001001AMW_1"))
    assert ids == ["P001001AMW_1_1_01", "P001001AMW_1_1_1"] and man.samples["sample_id"].is_unique


def test_thousands_separator_is_named(tmp_path):
    weights = ["1,200"] + [str(60 + i) for i in range(N - 1)]
    with pytest.raises(ValueError) as exc:
        _load(_layout(tmp_path, *_base(["Weight (Kg)"], lambda i: [weights[i]])))
    assert "row 1 '1,200'" in str(exc.value) and "thousands separator" in str(exc.value)


@pytest.mark.parametrize("content,fragment", [
    (b"PK\x03\x04\x14\x00 workbook", "is a zip archive, probably an Excel workbook (.xlsx), not a CSV text file"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1 old", "is an old Excel workbook (.xls)"),
    (b"Patient#,Appt#,DFU#,Healing Phase Abs,Age\n1,0,1,I,6\x00\x001\n", "holds NUL bytes (first at line 2, byte offset 51; 2 in all)"),
])
def test_a_workbook_or_a_file_with_nul_bytes_is_not_read_as_text(tmp_path, content, fragment):
    root = _layout(tmp_path, *_base())
    (root / "metadata.csv").write_bytes(content)
    with pytest.raises(ValueError) as exc:
        _load(root)
    assert "metadata.csv" in str(exc.value) and fragment in str(exc.value)
