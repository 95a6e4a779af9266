import json
import logging

import pytest

from medfusion.config import DataConfig
from medfusion.data.dfu import LEAKY_COLUMNS, NON_FEATURE_COLUMNS, FrameKey, load_dfu, parse_frame_name
from tests.data.conftest import B1, B2, build_layout, meta_row, write_meta


def test_parse_frame_name_examples():
    k = parse_frame_name("10_P257001ADMW.png")
    assert k == FrameKey(257, 0, 1, "A", "D", "M", "W", 10)
    k = parse_frame_name("/some/dir/6_P219002ATMZ.png")
    assert (k.patient, k.appt, k.dfu, k.debridement, k.camera, k.angle, k.zoom) == (219, 0, 2, "A", "T", "M", "Z")
    assert k.view == ("A", "M", "Z") and k.visit == (219, 0, 2) and k.view_id == "P219002AMZ"


@pytest.mark.parametrize("bad", ["P257001ADMW.png", "10_P25701ADMW.png", "10_P257001XDMW.png", "10_P257001ADMW.jpg",
                                 "10_P257001ADQW.png", "10_P257001ADMWX.png", "x_P257001ADMW.png", ""])
def test_parse_frame_name_rejects(bad):
    with pytest.raises(ValueError, match="does not follow"):
        parse_frame_name(bad)


def test_constants():
    assert LEAKY_COLUMNS == ("Healing Phase", "Phase Confidence (%)")
    for c in ("ID", "Patient#", "Appt#", "DFU#", "Appt Days", "Location", "Type of Pain", "Type of Pain2",
              "Healing Phase Abs", *LEAKY_COLUMNS):
        assert c in NON_FEATURE_COLUMNS


def test_tiny_layout_samples_rules_and_skips(tiny_layout, caplog):
    with caplog.at_level(logging.INFO):
        man = load_dfu(tiny_layout, DataConfig())
    s = man.samples.set_index("sample_id")
    # one sample per depth box
    assert sorted(s.index) == ["P003001AMW_1", "P003001AMW_2", "P003011BLZ_1", "P012001ARZ_1", "P012002BMW_1"]
    assert s.loc["P003001AMW_1", "match_rule"] == "exact"
    assert s.loc["P003001AMW_2", "match_rule"] == "exact"
    # relax_angle: same debridement+zoom; tie broken by sorted file name (12_... < 13_...)
    assert s.loc["P003011BLZ_1", "match_rule"] == "relax_angle"
    assert s.loc["P003011BLZ_1", "thermal_rgb_path"].endswith("12_P003011BTRZ.png")
    assert s.loc["P012001ARZ_1", "match_rule"] == "relax_zoom"
    assert s.loc["P012002BMW_1", "match_rule"] == "relax_debridement"
    assert man.report["match_rules"] == {"exact": 2, "relax_angle": 1, "relax_zoom": 1, "relax_debridement": 1}
    skipped = {k: v["count"] for k, v in man.report["skipped"].items()}
    assert skipped == {"unparseable_name": 1, "no_box": 1, "no_metadata_row": 1, "missing_map_file": 1,
                       "no_thermal_frame": 1}
    assert man.report["skipped"]["no_metadata_row"]["examples"] == ["6_P099001ADMW.png"]
    json.dumps(man.report)  # JSON-serialisable
    # boxes: maps use their rgb frame's box; thermal box by Bounding Box Number
    assert man.box("depth_rgb", list(man.samples.sample_id).index("P003001AMW_2")) == B2
    r2 = s.loc["P003001AMW_2"]
    assert (r2.thermal_rgb_xmin, r2.thermal_rgb_ymin, r2.thermal_rgb_xmax, r2.thermal_rgb_ymax) == B1
    assert (r2.thermal_map_xmin, r2.thermal_map_xmax) == (B1[0], B1[2])
    assert r2.depth_map_path.endswith("depth_map/1_P003001ADMW.png")
    assert r2.thermal_map_path.endswith("thermal_map/11_P003001ATMW.png")
    # labels, identity, features
    assert s.loc["P012002BMW_1", "label"] == 1 and s.loc["P012001ARZ_1", "label"] == 2
    assert s.loc["P003001AMW_1", "label"] == 0 and s.loc["P003001AMW_1", "visit"] == "P003001"
    assert s.loc["P003001AMW_1", "patient"] == 3
    assert man.feature_columns == ["Age", "Sex (F:0, M:1)"]  # Empty Col dropped, identifiers/leaky excluded
    assert "Empty Col" in man.report["empty_columns_dropped"]
    assert man.report["n_samples"] == 5 and man.report["n_patients"] == 2 and man.report["n_visits"] == 4
    text = caplog.text
    for rule in ("exact", "relax_angle", "relax_zoom", "relax_debridement"):
        assert f"rule {rule}:" in text
    assert "skipped (no_thermal_frame): 1" in text


def test_bom_and_no_bom_load_the_same(tmp_path):
    depth = {"1_P003001ADMW.png": [(1, B1)]}
    thermal = {"2_P003001ATMW.png": [(1, B1)]}
    rows = [meta_row(1, 3, 0, 1, "R")]
    a = load_dfu(build_layout(tmp_path / "a", rows, depth, thermal, bom=True), DataConfig())
    b = load_dfu(build_layout(tmp_path / "b", rows, depth, thermal, bom=False), DataConfig())
    assert (tmp_path / "a" / "metadata.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert not (tmp_path / "b" / "metadata.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert list(a.samples.sample_id) == list(b.samples.sample_id) == ["P003001AMW_1"]
    assert a.feature_columns == b.feature_columns


@pytest.mark.parametrize("pad_depth,pad_thermal", [(False, True), (True, False), (True, True), (False, False)])
def test_zero_padded_or_not_patient_numbers(tmp_path, pad_depth, pad_thermal):
    depth = {"1_P007001ADMW.png": [(1, B1)]}
    thermal = {"2_P007001ATMW.png": [(1, B1)]}
    root = build_layout(tmp_path, [meta_row(1, 7, 0, 1, "I")], depth, thermal, pad_depth=pad_depth,
                        pad_thermal=pad_thermal)
    man = load_dfu(root, DataConfig())
    assert len(man) == 1 and man.samples.patient.iloc[0] == 7


def test_thermal_box_falls_back_to_box_1(tmp_path):
    depth = {"1_P003001ADMW.png": [(1, B1), (2, B2)]}
    thermal = {"2_P003001ATMW.png": [(1, (1, 2, 20, 22))]}
    man = load_dfu(build_layout(tmp_path, [meta_row(1, 3, 0, 1, "I")], depth, thermal), DataConfig())
    assert len(man) == 2
    assert man.box("thermal_rgb", 1) == (1, 2, 20, 22) and man.box("thermal_map", 1) == (1, 2, 20, 22)


def test_duplicate_visits_keep_first(tmp_path, caplog):
    rows = [meta_row(1, 3, 0, 1, "I", age=50), meta_row(2, 3, 0, 1, "R", age=70), meta_row(3, 3, 0, 1, "P")]
    depth = {"1_P003001ADMW.png": [(1, B1)]}
    thermal = {"2_P003001ATMW.png": [(1, B1)]}
    with caplog.at_level(logging.INFO):
        man = load_dfu(build_layout(tmp_path, rows, depth, thermal), DataConfig())
    assert man.samples.label.iloc[0] == 0 and man.samples.Age.iloc[0] == 50
    assert man.report["duplicate_visits"] == 2 and man.report["duplicate_visit_keys"] == [[3, 0, 1], [3, 0, 1]]
    assert "2 duplicated visit key" in caplog.text


def test_duplicate_sample_ids_get_random_number(tmp_path):
    depth = {"1_P003001ADMW.png": [(1, B1)], "2_P003001ADMW.png": [(1, B1)]}
    thermal = {"3_P003001ATMW.png": [(1, B1)]}
    man = load_dfu(build_layout(tmp_path, [meta_row(1, 3, 0, 1, "I")], depth, thermal), DataConfig())
    assert sorted(man.samples.sample_id) == ["P003001AMW_1_1", "P003001AMW_1_2"]


def test_invalid_boxes_dropped_and_counted(tmp_path):
    depth = {"1_P003001ADMW.png": [(1, B1), (2, (30, 10, 30, 20)), (3, (-50, -40, -10, -5))]}
    thermal = {"2_P003001ATMW.png": [(1, B1)]}
    man = load_dfu(build_layout(tmp_path, [meta_row(1, 3, 0, 1, "I")], depth, thermal), DataConfig())
    assert list(man.samples.sample_id) == ["P003001AMW_1"]
    assert man.report["depth_boxes"]["invalid_box"] == 2


@pytest.mark.parametrize("label", ["X", "", "Inflammatory"])
def test_bad_label_names_file_row_and_value(tmp_path, label):
    rows = [meta_row(1, 3, 0, 1, "I"), meta_row(2, 3, 1, 1, "P"), meta_row(3, 3, 2, 1, label)]
    build_layout(tmp_path, rows, {"1_P003001ADMW.png": [(1, B1)]}, {"2_P003001ATMW.png": [(1, B1)]})
    with pytest.raises(ValueError) as exc:
        load_dfu(tmp_path, DataConfig())
    msg = str(exc.value)
    assert "metadata.csv" in msg and "row 3" in msg and "Healing Phase Abs" in msg
    assert (repr(label) in msg) or ("nan" in msg)


def test_missing_required_column_and_files(tmp_path):
    build_layout(tmp_path, [meta_row(1, 3, 0, 1, "I")], {"1_P003001ADMW.png": [(1, B1)]},
                 {"2_P003001ATMW.png": [(1, B1)]})
    with pytest.raises(ValueError, match=r"metadata.*'Label X'"):
        load_dfu(tmp_path, DataConfig(label_column="Label X"))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dfu(tmp_path, DataConfig(metadata_csv="nope.csv"))
    with pytest.raises(FileNotFoundError, match="boxes_x.csv"):
        load_dfu(tmp_path, DataConfig(thermal_boxes_csv="boxes_x.csv"))
    (tmp_path / "bounding_boxes_depth.csv").write_text("Filename,Xmin\n")
    with pytest.raises(ValueError, match="bounding_boxes_depth.csv.*Bounding Box Number"):
        load_dfu(tmp_path, DataConfig())


def test_custom_label_column_and_folders(tmp_path):
    root = build_layout(tmp_path, [meta_row(1, 3, 0, 1, "P")], {"1_P003001ADMW.png": [(1, B1)]},
                        {"2_P003001ATMW.png": [(1, B1)]})
    (root / "depth_rgb").rename(root / "drgb")
    cfg = DataConfig(folders={"depth_rgb": "drgb", "depth_map": "depth_map", "thermal_rgb": "thermal_rgb",
                              "thermal_map": "thermal_map"})
    man = load_dfu(root, cfg)
    assert man.samples.depth_rgb_path.iloc[0].endswith("drgb/1_P003001ADMW.png")
