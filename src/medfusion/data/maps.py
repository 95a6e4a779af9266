"""16-bit depth and thermal maps in physical units: decoded as numbers, cropped first, then normalised.

Why: a map's grey level must mean the same physical quantity in every frame. Scaling a whole frame
by its minimum and maximum (the first release) made a crop depend on invalid 0 mm pixels, the
floor, a hot lamp or the camera distance: things outside the wound that carry no class signal.

Rules (`data.maps.<depth_map|thermal_map>.rule`; README "Map rules"). `v = raw * scale` is the
physical value (depth: mm, default scale 1; thermal: degC, default scale 0.01 = centi-degrees).

* `relative` (default): `skin` = median of the valid pixels in the skin ring (the box enlarged by
  `ring` x its width / height on each side, clipped to the frame, minus the box itself);
  `out = 1 + rint((v - skin + window) / (2 window) * 254)`, clipped to [1, 255]. The skin is 128,
  skin - window is 1, skin + window is 255. The difference is taken in raw integer steps before
  scaling, so adding a constant to every valid pixel leaves the crop bit-for-bit unchanged.
* `absolute`: `out = 1 + rint((v - lo) / (hi - lo) * 254)`, clipped, with [lo, hi] = `absolute_range`.
* `minmax_frame`: the first release's whole-frame min-max (invalid pixels included), kept only to
  compare against; it breaks the rule below.
* NO_DATA (0): a pixel whose raw value is `invalid_value` (depth: 0) under `relative` / `absolute`;
  it is never read as 0 mm. resize_pad's padding is 0 as well: "no data" either way.

Nothing outside the crop (box + data.box_margin) and its ring is read by `relative` / `absolute`.
8-bit maps (already rendered, as the reference study stored them) keep images.read_frame's path.

Skips (decided when the manifest is built, for every rule, so changing the rule never changes the
samples): MAP_SKIP_REASONS. A map box is also mapped into the map frame here when the map's size
differs from its colour frame (`map_box`): by the size ratio, then the configured box transform.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import cv2
import numpy as np

from medfusion.config import DepthMapConfig, MapConfig, MapsConfig, ThermalMapConfig
from medfusion.data.names import N_EXAMPLES, Skips

NO_DATA = 0  # output value of an invalid pixel
MAP_MODALITIES = ("depth_map", "thermal_map")
# why a map box cannot be normalised (each is a named, counted skip; docs/data_problems.md)
MAP_SKIP_REASONS = ("map_box_outside", "map_box_no_data", "map_ring_no_data", "map_constant")


def read_map(path) -> np.ndarray | None:
    """The raw 2-D uint16 values of a single-channel 16-bit map; None for anything else (8-bit path)."""
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"image file {str(path)!r} could not be decoded by OpenCV (corrupt or not an image)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img if img.ndim == 2 and img.dtype == np.uint16 else None


def _grow(box, fx: float, fy: float, wh) -> tuple[int, int, int, int]:
    """box enlarged by fx x width / fy x height per side (floor / ceil), clipped to the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    dx, dy = fx * (x1 - x0), fy * (y1 - y0)
    return (max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy)),
            min(wh[0], math.ceil(x1 + dx)), min(wh[1], math.ceil(y1 + dy)))


def _regions(raw: np.ndarray, box, margin: float, mc: MapConfig):
    """(crop, box, ring) windows in frame pixels; the ring is at least 1 px wide."""
    h, w = raw.shape
    bw, bh = box[2] - box[0], box[3] - box[1]
    rx, ry = max(mc.ring, 1.0 / max(bw, 1)), max(mc.ring, 1.0 / max(bh, 1))
    return _grow(box, margin, margin, (w, h)), _grow(box, 0, 0, (w, h)), _grow(box, rx, ry, (w, h))


def _valid(a: np.ndarray, mc: MapConfig) -> np.ndarray:
    return np.ones(a.shape, bool) if mc.invalid_value is None else a != mc.invalid_value


def _ring_values(raw, box_w, ring_w, mc) -> np.ndarray:
    x0, y0, x1, y1 = ring_w
    a = raw[y0:y1, x0:x1]
    keep = _valid(a, mc)
    bx0, by0, bx1, by1 = box_w
    keep[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] = False  # the ring excludes the box
    return a[keep]


def map_problem(raw: np.ndarray, box, margin: float, mc: MapConfig) -> str | None:
    """The MAP_SKIP_REASONS entry that stops this box, or None. Reads only the crop and its ring."""
    h, w = raw.shape
    if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
        return "map_box_outside"
    crop_w, box_w, ring_w = _regions(raw, box, margin, mc)
    b = raw[box_w[1]:box_w[3], box_w[0]:box_w[2]]
    if not _valid(b, mc).any():
        return "map_box_no_data"
    ring = _ring_values(raw, box_w, ring_w, mc)
    if ring.size == 0:
        return "map_ring_no_data"
    x0, y0 = min(crop_w[0], ring_w[0]), min(crop_w[1], ring_w[1])
    x1, y1 = max(crop_w[2], ring_w[2]), max(crop_w[3], ring_w[3])
    area = raw[y0:y1, x0:x1]
    vals = area[_valid(area, mc)]
    return "map_constant" if vals.min() == vals.max() else None


def minmax_u8(g: np.ndarray) -> np.ndarray:
    """The first release's rule: whole-frame min-max to [0, 255] (a constant frame -> 0)."""
    g = g.astype(np.float64)
    lo, hi = float(g.min()), float(g.max())
    if hi <= lo:
        return np.zeros(g.shape, np.uint8)
    return np.rint((g - lo) / (hi - lo) * 255.0).astype(np.uint8)


def _to_levels(x: np.ndarray) -> np.ndarray:
    """x in [0, 1] (a position in the window) -> 1..255, clipped."""
    return np.clip(1.0 + np.rint(x * 254.0), 1, 255).astype(np.uint8)


def map_crop(raw: np.ndarray, box, margin: float, mc: MapConfig) -> np.ndarray:
    """The uint8 2-D crop of a raw map under `mc.rule`; ValueError naming the reason if it has none."""
    problem = map_problem(raw, box, margin, mc)
    if problem:
        raise ValueError(f"the map cannot be normalised around box {tuple(box)} ({problem}, "
                         "docs/data_problems.md)")
    crop_w, box_w, ring_w = _regions(raw, box, margin, mc)
    x0, y0, x1, y1 = crop_w
    if mc.rule == "minmax_frame":
        return minmax_u8(raw)[y0:y1, x0:x1]
    a = raw[y0:y1, x0:x1].astype(np.float64)
    if mc.rule == "relative":
        skin = float(np.median(_ring_values(raw, box_w, ring_w, mc)))
        pos = ((a - skin) * mc.scale + mc.window) / (2.0 * mc.window)
    else:  # absolute
        lo, hi = (float(v) for v in mc.absolute_range)
        pos = (a * mc.scale - lo) / (hi - lo)
    out = _to_levels(pos)
    out[~_valid(raw[y0:y1, x0:x1], mc)] = NO_DATA
    return out


# ----------------------------------------------------------------------------- boxes in map frames


def map_box(box, rgb_wh, map_wh, mc: MapConfig) -> tuple[int, int, int, int]:
    """A colour-frame box in the map frame: size ratio, then scale about the map centre, then margin px."""
    sx, sy = map_wh[0] / rgb_wh[0], map_wh[1] / rgb_wh[1]
    cx, cy = map_wh[0] / 2.0, map_wh[1] / 2.0
    kx, ky = (float(v) for v in mc.box_scale)
    x0, x1 = (cx + (v * sx - cx) * kx for v in (box[0], box[2]))
    y0, y1 = (cy + (v * sy - cy) * ky for v in (box[1], box[3]))
    m = mc.box_margin_px
    eps = 1e-9  # 10 * 0.5 is 5, not 4.999...
    return (math.floor(x0 - m + eps), math.floor(y0 - m + eps), math.ceil(x1 + m - eps), math.ceil(y1 + m - eps))


def maps_from_report(report: dict) -> MapsConfig:
    """The MapsConfig that load_dfu recorded in manifest.report["maps"] (defaults when absent)."""
    d = (report or {}).get("maps")
    if not d:
        return MapsConfig()
    conv = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d["depth_map"].items()}
    tconv = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d["thermal_map"].items()}
    return MapsConfig(depth_map=DepthMapConfig(**conv), thermal_map=ThermalMapConfig(**tconv))


class MapFrames:
    """Map boxes for the manifest: mapped into each map frame, checked against the decoded map, counted."""

    def __init__(self, maps: MapsConfig, margin: float):
        self.maps, self.margin = maps, margin
        self.boxes: dict[tuple, tuple] = {}  # (modality, rgb file name, box number) -> box in the map frame
        self.mapping = {m: Counter() for m in MAP_MODALITIES}
        self.examples = {m: {} for m in MAP_MODALITIES}
        self.dropped = {m: Skips() for m in MAP_MODALITIES}
        self.undecodable: dict[str, str] = {}  # map file -> why it cannot be decoded (data/check.py names it)

    def _note(self, modality: str, rgb_wh, map_wh) -> None:
        mc = getattr(self.maps, modality)
        kind = "same_size" if tuple(rgb_wh) == tuple(map_wh) else "size_ratio"
        if tuple(mc.box_scale) != (1.0, 1.0) or mc.box_margin_px:
            kind += "+transform"
        self.mapping[modality][kind] += 1
        self.examples[modality].setdefault(kind, "{}x{} -> {}x{}".format(*rgb_wh, *map_wh))

    def keep(self, modality: str, name: str, map_path, boxes: dict, rgb_wh, map_wh) -> tuple[dict, str | None]:
        """(boxes whose map is usable, the first reason when none is). An undecodable map is recorded in
        `undecodable`; the data check names it as a problem before a search starts."""
        mc = getattr(self.maps, modality)
        mapped = {n: map_box(b, rgb_wh, map_wh, mc) for n, b in boxes.items()}
        try:
            raw = read_map(map_path)
        except (OSError, ValueError) as exc:
            raw = None
            self.undecodable.setdefault(str(map_path), str(exc))
        kept, first = {}, None
        for n in sorted(boxes):
            if raw is None:  # 8-bit map (or undecodable): only the box must meet the frame
                x0, y0, x1, y1 = mapped[n]
                outside = x1 <= 0 or y1 <= 0 or x0 >= map_wh[0] or y0 >= map_wh[1]
                problem = "map_box_outside" if outside else None
            else:
                problem = map_problem(raw, mapped[n], self.margin, mc)
            if problem:
                self.dropped[modality].add(problem, f"{name}#{n} (map box {list(mapped[n])})")
                first = first or problem
                continue
            self._note(modality, rgb_wh, map_wh)
            self.boxes[(modality, name, n)] = mapped[n]
            kept[n] = boxes[n]
        return kept, (None if kept else first)

    def box(self, modality: str, name: str, num: int) -> tuple:
        return self.boxes[(modality, name, num)]

    def report(self, log: logging.Logger) -> dict:
        """Counts of every box mapping and every dropped map box, logged."""
        out = {}
        for m in MAP_MODALITIES:
            for kind, n in sorted(self.mapping[m].items()):
                log.info("%s boxes mapped from the colour frame (%s): %d, e.g. %s", m, kind, n, self.examples[m][kind])
            for reason, e in self.dropped[m].data.items():
                log.warning("%s boxes dropped (%s): %d, e.g. %s", m, reason, e["count"], e["examples"][:N_EXAMPLES])
            out[m] = {"mapping": dict(self.mapping[m]), "mapping_examples": dict(self.examples[m]),
                      "dropped": {k: v for k, v in self.dropped[m].data.items()},
                      "rule": getattr(self.maps, m).rule}
        return out
