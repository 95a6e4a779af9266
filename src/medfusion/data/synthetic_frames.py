"""The demo's frames: the depth and thermal renderers, the wound boxes placed in a frame and a minimal
PNG writer (synthetic.py draws the study and calls these; its docstring describes the signal).

Every function here takes its random generator as an argument, so the bytes written depend only on
the seeds synthetic.py hands out: moving code between modules never changes the demo.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from medfusion.data.names import parse_frame_name

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


def render_depth(boxes, z, rng, dead=False):
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
THERMAL_PALETTE = np.rint(_thermal_colour(np.arange(256) / 255.0)).astype(np.uint8)
_LO, _HI = (100 * v for v in THERMAL_RGB_RANGE_C)
_THERMAL_LUT = np.clip(np.rint((np.arange(65536) - _LO) / (_HI - _LO) * 255), 0, 255).astype(np.uint8)


def render_thermal(boxes, z, rng, room_c: float, skin_c: float):
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


def visit_temperatures(seed: int, visit) -> tuple[float, float]:
    """(room, skin) degC of one visit, from their own stream (the main stream is the first release's)."""
    r = np.random.default_rng([seed, *visit])
    room = float(r.uniform(*ROOM_C))
    return room, room + float(r.uniform(*SKIN_ABOVE_ROOM_C))


def place_boxes(rng, n, wh, avoid=None):
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


def other_choice(rng, options, exclude):
    return str(rng.choice([o for o in options if o != exclude]))


# ----------------------------------------------------------------------------- PNG files


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: Path, img: np.ndarray, palette_rgb: np.ndarray | None = None) -> None:
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



def render_frame(root: Path, seed: int, dead: str | None, job) -> None:
    """Render one job (kind "D" or "T", file name, boxes, latent z, its own seed) and write its two PNGs."""
    kind, name, boxes, z, s = job
    r = np.random.default_rng(s)
    if kind == "D":
        rgb, mp = render_depth(boxes, z, r, dead=name == dead)
        write_png(root / "depth_rgb" / name, np.ascontiguousarray(rgb[:, :, ::-1]))  # BGR -> RGB
        write_png(root / "depth_map" / name, mp)
    else:
        room, skin = visit_temperatures(seed, parse_frame_name(name).visit)
        idx, mp = render_thermal(boxes, z, r, room, skin)
        write_png(root / "thermal_rgb" / name, idx, THERMAL_PALETTE)
        write_png(root / "thermal_map" / name, mp)
