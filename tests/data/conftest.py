"""Fixtures for the data tests: a tiny hand-built DFU layout with 64x48 frames."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

META_COLUMNS = ["ID", "Patient#", "Appt#", "DFU#", "Appt Days", "Healing Phase Abs", "Healing Phase",
                "Phase Confidence (%)", "Location", "Type of Pain", "Type of Pain2", "Age", "Empty Col",
                "Sex (F:0, M:1)"]
BOX_COLUMNS = ["Filename", "Patient#", "Appt#", "DFU#", "DebriStat", "Camera", "Angle", "Bounding Box Number",
               "Xmin", "Ymin", "Xmax", "Ymax"]


def meta_row(i, patient, appt, dfu, label, age=60):
    return [i, patient, appt, dfu, 7 * appt, label, label + "+", 80, "hallux", "burning", "", age, "", "M"]


def write_meta(root: Path, rows, bom=True):
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        w = csv.writer(f)
        w.writerow(META_COLUMNS)
        w.writerows(rows)


def write_boxes(root: Path, name: str, boxes, pad_patient: bool):
    """boxes: list of (filename, box_number, (xmin, ymin, xmax, ymax))."""
    from medfusion.data.dfu import parse_frame_name

    with open(root / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(BOX_COLUMNS)
        for fname, num, b in boxes:
            k = parse_frame_name(fname)
            pat = f"{k.patient:03d}" if pad_patient else str(k.patient)
            w.writerow([fname, pat, k.appt, k.dfu, k.debridement, k.camera, k.angle + k.zoom, num, *b])


def write_frame(path: Path, value=100, wh=(64, 48), depth16=False):
    w, h = wh
    if depth16:
        # a gentle gradient: a constant map is a named skip (data/maps.py)
        img = (1000 + value + np.arange(w)[None, :] + np.zeros((h, 1), int)).astype(np.uint16)
    else:
        img = np.full((h, w, 3), value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def build_layout(root: Path, meta_rows, depth, thermal, bom=True, pad_thermal=True, pad_depth=False,
                 skip_maps=()):
    """depth/thermal: {filename: [(box_number, box), ...]} (an empty list: frame without box rows)."""
    root.mkdir(parents=True, exist_ok=True)
    write_meta(root, meta_rows, bom=bom)
    for frames, rgb, mp in ((depth, "depth_rgb", "depth_map"), (thermal, "thermal_rgb", "thermal_map")):
        (root / rgb).mkdir(exist_ok=True)
        (root / mp).mkdir(exist_ok=True)
        for i, name in enumerate(frames):
            write_frame(root / rgb / name, value=10 + i)
            if name not in skip_maps:
                write_frame(root / mp / name, value=i, depth16=True)
    write_boxes(root, "bounding_boxes_depth.csv",
                [(n, num, b) for n, bl in depth.items() for num, b in bl], pad_patient=pad_depth)
    write_boxes(root, "bounding_boxes_thermal.csv",
                [(n, num, b) for n, bl in thermal.items() for num, b in bl], pad_patient=pad_thermal)
    return root


B1 = (10, 10, 30, 30)
B2 = (35, 5, 60, 40)


@pytest.fixture
def tiny_layout(tmp_path):
    """Four visits, each exercising one thermal-match rule, plus frames skipped for each reason."""
    meta = [
        meta_row(1, 3, 0, 1, "I"),
        meta_row(2, 3, 1, 1, "P"),
        meta_row(3, 12, 0, 1, "R"),
        meta_row(4, 12, 0, 2, " P "),
        meta_row(5, 40, 0, 1, "I"),  # visit without thermal frames
    ]
    depth = {
        "1_P003001ADMW.png": [(1, B1), (2, B2)],  # exact, two boxes
        "2_P003011BDLZ.png": [(1, B1)],  # relax_angle (thermal BRZ, BMZ; BMZ < BRZ by name? chosen by sorted name)
        "3_P012001ADRZ.png": [(1, B1)],  # relax_zoom
        "4_P012002BDMW.png": [(1, B1)],  # relax_debridement
        "5_P003001BDRW.png": [],  # no box
        "6_P099001ADMW.png": [(1, B1)],  # no metadata row
        "7_P040001ADMW.png": [(1, B1)],  # no thermal frame for the visit
        "8_P003001ADRZ.png": [(1, B1)],  # missing depth map
        "not_a_frame.png": [],  # unparseable
    }
    thermal = {
        "11_P003001ATMW.png": [(1, B2), (2, B1)],
        "12_P003011BTRZ.png": [(1, B1)],
        "13_P003011BTMZ.png": [(1, B1)],
        "14_P003011BTLW.png": [(1, B1)],  # same angle, other zoom: must lose to relax_angle
        "15_P012001ATLW.png": [(1, B1)],
        "16_P012002ATMW.png": [(1, B2)],
    }
    return build_layout(tmp_path / "dfu", meta, depth, thermal, skip_maps=("8_P003001ADRZ.png",))
