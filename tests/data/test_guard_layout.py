"""Frames, box files and joins that used to end in a bare "no samples" or a silent mismatch (issue 13, items 3, 7)."""

import logging
import struct
import zlib

import cv2
import numpy as np
import pytest

from medfusion.config import DataConfig, load_config
from medfusion.data import images
from medfusion.data.check import check_dataset
from medfusion.data.dfu import load_dfu
from medfusion.data.images import UnreadableFrame, probe_frame
from tests.data.conftest import B1, build_layout, meta_row

ROWS = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 4, 0, 1, "R")]
DEPTH = {"1_P003001ADMW.png": [(1, B1)], "2_P003011ADMW.png": [(1, B1)], "3_P004001ADMW.png": [(1, B1)]}
THERMAL = {"11_P003001ATMW.png": [(1, B1)], "12_P003011ATMW.png": [(1, B1)], "13_P004001ATMW.png": [(1, B1)]}


def _layout(tmp_path, rows=ROWS):
    return build_layout(tmp_path / "dfu", rows, DEPTH, THERMAL)


def _declare_size(path, w, h):
    """Rewrite a PNG's IHDR to declare w x h (with a valid CRC); the pixel data stays small."""
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def _load(root, caplog, **cfg):
    with caplog.at_level(logging.INFO):
        return load_dfu(root, DataConfig(**cfg))


# ----------------------------------------------------------------------------- item 3: enormous frames


def test_enormous_declared_frame_is_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    p = tmp_path / "huge.png"
    assert cv2.imwrite(str(p), np.zeros((8, 8, 3), np.uint8))
    _declare_size(p, 60000, 60000)
    monkeypatch.setattr(images.cv2, "imdecode", lambda *a, **k: pytest.fail("probe_frame decoded the frame"))
    with pytest.raises(UnreadableFrame) as exc:
        probe_frame(p, DataConfig().max_frame_pixels)
    assert exc.value.reason == "too_large"
    assert "huge.png" in str(exc.value) and "60000x60000" in str(exc.value) and "data.max_frame_pixels" in str(exc.value)
    assert probe_frame(p) == (60000, 60000)  # without a limit the header is only read
    assert DataConfig().max_frame_pixels >= 1440 * 1080 * 10  # real DFU frames pass the default


def test_oversized_frame_is_a_named_skip_in_the_manifest(tmp_path, caplog):
    root = _layout(tmp_path)
    _declare_size(root / "depth_rgb" / "1_P003001ADMW.png", 20000, 20000)
    man = _load(root, caplog)
    assert len(man) == 2 and "P003001AMW_1" not in set(man.samples.sample_id)
    e = man.report["unreadable_files"]["too_large"]
    assert e["count"] == 1 and e["examples"] == ["depth_rgb/1_P003001ADMW.png"]
    assert man.report["skipped"]["unreadable_frame"]["examples"] == ["1_P003001ADMW.png"]
    assert "image files skipped (too_large): 1" in caplog.text and "20000x20000" in caplog.text


def test_max_frame_pixels_is_a_validated_config_key(tmp_path):
    assert load_config(None, {"data.max_frame_pixels": 3000}).data.max_frame_pixels == 3000
    with pytest.raises(ValueError, match="data.max_frame_pixels"):
        load_config(None, {"data.max_frame_pixels": 0})
    root = _layout(tmp_path)  # 64x48 = 3072 pixels: every frame over a 3000 limit
    check = check_dataset(load_config(None, {"data.data_dir": str(root), "data.max_frame_pixels": 3000}))
    assert not check.ok and "no samples could be built" in check.problems[0] and "'too_large': 12" in check.problems[0]


# ----------------------------------------------------------------------------- item 7: diagnoses


def test_swapped_box_files_are_named_as_swapped(tmp_path):
    root = _layout(tmp_path)
    d, t = root / "bounding_boxes_depth.csv", root / "bounding_boxes_thermal.csv"
    d_text, t_text = d.read_text(), t.read_text()
    d.write_text(t_text)
    t.write_text(d_text)
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "look swapped" in msg and "bounding_boxes_depth.csv" in msg and "bounding_boxes_thermal.csv" in msg
    assert "3 of its 3 rows name camera-T frames" in msg and "11_P003001ATMW.png (row 1)" in msg


def test_a_stray_row_of_the_other_camera_is_counted_not_fatal(tmp_path, caplog):
    root = _layout(tmp_path)
    with open(root / "bounding_boxes_depth.csv", "a") as f:
        f.write("14_P004001ATMW.png,4,0,1,A,T,MW,1,10,10,30,30\n")
    man = _load(root, caplog)
    assert len(man) == 3 and man.report["depth_boxes"]["wrong_camera"] == 1
    assert "1 row(s) dropped (wrong_camera)" in caplog.text and "14_P004001ATMW.png (row 4)" in caplog.text


def test_names_that_differ_only_in_letter_case_are_matched_and_counted(tmp_path, caplog):
    root = _layout(tmp_path)
    for folder in ("depth_rgb", "depth_map"):  # the frame and its map renamed, the box row unchanged
        (root / folder / "1_P003001ADMW.png").rename(root / folder / "1_p003001admw.PNG")
    (root / "thermal_map" / "12_P003011ATMW.png").rename(root / "thermal_map" / "12_P003011ATMW.PNG")
    man = _load(root, caplog)
    assert len(man) == 3
    cm = man.report["case_insensitive_matches"]
    assert cm["count"] == 2, cm
    assert "2 file name(s) matched only when letter case is ignored" in caplog.text
    paths = set(man.samples["depth_rgb_path"]) | set(man.samples["thermal_map_path"])
    assert str(root / "depth_rgb" / "1_p003001admw.PNG") in paths and str(root / "thermal_map" / "12_P003011ATMW.PNG") in paths
    assert man.report["depth_boxes"]["frames_not_found"] == 0


def test_semicolon_box_file_is_read(tmp_path, caplog):
    root = _layout(tmp_path)
    p = root / "bounding_boxes_depth.csv"
    p.write_text(p.read_text().replace(",", ";"))
    man = _load(root, caplog)
    assert len(man) == 3 and "bounding_boxes_depth.csv: separator detected: semicolon" in caplog.text


def test_box_number_that_is_not_a_number_is_a_named_row_skip(tmp_path, caplog):
    root = _layout(tmp_path)
    p = root / "bounding_boxes_depth.csv"
    lines = p.read_text().splitlines()
    lines[1] = lines[1].replace(",1,10,10,30,30", ",one,10,10,30,30")
    p.write_text("\n".join(lines) + "\n")
    man = _load(root, caplog)
    b = man.report["depth_boxes"]
    assert b["bad_box_number"] == 1 and b["invalid_box"] == 1
    assert b["examples"]["bad_box_number"] == ["1_P003001ADMW.png#one (row 1: [10, 10, 30, 30])"]
    assert len(man) == 2


def _no_samples(root, **cfg) -> str:
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig(**cfg))
    assert "no samples could be built" in str(exc.value)
    return str(exc.value)


def test_no_samples_names_other_image_formats(tmp_path):
    root = _layout(tmp_path)
    for p in (root / "depth_rgb").iterdir():
        p.rename(p.with_suffix(".jpg"))
    msg = _no_samples(root)
    assert "Likely cause: depth_rgb holds no .png frame but 3 other file(s)" in msg and "1_P003001ADMW.jpg" in msg


def test_no_samples_names_swapped_folders(tmp_path):
    root = _layout(tmp_path)
    folders = {"depth_rgb": "thermal_rgb", "depth_map": "thermal_map", "thermal_rgb": "depth_rgb",
               "thermal_map": "depth_map"}
    msg = _no_samples(root, folders=folders)
    assert "3 frame(s) in the depth_rgb folder carry the thermal camera letter T" in msg and "data.folders" in msg


def test_no_samples_from_a_header_only_box_file_says_so(tmp_path):
    root = _layout(tmp_path)
    p = root / "bounding_boxes_depth.csv"
    p.write_text(p.read_text().splitlines()[0] + "\n")
    msg = _no_samples(root)
    assert "3 depth frame(s) have no row in the depth box file (0 rows" in msg


def test_one_based_appointment_numbers_are_a_problem(tmp_path, caplog):
    rows = [meta_row(1, 3, 1, 1, "I"), meta_row(2, 3, 2, 1, "P"), meta_row(3, 4, 1, 1, "R")]
    root = _layout(tmp_path, rows)
    man = _load(root, caplog)  # one frame (P003 appt 01) joins the row meant for appt 00: a wrong label
    assert len(man) == 1
    assert "has no row with Appt# 0 but 2 depth frame(s) are appointment 00" in caplog.text
    check = check_dataset(load_config(None, {"data.data_dir": str(root), "search.cv_folds": 2}))
    assert not check.ok and any("Appt# must count from 0" in p for p in check.problems)


def test_empty_box_file_names_it(tmp_path):
    root = _layout(tmp_path)
    (root / "bounding_boxes_thermal.csv").write_text("")
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    assert "bounding_boxes_thermal.csv" in str(exc.value) and "is empty" in str(exc.value)


def test_check_data_summary_shows_case_matches_placeholders_and_text_columns(tmp_path):
    rows = [meta_row(1, 3, 0, 1, "I", age="?"), meta_row(2, 3, 1, 1, "P", age=70), meta_row(3, 4, 0, 1, "R", age=55)]
    root = _layout(tmp_path, rows)
    for folder in ("depth_rgb", "depth_map"):
        (root / folder / "1_P003001ADMW.png").rename(root / folder / "1_P003001ADMW.PNG")
    summary = check_dataset(load_config(None, {"data.data_dir": str(root), "search.cv_folds": 2})).summary()
    assert "placeholders read as missing (per column): Age 1" in summary
    assert "text (categorical) feature columns: Sex (F:0, M:1)" in summary
    assert "file names matched only when letter case is ignored: 1, e.g. 1_P003001ADMW.PNG ~ 1_P003001ADMW.png" in summary


def test_normalised_box_coordinates_are_refused(tmp_path):
    root = _layout(tmp_path)
    p = root / "bounding_boxes_thermal.csv"
    p.write_text(p.read_text().replace(",10,10,30,30", ",0.15,0.2,0.45,0.62"))
    with pytest.raises(ValueError) as exc:
        load_dfu(root, DataConfig())
    msg = str(exc.value)
    assert "bounding_boxes_thermal.csv" in msg and "row 1: [0.15, 0.2, 0.45, 0.62]" in msg and "pixel coordinates" in msg


def test_box_with_no_width_left_after_rounding_is_a_zero_area_skip(tmp_path):
    root = _layout(tmp_path)
    p = root / "bounding_boxes_depth.csv"
    lines = p.read_text().splitlines()
    lines[1] = lines[1].replace(",10,10,30,30", ",10.2,10,10.4,30")
    p.write_text("\n".join(lines) + "\n")
    man = load_dfu(root, DataConfig())
    assert man.report["depth_boxes"]["zero_area_box"] == 1 and len(man) == 2
