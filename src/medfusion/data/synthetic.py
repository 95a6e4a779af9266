"""The embedded demo dataset: a small synthetic DFU study in exactly the DATA_FORMAT.md layout,
plus a Bayes oracle (`oracle.csv`) that says how well each modality and their fusion can do.

Latent signal. Class y in (I, P, R) is drawn i.i.d. per visit from PRIOR (the real balance);
the ordinal class means are MU = (-1, 0, +1). Three conditionally independent (given y)
latents carry the signal, one per source:

* z_meta ~ N(MU[y], SIGMA["metadata"]) per visit, written noiselessly (4-decimal rounding)
  as `Wound Score` = 12 + 3 z (never missing) and `Wound Centre Temperature Normalized (°C)`
  = 0.3 + 0.6 z (often missing at visit 0, like the real temperatures).
* z_depth ~ N(MU[y], SIGMA["depth"]) per depth frame: the wound blob's colour in depth_rgb and
  its depth below the surrounding skin in depth_map are linear in t = clip((z + 2.5) / 5, 0, 1)
  (a wide pixel range per unit of z, so a small CNN learns it in a few epochs; clipping touches
  < 2% of frames).
* z_thermal ~ N(MU[y], SIGMA["thermal"]) per thermal frame: the wound's temperature minus the
  surrounding skin's in thermal_map, and its colour in thermal_rgb, are linear in t.

Frames vary the way real frames do, independently of the class (so the oracle stays exact):
the camera distance (the skin at 450-1150 mm, the floor 250-600 mm behind it), a slight tilt of
the foot, clusters and a sprinkle of invalid 0 mm pixels and an invalid band of varying width,
room temperature (19-26 °C) and skin temperature (6-9 °C above it) per visit, and in some frames
an unrelated near object (depth) or hot object (thermal) away from the foot. The class signal
lives only in the wound relative to the skin around it, which maps.py's `relative` rule reads;
whole-frame min-max scaling (`minmax_frame`) mixes the nuisances in. One depth map is dead (all
invalid), as a sensor sometimes delivers: the loader skips it by name (`map_box_no_data`).
Every other metadata column is label-free noise, apart from the leaky `Healing Phase` /
`Phase Confidence (%)` columns.

The oracle is computed after the files are written, from `load_dfu` on the generated folder, so
its sample ids and depth->thermal frame matching are exactly the loader's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES
from medfusion.data.names import parse_frame_name

PRIOR = np.array([0.31, 0.56, 0.13])
MU = np.array([-1.0, 0.0, 1.0])
# chosen by Monte Carlo: each single source alone gives QWK ~0.55, all three ~0.79
SIGMA = {"metadata": 0.75, "depth": 0.75, "thermal": 0.75}
ORACLE_MODALITIES = ("metadata", "depth_rgb", "depth_map", "thermal_rgb", "thermal_map")

DEPTH_WH = (1280, 720)  # landscape
THERMAL_WH = (1080, 1440)  # portrait
SKIN_MM = (450, 1150)  # camera -> skin distance per frame
FLOOR_BEHIND_MM = (250, 600)  # floor behind the foot
WOUND_MM = (3.0, 24.0)  # wound depth below the skin: 3 + 24 t mm (inside the +-30 mm window)
ROOM_C, SKIN_ABOVE_ROOM_C = (19.0, 26.0), (6.0, 9.0)  # per visit
WOUND_C = (-3.0, 6.0)  # wound minus skin temperature: -3 + 6 t degC (inside the +-5 degC window)
THERMAL_RGB_RANGE_C = (15.0, 45.0)  # thermal_rgb palette: linear over this fixed range
THERMAL_REF_BOX = (1000, 20, 1060, 80)  # x0, y0, x1, y1 of a hot reference patch (some frames)
P_OBJECT = 0.35  # frames with an unrelated near (depth) / hot (thermal) object
DEAD_DEPTH_FRAME = 2  # index among depth frames of the one all-invalid depth map
VIEWS = [(d, a, z) for d in "BA" for a in "RML" for z in "ZW"]


def _t(z: float) -> float:
    return float(np.clip((z + 2.5) / 5.0, 0.0, 1.0))


def posterior(zs, sigmas) -> np.ndarray:
    """P(y | z_1..z_k) for independent Gaussian observations; zs: list of (N,) arrays."""
    lp = np.tile(np.log(PRIOR), (len(zs[0]), 1))
    for z, s in zip(zs, sigmas):
        lp = lp - 0.5 * ((np.asarray(z, float)[:, None] - MU[None, :]) / s) ** 2
    lp -= lp.max(axis=1, keepdims=True)
    p = np.exp(lp)
    return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- rendering


def _coarse_noise(rng, h, w, amp, block=4) -> np.ndarray:
    n = rng.integers(-amp, amp + 1, size=(h // block + 1, w // block + 1)).astype(np.float64)
    return np.kron(n, np.ones((block, block)))[:h, :w]


def _blob_mask(box):
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    return ((yy - cy) / (0.42 * h)) ** 2 + ((xx - cx) / (0.42 * w)) ** 2 <= 1.0


def _foot_region(box, wh):
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    return (max(0, x0 - bw), max(0, y0 - bh), min(wh[0], x1 + bw), min(wh[1], y1 + bh))


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1])


def _objects(rng, boxes, wh, n_max=2):
    """Unrelated objects (40-260 px) in some frames, never over a foot region (nor the crop or its ring)."""
    if rng.random() >= P_OBJECT:
        return []
    feet, out = [_foot_region(b, wh) for b in boxes], []
    for _ in range(30):
        if len(out) == n_max:
            break
        ow, oh = int(rng.integers(40, 261)), int(rng.integers(40, 261))
        x0, y0 = int(rng.integers(0, wh[0] - ow)), int(rng.integers(0, wh[1] - oh))
        o = (x0, y0, x0 + ow, y0 + oh)
        if not any(_overlaps(o, f) for f in feet + out):
            out.append(o)
    return out


def _invalid_mask(rng, h, w) -> np.ndarray:
    """Invalid depth pixels: a left band of varying width, clusters, and a sprinkle."""
    bad = rng.random((h // 4 + 1, w // 4 + 1)) < rng.uniform(0.002, 0.01)  # 4x4 px clusters
    bad = np.kron(bad, np.ones((4, 4), bool))[:h, :w]
    bad |= rng.random((h, w)) < rng.uniform(0.001, 0.004)
    bad[:, : int(rng.integers(0, 41))] = True
    return bad


def _tilted(box, wh, level: float, rng) -> np.ndarray:
    """A foot surface at `level` mm at the box centre, tilted by up to 0.02 mm/px."""
    fx0, fy0, fx1, fy1 = _foot_region(box, wh)
    yy, xx = np.mgrid[fy0:fy1, fx0:fx1]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    gx, gy = rng.uniform(-0.02, 0.02, 2)
    return level + gx * (xx - cx) + gy * (yy - cy)


def _render_depth(boxes, z, rng, dead=False):
    """depth_rgb (BGR uint8) and depth_map (uint16 mm) of one frame."""
    w, h = DEPTH_WH
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[:] = (95, 100, 90)  # BGR floor
    skin = float(rng.uniform(*SKIN_MM))
    dm = np.full((h, w), skin + rng.uniform(*FLOOR_BEHIND_MM), np.float64)
    t = _t(z)
    wound_bgr = np.array([30 + 110 * t, 30 + 130 * t, 80 + 170 * t])
    for box in boxes:
        fx0, fy0, fx1, fy1 = _foot_region(box, DEPTH_WH)
        rgb[fy0:fy1, fx0:fx1] = (140, 160, 205)  # skin
        dm[fy0:fy1, fx0:fx1] = _tilted(box, DEPTH_WH, skin, rng)
    for box in boxes:
        x0, y0, x1, y1 = box
        m = _blob_mask(box)
        nz = _coarse_noise(rng, y1 - y0, x1 - x0, 3)
        patch = rgb[y0:y1, x0:x1]
        patch[m] = np.clip(wound_bgr[None, :] + nz[m][:, None], 0, 255).astype(np.uint8)
        dpatch = dm[y0:y1, x0:x1]
        dpatch[m] += WOUND_MM[0] + WOUND_MM[1] * t + 0.7 * nz[m]  # further from the camera than the skin
    for ox0, oy0, ox1, oy1 in _objects(rng, boxes, DEPTH_WH):  # a hand, a tool: nearer than the foot
        dm[oy0:oy1, ox0:ox1] = skin - rng.uniform(150, 350)
        rgb[oy0:oy1, ox0:ox1] = (60, 60, 70)
    dm = np.rint(dm).astype(np.uint16)
    dm[_invalid_mask(rng, h, w)] = 0
    if dead:
        dm[:] = 0
    return rgb, dm


def _thermal_colour(s) -> np.ndarray:
    """Linear false-colour map of s in [0, 1] -> RGB float."""
    s = np.asarray(s, float)[..., None]
    return np.concatenate([30 + 220 * s, 20 + 120 * s, 200 - 150 * s], axis=-1)


# thermal_rgb is a palette PNG, as thermal cameras export it: 256 false colours, linear in temperature
_THERMAL_PALETTE = np.rint(_thermal_colour(np.arange(256) / 255.0)).astype(np.uint8)
_LO, _HI = (100 * v for v in THERMAL_RGB_RANGE_C)
_THERMAL_LUT = np.clip(np.rint((np.arange(65536) - _LO) / (_HI - _LO) * 255), 0, 255).astype(np.uint8)


def _render_thermal(boxes, z, rng, room_c: float, skin_c: float):
    """thermal_rgb palette indices (uint8) and thermal_map (uint16 centi-degrees) of one frame."""
    w, h = THERMAL_WH
    tm = np.full((h, w), 100 * (room_c + rng.normal(0, 0.2)), np.float64)
    skin = 100 * (skin_c + rng.normal(0, 0.2))
    wound = 100 * (WOUND_C[0] + WOUND_C[1] * _t(z))
    for box in boxes:
        fx0, fy0, fx1, fy1 = _foot_region(box, THERMAL_WH)
        tm[fy0:fy1, fx0:fx1] = _tilted(box, THERMAL_WH, skin, rng)
    for box in boxes:
        x0, y0, x1, y1 = box
        m = _blob_mask(box)
        nz = _coarse_noise(rng, y1 - y0, x1 - x0, 3)
        patch = tm[y0:y1, x0:x1]
        patch[m] += wound + 6 * nz[m]
    for ox0, oy0, ox1, oy1 in _objects(rng, boxes, THERMAL_WH):  # a lamp, a cup, a hand
        tm[oy0:oy1, ox0:ox1] = 100 * rng.uniform(36, 55)
    if rng.random() < 0.5:
        rx0, ry0, rx1, ry1 = THERMAL_REF_BOX
        tm[ry0:ry1, rx0:rx1] = 3900
    tm = np.rint(tm).astype(np.uint16)
    return _THERMAL_LUT[tm], tm


def _visit_temperatures(seed: int, visit) -> tuple[float, float]:
    """(room, skin) degC of one visit, from their own stream (the main stream is the first release's)."""
    r = np.random.default_rng([seed, *visit])
    room = float(r.uniform(*ROOM_C))
    return room, room + float(r.uniform(*SKIN_ABOVE_ROOM_C))


def _place_boxes(rng, n, wh, avoid=None):
    """n non-overlapping boxes 40-200 px; about 1 in 12 touches a frame edge."""
    w, h = wh
    boxes = []
    for _ in range(200):
        if len(boxes) == n:
            break
        bw, bh = int(rng.integers(40, 201)), int(rng.integers(40, 201))
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        if rng.random() < 0.08:
            edge = int(rng.integers(4))
            x0, y0 = [(0, y0), (w - bw, y0), (x0, 0), (x0, h - bh)][edge]
        b = (x0, y0, x0 + bw, y0 + bh)
        pads = [_foot_region(o, wh) for o in boxes] + ([avoid] if avoid else [])
        fb = _foot_region(b, wh)
        if any(_overlaps(fb, o) for o in pads):
            continue
        boxes.append(b)
    return boxes


def _other(rng, options, exclude):
    return str(rng.choice([o for o in options if o != exclude]))


# ----------------------------------------------------------------------------- metadata

_FLAGS = (
    "Bunion", "Claw", "Hammer", "Charcot Arthropathy", "Flat Foot", "Abnormal Nails", "Neuropathy",
    "Ischemia", "Hypertension", "Dyslipidemia", "Erythema at Peri-ulcer", "Edema at Peri-ulcer",
    "Pale Colour at Peri-ulcer", "Maceration at Peri-ulcer", "Foot Callus", "Infection",
    "Offloading: Total Contact Cast", "Offloading: Therapeutic Shoes", "Offloading: Crutches",
    "Offloading: Wheelchair",
)
_PATIENT_FLAGS = _FLAGS[:10]
_LOC_GROUPED = ["Hallux", "hallux", "Toes", "toes", "Middle", "middle", "Heel", "heel", "Ankle"]
_LOC_TEXT = ["plantar hallux", "dorsal hallux", "2nd toe tip", "3rd toe", "5th toe lateral", "1st metatarsal head",
             "midfoot plantar", "lateral midfoot", "posterior heel", "medial heel", "lateral malleolus",
             "medial malleolus"]


def _maybe(rng, value, p_missing):
    return np.nan if rng.random() < p_missing else value


def _patient_fields(rng):
    f = {
        "Age": _maybe(rng, int(rng.integers(35, 86)), 0.03),
        "Sex (F:0, M:1)": str(rng.choice(["F", "M"], p=[0.3, 0.7])),
        "Weight (Kg)": _maybe(rng, round(float(rng.normal(85, 15)), 1), 0.10),
        "Height (cm)": _maybe(rng, int(rng.normal(170, 9)), 0.15),
        "Smoking": int(rng.integers(0, 4)),
        "Alcohol Consumption": int(rng.integers(0, 4)),
        "Habits Score": _maybe(rng, int(rng.integers(0, 7)), 0.25),
    }
    for c in _PATIENT_FLAGS:
        f[c] = _maybe(rng, int(rng.random() < 0.25), 0.05)
    return f


def _wound_fields(rng):
    return {
        "Location": str(rng.choice(_LOC_TEXT)),
        "Side (Left:0, Right:1)": str(rng.choice(["Left", "Right"])),
        "Foot Aspect": str(rng.choice(["Dorsal", "Plantar", "Medial", "Lateral"])),
        "Location Grouped (Hallux:1,Toes,Middle,Heel,Ankle:5)": str(rng.choice(_LOC_GROUPED)),
        "Onset (Days)": _maybe(rng, int(rng.integers(7, 400)), 0.25),
    }


def _visit_fields(rng, appt, z_meta):
    f = {}
    temps_missing = rng.random() < (0.6 if appt == 0 else 0.08)
    intact = round(float(rng.normal(31.0, 1.2)), 2)
    wc_norm = round(0.3 + 0.6 * z_meta, 4)
    peri_norm = round(float(rng.normal(0.5, 0.8)), 2)
    f["Wound Centre Temperature (°C)"] = np.nan if temps_missing else round(intact + wc_norm, 2)
    f["Peri-Ulcer Temperature (°C)"] = np.nan if temps_missing else round(intact + peri_norm, 2)
    f["Intact Skin Temperature (°C)"] = np.nan if temps_missing else intact
    f["Wound Centre Temperature Normalized (°C)"] = np.nan if temps_missing else wc_norm
    f["Peri-Ulcer Temperature Normalized (°C)"] = np.nan if temps_missing else peri_norm
    f["Pain Level"] = _maybe(rng, int(rng.integers(0, 11)), 0.2)
    pain = str(rng.choice(["none", "burning", "stabbing", "throbbing", "aching"]))
    f["Type of Pain"] = pain
    f["Type of Pain2"] = str(rng.choice(["tingling", "numbness"])) if rng.random() < 0.1 else np.nan
    f["Type of Pain Grouped"] = {"none": "None", "burning": "Neuropathic", "stabbing": "Neuropathic"}.get(pain, "Nociceptive")
    f["Clinical Score"] = _maybe(rng, int(rng.integers(0, 15)), 0.1)
    f["Foot Score"] = _maybe(rng, int(rng.integers(0, 10)), 0.1)
    f["Wound Score"] = round(12.0 + 3.0 * z_meta, 4)  # never missing
    f["Leg Score"] = _maybe(rng, int(rng.integers(0, 8)), 0.1)
    f["Offloading Score"] = _maybe(rng, int(rng.integers(0, 5)), 0.25)
    for c in _FLAGS[10:]:
        f[c] = _maybe(rng, int(rng.random() < 0.3), 0.05)
    f["Wound Tunneling"] = int(rng.integers(0, 4))
    amount = int(rng.integers(0, 4))
    f["Exudate Amount (None:0,Minor,Medium,Severe:3)"] = amount
    f["Exudate Appearance (Serous:1,Haemoserous,Bloody,Thick:4)"] = (
        np.nan if amount == 0 else str(rng.choice(["Serous", "Haemoserous", "Bloody", "Thick"])))
    f["Odor"] = _maybe(rng, str(rng.choice(["None", "Mild", "Strong"], p=[0.6, 0.3, 0.1])), 0.1)
    f["Dressing Grouped"] = str(rng.choice(["Foam", "Alginate", "Hydrocolloid", "Gauze", "Silver"]))
    return f


_COLUMN_ORDER = [
    "ID", "Patient#", "Appt#", "DFU#", "Appt Days", "Healing Phase Abs", "Healing Phase", "Phase Confidence (%)",
    "Age", "Sex (F:0, M:1)", "Weight (Kg)", "Height (cm)", "Smoking", "Alcohol Consumption", "Habits Score",
    "Location", "Side (Left:0, Right:1)", "Foot Aspect", "Location Grouped (Hallux:1,Toes,Middle,Heel,Ankle:5)",
    "Onset (Days)",
]


# ----------------------------------------------------------------------------- generation


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def _write_png(path: Path, img: np.ndarray, palette_rgb: np.ndarray | None = None) -> None:
    """Minimal PNG writer (zlib releases the GIL, so frames are written in parallel threads).

    uint8 HxWx3 RGB -> colour type 2; uint16 HxW -> 16-bit grey; uint8 HxW + palette -> colour
    type 3 (OpenCV decodes it to 3-channel colour). Filter 0 on every row.
    """
    h, w = img.shape[:2]
    if palette_rgb is not None:
        ihdr, rows, plte = (8, 3), img.reshape(h, w), _png_chunk(b"PLTE", palette_rgb.astype(np.uint8).tobytes())
    elif img.dtype == np.uint16:
        ihdr, rows, plte = (16, 0), img.astype(">u2").view(np.uint8).reshape(h, 2 * w), b""
    else:
        ihdr, rows, plte = (8, 2), img.reshape(h, 3 * w), b""
    raw = np.zeros((h, rows.shape[1] + 1), np.uint8)
    raw[:, 1:] = rows
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, ihdr[0], ihdr[1], 0, 0, 0))
        + plte
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 9))
        + _png_chunk(b"IEND", b"")
    )


def _generate_into(root: Path, seed: int, n_patients: int, log: logging.Logger) -> dict:
    rng = np.random.default_rng(seed)
    for folder in ("depth_rgb", "depth_map", "thermal_rgb", "thermal_map"):
        (root / folder).mkdir(parents=True)
    patients = np.sort(rng.choice(np.arange(1, 300), size=n_patients, replace=False))
    meta_rows, depth_box_rows, thermal_box_rows = [], [], []
    z_meta, z_depth, z_thermal = {}, {}, {}
    jobs = []  # (kind, name, boxes, z, seed) rendered later
    forced = ["exact", "relax_angle", "relax_zoom", "relax_debridement", "none"]
    used_names = set()

    def frame_name(p, a, d, view, cam):
        while True:
            name = f"{int(rng.integers(1, 1000))}_P{p:03d}{a:02d}{d}{view[0]}{cam}{view[1]}{view[2]}.png"
            if name not in used_names:
                used_names.add(name)
                return name

    for p in patients:
        p = int(p)
        pf = _patient_fields(rng)
        n_wounds = 1 if rng.random() < 0.8 else 2
        n_visits = int(rng.integers(2, 5))
        wounds = {d: _wound_fields(rng) for d in range(1, n_wounds + 1)}
        days = 0
        for a in range(n_visits):
            days = 0 if a == 0 else days + int(rng.integers(10, 45))
            for d in range(1, n_wounds + 1):
                y = int(rng.choice(3, p=PRIOR))
                zm = round(float(rng.normal(MU[y], SIGMA["metadata"])), 4)
                z_meta[(p, a, d)] = zm
                row = {
                    "Patient#": p, "Appt#": a, "DFU#": d, "Appt Days": days,
                    "Healing Phase Abs": CLASSES[y],
                    "Healing Phase": CLASSES[y] + str(rng.choice(["-", "", "+"])),
                    "Phase Confidence (%)": int(rng.integers(50, 101)),
                    **pf, **wounds[d], **_visit_fields(rng, a, zm),
                }
                meta_rows.append(row)
                # depth views of this visit
                n_views = 1 if rng.random() < 0.75 else 2
                views = [VIEWS[i] for i in rng.choice(len(VIEWS), size=n_views, replace=False)]
                thermal_views = []
                for view in views:
                    if n_views == 1:
                        scen = forced.pop(0) if forced else str(rng.choice(
                            ["exact", "relax_angle", "relax_zoom", "relax_debridement", "none"],
                            p=[0.80, 0.07, 0.06, 0.06, 0.01]))
                    else:
                        scen = "exact" if rng.random() < 0.85 else "skip"
                    deb, ang, zoom = view
                    if scen == "exact":
                        tv = view
                    elif scen == "relax_angle":
                        tv = (deb, _other(rng, "RML", ang), zoom)
                    elif scen == "relax_zoom":
                        tv = (deb, str(rng.choice(list("RML"))), _other(rng, "ZW", zoom))
                    elif scen == "relax_debridement":
                        tv = (_other(rng, "BA", deb), str(rng.choice(list("RML"))), str(rng.choice(list("ZW")))) 
                    else:
                        tv = None
                    n_boxes = 2 if rng.random() < 0.08 else 1
                    dname = frame_name(p, a, d, view, "D")
                    dboxes = _place_boxes(rng, n_boxes, DEPTH_WH)
                    z_depth[dname] = float(rng.normal(MU[y], SIGMA["depth"]))
                    jobs.append(("D", dname, dboxes, z_depth[dname], int(rng.integers(2**31))))
                    if rng.random() >= 0.01:  # a rare depth frame has no box row
                        for k, b in enumerate(dboxes, start=1):
                            depth_box_rows.append((dname, str(p), a, d, view[0], "D", view[1] + view[2], k, *b))
                    if tv is not None and tv not in thermal_views:
                        thermal_views.append(tv)
                        tname = frame_name(p, a, d, tv, "T")
                        tboxes = _place_boxes(rng, n_boxes if tv == view else 1, THERMAL_WH, avoid=THERMAL_REF_BOX)
                        z_thermal[tname] = float(rng.normal(MU[y], SIGMA["thermal"]))
                        jobs.append(("T", tname, tboxes, z_thermal[tname], int(rng.integers(2**31))))
                        for k, b in enumerate(tboxes, start=1):
                            thermal_box_rows.append((tname, f"{p:03d}", a, d, tv[0], "T", tv[1] + tv[2], k, *b))
                if not thermal_views and n_views == 2:  # keep the visit usable
                    tv = (views[0][0], _other(rng, "RML", views[0][1]), views[0][2])
                    tname = frame_name(p, a, d, tv, "T")
                    tboxes = _place_boxes(rng, 1, THERMAL_WH, avoid=THERMAL_REF_BOX)
                    z_thermal[tname] = float(rng.normal(MU[y], SIGMA["thermal"]))
                    jobs.append(("T", tname, tboxes, z_thermal[tname], int(rng.integers(2**31))))
                    thermal_box_rows.append((tname, f"{p:03d}", a, d, tv[0], "T", tv[1] + tv[2], 1, *tboxes[0]))

    # two duplicated visit rows, as in the real data (the loader keeps the first)
    for i in rng.choice(len(meta_rows), size=2, replace=False):
        meta_rows.append(dict(meta_rows[int(i)]))
    meta = pd.DataFrame(meta_rows)
    meta.insert(0, "ID", np.arange(1, len(meta) + 1))
    cols = _COLUMN_ORDER + [c for c in meta.columns if c not in _COLUMN_ORDER]
    meta[cols].to_csv(root / "metadata.csv", index=False, encoding="utf-8-sig", lineterminator="\n")
    box_cols = ["Filename", "Patient#", "Appt#", "DFU#", "DebriStat", "Camera", "Angle", "Bounding Box Number",
                "Xmin", "Ymin", "Xmax", "Ymax"]
    pd.DataFrame(depth_box_rows, columns=box_cols).to_csv(root / "bounding_boxes_depth.csv", index=False,
                                                          lineterminator="\n")
    pd.DataFrame(thermal_box_rows, columns=box_cols).to_csv(root / "bounding_boxes_thermal.csv", index=False,
                                                            lineterminator="\n")

    depth_names = [j[1] for j in jobs if j[0] == "D"]
    dead = depth_names[DEAD_DEPTH_FRAME] if len(depth_names) > DEAD_DEPTH_FRAME else None

    def render(job):
        kind, name, boxes, z, s = job
        r = np.random.default_rng(s)
        if kind == "D":
            rgb, mp = _render_depth(boxes, z, r, dead=name == dead)
            _write_png(root / "depth_rgb" / name, np.ascontiguousarray(rgb[:, :, ::-1]))  # BGR -> RGB
            _write_png(root / "depth_map" / name, mp)
        else:
            room, skin = _visit_temperatures(seed, parse_frame_name(name).visit)
            idx, mp = _render_thermal(boxes, z, r, room, skin)
            _write_png(root / "thermal_rgb" / name, idx, _THERMAL_PALETTE)
            _write_png(root / "thermal_map" / name, mp)

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(render, jobs))
    return {"z_meta": z_meta, "z_depth": z_depth, "z_thermal": z_thermal}


def _write_oracle(root: Path, latents: dict) -> pd.DataFrame:
    from medfusion.data.dfu import load_dfu, parse_frame_name

    quiet = logging.getLogger("medfusion.data.synthetic.oracle")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    man = load_dfu(root, DataConfig(), quiet)
    s = man.samples
    dnames = [Path(p).name for p in s["depth_rgb_path"]]
    tnames = [Path(p).name for p in s["thermal_rgb_path"]]
    zm = np.array([latents["z_meta"][parse_frame_name(n).visit] for n in dnames])
    zd = np.array([latents["z_depth"][n] for n in dnames])
    zt = np.array([latents["z_thermal"][n] for n in tnames])
    sm, sd, st = SIGMA["metadata"], SIGMA["depth"], SIGMA["thermal"]
    out = pd.DataFrame({"sample_id": s["sample_id"].to_numpy(), "label": s["label"].to_numpy()})
    parts = {
        "": posterior([zm, zd, zt], [sm, sd, st]),
        "metadata_": posterior([zm], [sm]),
        "depth_rgb_": posterior([zd], [sd]),
        "depth_map_": posterior([zd], [sd]),
        "thermal_rgb_": posterior([zt], [st]),
        "thermal_map_": posterior([zt], [st]),
    }
    for prefix, p in parts.items():
        for j, c in enumerate(CLASSES):
            out[f"{prefix}p_{c}"] = p[:, j]
    out.to_csv(root / "oracle.csv", index=False, float_format="%.6f", lineterminator="\n")
    return out


# bump when the generated data changes: 2 = frames in physical units varying like real ones (2026-12)
DEMO_GENERATOR = 2
DEMO_STAMP = "demo.json"


def generate_demo(out_dir, seed: int = 7, n_patients: int = 120, log: logging.Logger | None = None) -> Path:
    """Write the demo dataset (DATA_FORMAT.md layout + oracle.csv) into out_dir, atomically.

    Generates into a temporary folder next to out_dir and renames it, so an interrupted run never
    leaves a half dataset. Refuses a non-empty out_dir.
    """
    log = log or logging.getLogger("medfusion.data.synthetic")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} exists and is not empty; the demo dataset is only generated into "
                              "a new or empty folder (delete it, or set data.demo_dir to another folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        latents = _generate_into(tmp, seed, n_patients, log)
        _write_oracle(tmp, latents)
        (tmp / DEMO_STAMP).write_text(json.dumps(_demo_stamp(seed, n_patients)) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("demo dataset (seed %d, %d patients) written to %s: %.1f MB in %.1fs",
             seed, n_patients, out, size / 1e6, time.time() - t0)
    return out


def _demo_stamp(seed: int, n_patients: int) -> dict:
    return {"generator": DEMO_GENERATOR, "seed": int(seed), "n_patients": int(n_patients)}


def ensure_demo(out_dir, seed: int = 7, n_patients: int = 120, log: logging.Logger | None = None) -> Path:
    """Generate the demo into out_dir only when out_dir/metadata.csv is missing; never overwrites.

    A folder made by another generator version or with other settings (an older checkout's demo) is
    used as it is, with a warning that says how to get the current one.
    """
    log = log or logging.getLogger("medfusion.data.synthetic")
    out = Path(out_dir)
    if (out / "metadata.csv").is_file():
        try:
            found = json.loads((out / DEMO_STAMP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != _demo_stamp(seed, n_patients):
            log.warning("demo dataset at %s was made %s, not by this medfusion's demo generator %s: it is used as it "
                        "is and its scores will differ from docs/benchmarks.md; delete the folder to regenerate it",
                        out, f"with {found}" if found else "by an older medfusion (no demo.json)",
                        _demo_stamp(seed, n_patients))
        else:
            log.info("demo dataset found at %s (not regenerated)", out)
        return out
    log.info("generating the demo dataset into %s (seed %d, %d patients)", out, seed, n_patients)
    return generate_demo(out, seed=seed, n_patients=n_patients, log=log)
