"""Bad image input: unreadable frames and bad boxes are skipped at manifest time, counted and named."""

import logging

import cv2
import numpy as np
import pytest

from medfusion.config import DataConfig
from medfusion.data import images
from medfusion.data.dfu import MIN_BOX_SIDE, load_dfu
from medfusion.data.images import UnreadableFrame, clear_crop_cache, load_crops, probe_frame, read_frame
from tests.data.conftest import B1, build_layout, meta_row

ROWS = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 4, 0, 1, "R")]
DEPTH = {"1_P003001ADMW.png": [(1, B1)], "2_P003011ADMW.png": [(1, B1)], "3_P004001ADMW.png": [(1, B1)]}
THERMAL = {"11_P003001ATMW.png": [(1, B1)], "12_P003011ATMW.png": [(1, B1)], "13_P004001ATMW.png": [(1, B1)]}


def _layout(tmp_path, depth=None, thermal=None):
    return build_layout(tmp_path / "dfu", ROWS, depth or DEPTH, thermal or THERMAL)


def _png(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path


# ----------------------------------------------------------------------------- probe_frame


def test_probe_frame_reads_size_from_the_header(tmp_path):
    assert probe_frame(_png(tmp_path / "a.png", np.zeros((48, 64, 3), np.uint8))) == (64, 48)
    assert probe_frame(_png(tmp_path / "g16.png", np.zeros((30, 20), np.uint16))) == (20, 30)
    ok, buf = cv2.imencode(".jpg", np.zeros((33, 17, 3), np.uint8))
    (tmp_path / "j.png").write_bytes(buf.tobytes())  # JPEG content under a .png name
    assert probe_frame(tmp_path / "j.png") == (17, 33)
    ok, buf = cv2.imencode(".bmp", np.zeros((5, 7, 3), np.uint8))
    (tmp_path / "b.png").write_bytes(buf.tobytes())  # another format OpenCV reads: decoded once
    assert probe_frame(tmp_path / "b.png") == (7, 5)


@pytest.mark.parametrize("kind,reason", [("missing", "missing_file"), ("empty", "empty_file"),
                                         ("text", "not_an_image"), ("cut_png", "truncated"),
                                         ("cut_jpeg", "truncated"), ("header_only", "truncated")])
def test_probe_frame_rejects_with_a_reason_naming_the_file(tmp_path, kind, reason):
    p = tmp_path / f"{kind}.png"
    good = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))[1].tobytes()
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not an image\n")
    elif kind == "cut_png":
        p.write_bytes(good[: len(good) // 2])
    elif kind == "cut_jpeg":
        jpg = cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes()
        p.write_bytes(jpg[: len(jpg) // 2])
    elif kind == "header_only":
        p.write_bytes(good[:10])
    with pytest.raises(UnreadableFrame) as exc:
        probe_frame(p)
    assert exc.value.reason == reason and str(p) in str(exc.value)


@pytest.mark.parametrize("img", [np.full((12, 10), 7, np.uint8), np.full((12, 10, 4), 9, np.uint8),
                                 np.full((12, 10), 3000, np.uint16), np.full((12, 10, 3), 50000, np.uint16)],
                         ids=["gray8", "bgra8", "gray16", "colour16"])
def test_every_supported_frame_kind_probes_and_loads(tmp_path, img):
    p = _png(tmp_path / "f.png", img)
    assert probe_frame(p) == (10, 12)
    out = read_frame(p)
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8


# ----------------------------------------------------------------------------- loader skips


@pytest.mark.parametrize("folder,name,damage,reason", [
    ("depth_map", "2_P003011ADMW.png", "empty", "empty_file"),
    ("depth_rgb", "2_P003011ADMW.png", "text", "not_an_image"),
    ("depth_map", "2_P003011ADMW.png", "cut", "truncated"),
])
def test_unreadable_depth_frame_is_skipped_with_count_and_name(tmp_path, caplog, folder, name, damage, reason):
    root = _layout(tmp_path)
    p = root / folder / name
    data = p.read_bytes()
    p.write_bytes({"empty": b"", "text": b"not a png at all", "cut": data[: len(data) - 20]}[damage])
    with caplog.at_level(logging.INFO):
        man = load_dfu(root, DataConfig())
    assert "P003011AMW_1" not in set(man.samples.sample_id) and len(man) == 2
    assert man.report["skipped"]["unreadable_frame"] == {"count": 1, "examples": [name]}
    assert man.report["unreadable_files"][reason] == {"count": 1, "examples": [f"{folder}/{name}"]}
    assert f"image files skipped ({reason}): 1" in caplog.text and name in caplog.text


def test_unreadable_thermal_frame_is_not_a_candidate(tmp_path):
    # the visit has two thermal frames: the exact view is unreadable, so the other one is matched
    thermal = dict(THERMAL, **{"14_P003001ATLW.png": [(1, B1)]})
    root = _layout(tmp_path, thermal=thermal)
    (root / "thermal_map" / "11_P003001ATMW.png").write_bytes(b"")
    man = load_dfu(root, DataConfig())
    row = man.samples.set_index("sample_id").loc["P003001AMW_1"]
    assert row.thermal_rgb_path.endswith("14_P003001ATLW.png") and row.match_rule == "relax_angle"
    assert man.report["thermal_unusable"]["unreadable_frame"]["examples"] == ["11_P003001ATMW.png"]
    assert man.report["unreadable_files"]["empty_file"]["examples"] == ["thermal_map/11_P003001ATMW.png"]


def test_box_problems_are_counted_and_name_the_row(tmp_path, caplog):
    depth = dict(DEPTH)  # box numbers stay in 1..3 (DATA_FORMAT.md): the problems are spread over two frames
    depth["1_P003001ADMW.png"] = [(1, B1), (2, (30, 10, 20, 20)), (3, (30, 10, 30, 20))]
    depth["2_P003011ADMW.png"] = [(1, (100, 5, 120, 20)), (2, (50, 30, 70, 60)), (3, (2, 2, 6, 20))]
    with caplog.at_level(logging.INFO):
        man = load_dfu(_layout(tmp_path, depth=depth), DataConfig())
    b = man.report["depth_boxes"]
    # rows: 1 B1, 2 inverted, 3 zero area, 4 outside the 64x48 frame, 5 partly outside, 6 small (4 px wide)
    assert (b["inverted_box"], b["zero_area_box"], b["invalid_box"]) == (1, 1, 2)
    assert b["examples"]["inverted_box"] == ["1_P003001ADMW.png#2 (row 2: [30, 10, 20, 20])"]
    assert b["examples"]["zero_area_box"] == ["1_P003001ADMW.png#3 (row 3: [30, 10, 30, 20])"]
    assert b["outside_frame"] == 1 and "2_P003011ADMW.png#1 (row 4" in b["examples"]["outside_frame"][0]
    assert "frame 64x48 / 64x48" in b["examples"]["outside_frame"][0]
    assert b["clipped"] == 1 and "2_P003011ADMW.png#2 (row 5" in b["examples"]["clipped"][0]
    assert b["small_box"] == 1 and "#3 (row 6: 4x18 px)" in b["examples"]["small_box"][0] and MIN_BOX_SIDE == 8
    ids = set(man.samples.sample_id)
    assert {"P003001AMW_1", "P003011AMW_2", "P003011AMW_3"} <= ids
    assert not {"P003001AMW_2", "P003001AMW_3", "P003011AMW_1"} & ids
    assert "2 row(s) dropped (invalid_box)" in caplog.text
    assert "1 box(es) lie entirely outside their frame" in caplog.text
    assert "1 box(es) smaller than 8 px" in caplog.text
    clear_crop_cache()
    x = load_crops(man, "depth_rgb", 16, 0.15)  # the clipped and the small box crop fine
    assert x.shape == (len(man), 16, 16, 3)
    clear_crop_cache()


def test_frame_whose_boxes_are_all_bad_or_outside_is_skipped(tmp_path):
    depth = dict(DEPTH)
    depth["1_P003001ADMW.png"] = [(1, (10, 10, 5, 20))]  # inverted only
    depth["2_P003011ADMW.png"] = [(1, (200, 10, 220, 20))]  # outside only
    man = load_dfu(_layout(tmp_path, depth=depth), DataConfig())
    assert man.report["skipped"]["no_valid_box"] == {"count": 1, "examples": ["1_P003001ADMW.png"]}
    assert man.report["skipped"]["box_outside_frame"] == {"count": 1, "examples": ["2_P003011ADMW.png"]}
    assert list(man.samples.sample_id) == ["P004001AMW_1"]


def test_frame_without_box_and_box_without_frame_are_counted(tmp_path):
    depth = dict(DEPTH)
    depth["2_P003011ADMW.png"] = []  # a frame with no box row
    root = _layout(tmp_path, depth=depth)
    with open(root / "bounding_boxes_depth.csv", "a") as f:
        f.write("9_P003021ADMW.png,3,2,1,A,D,MW,1,10,10,30,30\n")  # a box for a frame that does not exist
    man = load_dfu(root, DataConfig())
    assert man.report["skipped"]["no_box"] == {"count": 1, "examples": ["2_P003011ADMW.png"]}
    assert man.report["depth_boxes"]["frames_not_found"] == 1
    assert man.report["depth_boxes"]["examples"]["frames_not_found"] == ["9_P003021ADMW.png"]


def test_thermal_box_outside_its_frame_falls_back_to_a_valid_one(tmp_path):
    thermal = dict(THERMAL)
    thermal["11_P003001ATMW.png"] = [(1, (300, 300, 320, 320)), (2, B1)]
    man = load_dfu(_layout(tmp_path, thermal=thermal), DataConfig())
    assert man.box("thermal_rgb", 0) == B1
    assert man.report["thermal_boxes"]["outside_frame"] == 1


def test_frame_sizes_are_reported_per_modality(tmp_path):
    man = load_dfu(_layout(tmp_path), DataConfig())
    assert man.report["frame_sizes"]["depth_map"] == {"n_frames": 3, "width": [64, 64], "height": [48, 48]}


def test_load_crops_names_sample_and_check_data_on_a_damaged_frame(tmp_path, monkeypatch):
    man = load_dfu(_layout(tmp_path), DataConfig())
    clear_crop_cache()
    broken = lambda p: (_ for _ in ()).throw(  # noqa: E731
        ValueError(f"image file {p!r} could not be decoded by OpenCV (corrupt or not an image)"))
    monkeypatch.setattr(images, "read_frame", broken)
    monkeypatch.setattr(images, "read_map", broken)  # 16-bit maps are decoded as numbers
    with pytest.raises(ValueError) as exc:
        load_crops(man, "thermal_map", 16, 0.1)
    msg = str(exc.value)
    assert "thermal_map frame of sample 'P003001AMW_1'" in msg and "11_P003001ATMW.png" in msg
    assert "--mode check_data" in msg
    clear_crop_cache()
