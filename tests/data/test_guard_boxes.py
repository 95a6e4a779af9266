"""Box-CSV values that were lost or accepted silently (issue 13 [guard]): a coordinate that is not a number, a row
whose Patient# contradicts its file name, a Bounding Box Number outside 1..3. Each is named with file, row and value."""

import csv
import logging

import pytest

from medfusion.config import DataConfig, load_config
from medfusion.data.check import check_dataset
from medfusion.data.dfu import load_dfu
from tests.data.conftest import B1, build_layout, meta_row

ROWS = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 4, 0, 1, "R")]
DEPTH = {"1_P003001ADMW.png": [(1, B1)], "2_P003011ADMW.png": [(1, B1)], "3_P004001ADMW.png": [(1, B1)]}
THERMAL = {"11_P003001ATMW.png": [(1, B1)], "12_P003011ATMW.png": [(1, B1)], "13_P004001ATMW.png": [(1, B1)]}
LOG = logging.getLogger("tests.guard_boxes")


def _layout(tmp_path):
    return build_layout(tmp_path / "dfu", ROWS, DEPTH, THERMAL)


def _edit(root, name: str, row: int, column: str, value: str) -> None:
    """Set `column` of data row `row` (from 1) of the box CSV `name`."""
    path = root / name
    with open(path, newline="") as f:
        table = list(csv.reader(f))
    table[row][table[0].index(column)] = value
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(table)


@pytest.mark.parametrize("value", ["3O", "30px", "inf", "1_000"])
def test_a_coordinate_that_is_not_a_number_is_an_error_naming_file_row_column_and_value(tmp_path, value):
    root = _layout(tmp_path)
    _edit(root, "bounding_boxes_depth.csv", 2, "Xmax", value)
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "bounding_boxes_depth.csv" in msg and f"row 2 Xmax {value!r}" in msg, msg
    assert "1 coordinate value(s) are not numbers" in msg and "empty the cell" in msg, msg


def test_every_bad_coordinate_is_listed_and_a_quoted_decimal_comma_is_explained(tmp_path):
    root = _layout(tmp_path)
    _edit(root, "bounding_boxes_thermal.csv", 1, "Ymin", "10,5")
    _edit(root, "bounding_boxes_thermal.csv", 3, "Xmin", "ten")
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "bounding_boxes_thermal.csv" in msg and "2 coordinate value(s) are not numbers" in msg
    assert "row 1 Ymin '10,5'" in msg and "row 3 Xmin 'ten'" in msg and "decimal point" in msg, msg


@pytest.mark.parametrize("value", ["", "N/A", "-"])
def test_an_empty_or_placeholder_coordinate_is_still_a_named_missing_coordinate_skip(tmp_path, value):
    root = _layout(tmp_path)
    _edit(root, "bounding_boxes_depth.csv", 2, "Ymax", value)
    man = load_dfu(root, DataConfig())
    b = man.report["depth_boxes"]
    assert b["missing_coordinate"] == 1 and b["examples"]["missing_coordinate"] == [
        "2_P003011ADMW.png#1 (row 2: [10, 10, 30, None])"]
    assert len(man) == 2


def test_a_box_row_whose_patient_contradicts_its_file_name_is_skipped_and_named(tmp_path, caplog):
    root = _layout(tmp_path)
    _edit(root, "bounding_boxes_depth.csv", 3, "Patient#", "12")  # the file name says patient 4
    with caplog.at_level(logging.WARNING):
        man = load_dfu(root, DataConfig())
    b = man.report["depth_boxes"]
    example = "3_P004001ADMW.png#1 (row 3: Patient# '12', the file name says patient 4)"
    assert b["patient_mismatch"] == 1 and b["examples"]["patient_mismatch"] == [example]
    assert "bounding_boxes_depth.csv: 1 row(s) dropped (patient_mismatch)" in caplog.text and example in caplog.text
    assert "correct the Patient# or the Filename" in caplog.text
    assert sorted(man.samples["patient"]) == [3, 3]  # patient 4's only box row is gone, and with it its sample
    assert man.report["skipped"]["no_valid_box"]["examples"] == ["3_P004001ADMW.png"]
    cfg = load_config(None, {"data.data_dir": str(root), "data.demo": False, "search.cv_folds": 2})
    warnings = check_dataset(cfg, LOG).warnings
    assert any("1 depth box row(s) have a Patient# that contradicts their file name" in w and example in w
               for w in warnings), warnings


def test_zero_padded_and_plain_patient_numbers_agree_with_the_file_name(tmp_path):
    man = load_dfu(_layout(tmp_path), DataConfig())  # depth rows write '3', thermal rows '003'
    assert man.report["depth_boxes"]["patient_mismatch"] == 0 and man.report["thermal_boxes"]["patient_mismatch"] == 0
    assert len(man) == 3


@pytest.mark.parametrize("value", ["0", "4", "-1"])
def test_a_box_number_outside_1_to_3_is_a_named_row_skip(tmp_path, caplog, value):
    root = _layout(tmp_path)
    _edit(root, "bounding_boxes_depth.csv", 1, "Bounding Box Number", value)
    with caplog.at_level(logging.WARNING):
        man = load_dfu(root, DataConfig())
    b = man.report["depth_boxes"]
    assert b["bad_box_number"] == 1 and b["invalid_box"] == 1
    assert b["examples"]["bad_box_number"] == [f"1_P003001ADMW.png#{value} (row 1: [10, 10, 30, 30])"]
    assert "whole number 1..3" in caplog.text and f"1_P003001ADMW.png#{value} (row 1" in caplog.text
    assert len(man) == 2
