"""check_dataset / run_check_data on the small demo and on broken copies of it (one thing broken each)."""

import dataclasses
import logging
import shutil

import pandas as pd
import pytest

from medfusion.config import load_config, replace
from medfusion.data.check import DatasetCheck, check_dataset, run_check_data
from medfusion.data.synthetic import generate_demo

LOG = logging.getLogger("tests.check_data")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("check") / "demo", seed=3, n_patients=24)


@pytest.fixture
def broken(demo, tmp_path):
    """A fresh copy of the demo to break."""
    return shutil.copytree(demo, tmp_path / "broken")


def _cfg(data_dir, **overrides):
    return load_config(None, {"data.data_dir": str(data_dir), "search.cv_folds": 3, **overrides})


def _run(cfg, caplog):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        rc = run_check_data(cfg, LOG)
    return rc, caplog.text


def _meta(root):
    return pd.read_csv(root / "metadata.csv", encoding="utf-8-sig")


def _write_meta(root, df):
    df.to_csv(root / "metadata.csv", index=False, encoding="utf-8-sig")


# generate_demo(seed=3, n_patients=24), counted once without the loader (test_demo_counts_agree_with_an_independent_
# recount below does it again: metadata.csv and the box CSVs with pandas, the depth maps with OpenCV)
DEMO_SAMPLES, DEMO_VISITS, DEMO_PATIENTS = 103, 78, 24
DEMO_SAMPLE_CLASSES = {"I": 35, "P": 59, "R": 9}
DEMO_VISIT_CLASSES = {"I": 26, "P": 46, "R": 6}
DEMO_METADATA_ROWS, DEMO_DUPLICATE_KEYS = 82, 2  # 82 rows, 80 distinct visit keys
DEMO_DEPTH_FILES, DEMO_THERMAL_FILES, DEMO_DEPTH_BOX_ROWS, DEMO_THERMAL_BOX_ROWS = 92, 88, 105, 98
DEMO_SKIPPED = {"no_box": "93_P050001BDMW.png", "map_box_no_data": "502_P012001ADLW.png",
                "no_thermal_frame": "833_P012012BDMZ.png"}


def _independent_counts(root):
    """Samples, visits, patients and class counts of a DFU-layout folder, read without medfusion.

    A sample is a depth box row whose visit (Patient#, Appt#, DFU# parsed from the file name) has a metadata row
    (first of duplicates), whose visit has at least one thermal frame with a box and both thermal files (the
    relaxed matching rules end at "any frame of the visit"), and whose depth-map box holds data (not all 0).
    """
    import re

    import cv2

    meta = pd.read_csv(root / "metadata.csv", encoding="utf-8-sig")
    keys = list(zip(meta["Patient#"].astype(int), meta["Appt#"].astype(int), meta["DFU#"].astype(int)))
    label = {}
    for k, lab in zip(keys, meta["Healing Phase Abs"].str.strip()):
        label.setdefault(k, lab)

    def key(name):
        m = re.match(r"\d+_P(\d{3})(\d{2})(\d)", name)
        return int(m[1]), int(m[2]), int(m[3])

    depth, thermal = pd.read_csv(root / "bounding_boxes_depth.csv"), pd.read_csv(root / "bounding_boxes_thermal.csv")
    thermal_visits = {key(f) for f in thermal.Filename
                      if (root / "thermal_map" / f).is_file() and (root / "thermal_rgb" / f).is_file()}

    def usable(r):
        k = key(r.Filename)
        if k not in label or k not in thermal_visits or not (root / "depth_rgb" / r.Filename).is_file():
            return False
        img = cv2.imread(str(root / "depth_map" / r.Filename), cv2.IMREAD_UNCHANGED)
        return img is not None and bool((img[r.Ymin:r.Ymax, r.Xmin:r.Xmax] != 0).any())

    ok = depth[depth.apply(usable, axis=1)]
    visits = {key(f) for f in ok.Filename}
    return {"samples": len(ok), "visits": len(visits), "patients": len({v[0] for v in visits}),
            "sample_classes": pd.Series([label[key(f)] for f in ok.Filename]).value_counts().to_dict(),
            "visit_classes": pd.Series([label[v] for v in visits]).value_counts().to_dict(),
            "metadata_rows": len(meta), "duplicate_keys": len(keys) - len(set(keys)),
            "depth_files": len(list((root / "depth_rgb").glob("*.png"))),
            "thermal_files": len(list((root / "thermal_rgb").glob("*.png"))),
            "depth_box_rows": len(depth), "thermal_box_rows": len(thermal)}


def test_demo_counts_agree_with_an_independent_recount(demo):
    assert _independent_counts(demo) == {
        "samples": DEMO_SAMPLES, "visits": DEMO_VISITS, "patients": DEMO_PATIENTS,
        "sample_classes": DEMO_SAMPLE_CLASSES, "visit_classes": DEMO_VISIT_CLASSES,
        "metadata_rows": DEMO_METADATA_ROWS, "duplicate_keys": DEMO_DUPLICATE_KEYS,
        "depth_files": DEMO_DEPTH_FILES, "thermal_files": DEMO_THERMAL_FILES,
        "depth_box_rows": DEMO_DEPTH_BOX_ROWS, "thermal_box_rows": DEMO_THERMAL_BOX_ROWS}


def test_demo_is_usable_and_the_summary_says_what_a_user_needs(demo, caplog):
    rc, text = _run(_cfg(demo), caplog)
    assert rc == 0, text
    check = check_dataset(_cfg(demo), LOG)
    assert isinstance(check, DatasetCheck) and check.ok and check.problems == [] and check.manifest is not None
    m = check.manifest
    assert (len(m), m.samples.visit.nunique(), m.samples.patient.nunique()) == (DEMO_SAMPLES, DEMO_VISITS,
                                                                               DEMO_PATIENTS)
    assert f"{DEMO_SAMPLES} samples, {DEMO_VISITS} visits, {DEMO_PATIENTS} patients" in text
    pct = lambda c, n: ", ".join(f"{k} {v} ({100 * v / n:.1f}%)" for k, v in c.items())  # noqa: E731
    assert f"classes per sample:  {pct(DEMO_SAMPLE_CLASSES, DEMO_SAMPLES)}" in text
    assert f"classes per visit:   {pct(DEMO_VISIT_CLASSES, DEMO_VISITS)}" in text
    assert f"from {DEMO_METADATA_ROWS - DEMO_DUPLICATE_KEYS} metadata rows, {DEMO_DEPTH_FILES} depth and " \
           f"{DEMO_THERMAL_FILES} thermal frames" in text
    assert f"depth box rows: {DEMO_DEPTH_BOX_ROWS} rows" in text and f"thermal box rows: {DEMO_THERMAL_BOX_ROWS} rows" in text
    assert f"{DEMO_DUPLICATE_KEYS} duplicated visit rows dropped" in text
    assert f"depth frames skipped: {len(DEMO_SKIPPED)}" in text
    for reason, first in DEMO_SKIPPED.items():  # skipped frames by reason, with their first names
        assert f"{reason} 1: {first}" in text
    for line in ("samples by view-matching rule: exact", "relax_debridement", "thermal frames unusable: 0",
                 "unreadable image files: 0", "missing values (", "depth_rgb    ", "frames 1280-1280 x 720-720 px",
                 "thermal_map  ", "1080-1080 x 1440-1440 px", "folds (--cv_folds 3", "fold 2: train",
                 "full decode of every referenced image file: 0 failed", "result: usable"):
        assert line in text, line
    # the fold lines add up to the dataset: every patient and sample in exactly one validation part
    import re
    folds = re.findall(r"fold \d: train (\d+) patients \(I (\d+), P (\d+), R (\d+)\); validation (\d+) patients "
                       r"\(I (\d+), P (\d+), R (\d+)\)", text)
    assert len(folds) == 3
    assert sum(int(f[4]) for f in folds) == DEMO_PATIENTS
    for j, c in enumerate("IPR"):
        assert sum(int(f[5 + j]) for f in folds) == DEMO_SAMPLE_CLASSES[c]
        assert all(int(f[1 + j]) + int(f[5 + j]) == DEMO_SAMPLE_CLASSES[c] for f in folds)
    assert all(int(f[0]) + int(f[4]) == DEMO_PATIENTS for f in folds)
    assert "Odor 53 (68%)" in text  # the most-missing demo column (53 of 78 visits), with its percentage
    short = check.summary(short=True)
    assert short.splitlines()[0].startswith(
        f"dataset {demo}: {DEMO_SAMPLES} samples, {DEMO_VISITS} visits, {DEMO_PATIENTS} patients")
    assert "PROBLEM" not in short and len(short.splitlines()) == 1 + len(check.warnings)
    assert check.assignment is not None and set(check.assignment.values()) == {0, 1, 2}


# ----------------------------------------------------------------------------- cannot be used: exit 1


@pytest.mark.parametrize("breakage,expected", [
    ("no_metadata", ["metadata file", "metadata.csv", "not found"]),
    ("no_label_column", ["has no column 'Healing Phase Abs'"]),
    ("not_utf8", ["metadata.csv", "is not UTF-8", "Re-save it as UTF-8"]),
    ("bad_label", ["row 5 (line 6 counting the header) has Healing Phase Abs='Q'"]),
    ("no_thermal_map_folder", ["image folder", "thermal_map", "not found"]),
    ("no_depth_boxes", ["depth bounding-box file", "bounding_boxes_depth.csv"]),
])
def test_unreadable_required_input_exits_1_naming_it(broken, caplog, breakage, expected):
    if breakage == "no_metadata":
        (broken / "metadata.csv").unlink()
    elif breakage == "no_label_column":
        _write_meta(broken, _meta(broken).rename(columns={"Healing Phase Abs": "Phase"}))
    elif breakage == "not_utf8":
        text = (broken / "metadata.csv").read_text(encoding="utf-8-sig")
        (broken / "metadata.csv").write_bytes(text.encode("cp1252", errors="replace"))  # '°C' -> b'\xb0'
    elif breakage == "bad_label":
        df = _meta(broken)
        df.loc[4, "Healing Phase Abs"] = "Q"
        _write_meta(broken, df)
    elif breakage == "no_thermal_map_folder":
        shutil.rmtree(broken / "thermal_map")
    elif breakage == "no_depth_boxes":
        (broken / "bounding_boxes_depth.csv").unlink()
    rc, text = _run(_cfg(broken), caplog)
    assert rc == 1
    assert "PROBLEMS (1)" in text and "result: NOT usable" in text
    for fragment in expected:
        assert fragment in text, (fragment, text)
    check = check_dataset(_cfg(broken), LOG)
    assert not check.ok and check.manifest is None and len(check.problems) == 1
    assert "NOT usable" in check.summary(short=True)


def test_frame_with_damaged_image_data_fails_check_data(broken, caplog):
    victim = sorted((broken / "depth_map").iterdir())[0]
    data = bytearray(victim.read_bytes())
    i = data.index(b"IDAT")
    for j in range(i + 100, i + 400):  # header and IEND intact: the header probe cannot see it
        data[j] ^= 0x5A
    victim.write_bytes(bytes(data))
    check = check_dataset(_cfg(broken), LOG)  # the check a search runs: the loader's decode of the map failed
    assert not check.ok and len(check.problems) == 1, check.problems
    assert "have damaged image data" in check.problems[0] and victim.name in check.problems[0]
    assert "could not be decoded" in check.problems[0] and "--mode check_data" in check.problems[0]
    rc, text = _run(_cfg(broken), caplog)
    assert rc == 1
    assert "1 image file(s) used by" in text and "cannot be decoded" in text and victim.name in text
    assert "a search would stop at the first one" in text


def test_more_folds_than_patients(demo):
    check = check_dataset(_cfg(demo, **{"search.cv_folds": 30}), LOG)
    assert not check.ok and check.manifest is not None
    assert check.problems == ["24 patients cannot fill 30 folds (every fold needs its own patients): "
                              "lower --cv_folds to at most 24"]


def test_data_percentage_leaving_too_little(demo):
    check = check_dataset(_cfg(demo, **{"search.data_percentage": 10}), LOG)
    assert not check.ok
    assert "--data_percentage 10 keeps 2 of 24 patients, fewer than the 3 folds" in check.problems[0]


def test_class_without_samples(broken):
    df = _meta(broken)
    df["Healing Phase Abs"] = df["Healing Phase Abs"].replace("R", "P")
    _write_meta(broken, df)
    check = check_dataset(_cfg(broken), LOG)
    assert not check.ok
    assert any(p.startswith("class R has no samples") for p in check.problems)
    assert any("the training part has no samples of class R" in p and "no samples of class R at all" in p
               for p in check.problems)


def test_rare_class_on_one_patient_fails_the_fold_class_check(broken):
    df = _meta(broken)
    r_patients = sorted(df.loc[df["Healing Phase Abs"] == "R", "Patient#"].unique())
    keep = r_patients[0]
    df.loc[(df["Healing Phase Abs"] == "R") & (df["Patient#"] != keep), "Healing Phase Abs"] = "P"
    _write_meta(broken, df)
    check = check_dataset(_cfg(broken), LOG)
    assert not check.ok
    assert any("class R has 1 patient(s), fewer than the 3 folds" in w for w in check.warnings)
    (problem,) = check.problems
    assert "the training part has no samples of class R" in problem and "all in validation fold" in problem


def test_leaky_feature_requested_without_config_validation(demo):
    cfg = replace(_cfg(demo), "data.feature_columns", ("Age", "Phase Confidence (%)"))
    check = check_dataset(cfg, LOG)
    assert not check.ok and "'Phase Confidence (%)'" in check.problems[0] and "leak" in check.problems[0]


def test_metadata_modality_without_features_is_a_problem(demo):
    m = check_dataset(_cfg(demo), LOG).manifest
    cfg = replace(_cfg(demo), "data.exclude_columns", tuple(m.feature_columns))
    check = check_dataset(cfg, LOG)
    assert not check.ok and "no metadata feature column is left" in check.problems[0]
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, modalities=("depth_rgb",)))
    assert check_dataset(cfg, LOG).ok


# ----------------------------------------------------------------------------- usable, with counted skips


def test_truncated_and_empty_frames_are_skipped_and_listed(broken, caplog):
    names = sorted(p.name for p in (broken / "depth_map").iterdir())
    cut, empty = broken / "depth_map" / names[0], broken / "thermal_map" / sorted(
        p.name for p in (broken / "thermal_map").iterdir())[0]
    cut.write_bytes(cut.read_bytes()[:200])
    empty.write_bytes(b"")
    check = check_dataset(_cfg(broken), LOG)
    assert check.ok, check.problems
    rep = check.manifest.report
    assert rep["unreadable_files"]["truncated"] == {"count": 1, "examples": [f"depth_map/{cut.name}"]}
    assert rep["unreadable_files"]["empty_file"] == {"count": 1, "examples": [f"thermal_map/{empty.name}"]}
    text = check.summary()
    assert "unreadable image files: 2" in text
    assert f"truncated 1: depth_map/{cut.name}" in text and f"empty_file 1: thermal_map/{empty.name}" in text
    assert any("2 image file(s) are missing, empty, not images or cut short" in w for w in check.warnings)
    assert str(cut) not in set(check.manifest.samples.depth_map_path)


def test_box_outside_and_inverted_are_skipped_and_named(broken):
    boxes = pd.read_csv(broken / "bounding_boxes_depth.csv")
    boxes.loc[0, ["Xmin", "Xmax"]] = [5000, 5100]  # outside the 1280x720 frame
    boxes.loc[1, ["Xmin", "Xmax"]] = [boxes.loc[1, "Xmax"], boxes.loc[1, "Xmin"]]  # inverted
    boxes.to_csv(broken / "bounding_boxes_depth.csv", index=False)
    check = check_dataset(_cfg(broken), LOG)
    assert check.ok
    text = check.summary()
    assert "outside_frame 1" in text and f"{boxes.loc[0, 'Filename']}#1 (row 1: [5000," in text
    assert "invalid_box 1" in text and f"{boxes.loc[1, 'Filename']}#1 (row 2:" in text and "inverted_box" in text


BOX_REASONS = ("invalid_box", "missing_coordinate", "inverted_box", "zero_area_box", "negative_box", "bad_box_number",
               "unparseable_name", "duplicate_box", "small_box", "wrong_camera", "outside_frame", "clipped")


def _plant_box_row(boxes: pd.DataFrame, reason: str, thermal_name: str) -> pd.DataFrame:
    """One depth box row (data row 3) broken in the way `reason` names; every other row untouched."""
    r = 2
    x0, y0 = int(boxes.loc[r, "Xmin"]), int(boxes.loc[r, "Ymin"])
    if reason == "missing_coordinate":
        boxes.loc[r, "Ymax"] = ""
    elif reason == "inverted_box":
        boxes.loc[r, ["Xmin", "Xmax"]] = [boxes.loc[r, "Xmax"], boxes.loc[r, "Xmin"]]
    elif reason == "zero_area_box":
        boxes.loc[r, "Xmax"] = str(x0)
    elif reason == "negative_box":
        boxes.loc[r, ["Xmin", "Ymin", "Xmax", "Ymax"]] = ["-60", "-60", "-10", "-10"]
    elif reason == "bad_box_number":
        boxes.loc[r, "Bounding Box Number"] = "two"
    elif reason == "unparseable_name":
        boxes.loc[r, "Filename"] = "holiday_photo.png"
    elif reason == "wrong_camera":
        boxes.loc[r, "Filename"] = thermal_name  # a thermal frame's name in the depth box file
    elif reason == "duplicate_box":
        boxes = pd.concat([boxes, boxes.iloc[[r]]], ignore_index=True)
    elif reason == "small_box":
        boxes.loc[r, ["Xmax", "Ymax"]] = [str(x0 + 5), str(y0 + 30)]
    elif reason == "outside_frame":
        boxes.loc[r, ["Xmin", "Xmax"]] = ["5000", "5100"]  # the frames are 1280 px wide
    elif reason == "clipped":
        boxes.loc[r, "Xmax"] = "1300"
    return boxes


@pytest.mark.parametrize("reason", [r for r in BOX_REASONS if r != "invalid_box"])
def test_each_box_row_reason_is_counted_on_its_own(broken, reason):
    path = broken / "bounding_boxes_depth.csv"
    boxes = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert int(boxes.loc[2, "Xmax"]) < 1250  # room for "clipped" to reach past the 1280 px frame edge
    thermal_name = pd.read_csv(broken / "bounding_boxes_thermal.csv", dtype=str)["Filename"].iloc[0]
    original = boxes.loc[2, "Filename"]
    _plant_box_row(boxes, reason, thermal_name).to_csv(path, index=False)
    check = check_dataset(_cfg(broken), LOG)
    assert check.manifest is not None, check.problems
    counts = check.manifest.report["depth_boxes"]
    row_problems = ("missing_coordinate", "inverted_box", "zero_area_box", "negative_box", "bad_box_number")
    expected = {r: int(r == reason or (r == "invalid_box" and reason in row_problems)) for r in BOX_REASONS}
    assert {r: counts[r] for r in BOX_REASONS} == expected
    assert counts["rows"] == DEMO_DEPTH_BOX_ROWS + (reason == "duplicate_box")
    text = check.summary()
    shown = {"unparseable_name": "holiday_photo.png", "wrong_camera": thermal_name}.get(reason, original)
    if reason in row_problems:  # summed as invalid_box, each example line names its kind
        assert "invalid_box 1" in text and f"{shown}#" in text and f") {reason}" in text, text
    else:
        assert f"{reason} 1" in text and shown in text, text
