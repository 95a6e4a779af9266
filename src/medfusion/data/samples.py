"""Frames joined into samples: usable thermal candidates per visit, the view-matching rules, one row per
depth box (dfu.py's module docstring states the choices; this module carries them out).

A frame is usable when it has a valid box row, a map file of the same name, readable rgb and map files
(header probe), a box at least partly inside both and a map box that can be normalised; the first check
it fails is its skip reason (dfu.SKIP_REASONS order), counted in the caller's `Skips`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from medfusion.data.frames import FrameChecks
from medfusion.data.manifest import BOX_FIELDS
from medfusion.data.maps import MapFrames
from medfusion.data.matching import CaseLookup, CaseMatches
from medfusion.data.names import FrameKey, Skips

MATCH_RULES = ("exact", "relax_angle", "relax_zoom", "relax_debridement")


def match_thermal(depth: FrameKey, candidates: list[tuple[str, FrameKey]]):
    """First candidate (sorted by file name) under the first rule that has one."""
    rules = (
        ("exact", lambda t: t.view == depth.view),
        ("relax_angle", lambda t: t.debridement == depth.debridement and t.zoom == depth.zoom),
        ("relax_zoom", lambda t: t.debridement == depth.debridement),
        ("relax_debridement", lambda t: True),
    )
    for rule, ok in rules:
        hits = [name for name, t in candidates if ok(t)]
        if hits:
            return rule, min(hits)
    return None, None


@dataclass
class BoxFile:
    """One box CSV as read by boxes.read_boxes, with case-insensitive lookups of its file names."""

    boxes: dict  # file name -> {box number: box}
    rows: dict  # file name -> {box number: CSV data row}
    named: set  # every parseable file name with at least one row
    lookup: CaseLookup = field(init=False)
    named_lookup: CaseLookup = field(init=False)

    def __post_init__(self):
        self.lookup, self.named_lookup = CaseLookup(self.boxes), CaseLookup(self.named)


@dataclass
class Joined:
    """The depth pass's result: one dict per sample, matches per rule, the thermal frames used."""

    rows: list
    rule_counts: dict
    used_thermal: set


class FrameJoin:
    """Joins box rows, rgb frames and maps by file name (letter case ignored when that is the only difference)."""

    def __init__(self, folders: dict, checks: FrameChecks, map_frames: MapFrames, case: CaseMatches):
        self.folders, self.checks, self.map_frames, self.case = folders, checks, map_frames, case
        self.maps = {m: CaseLookup(p.name for p in folders[m].iterdir() if p.is_file())
                     for m in ("depth_map", "thermal_map")}
        self.by_visit: dict[tuple, list] = {}  # usable thermal candidates per visit
        self.thermal_boxes: dict[str, dict] = {}
        self.thermal_map_name: dict[str, str] = {}

    def _usable(self, name: str, bf: BoxFile, rgb: str, skips: Skips, box_skips: Skips, has_visit: bool = True):
        """(map file name, boxes kept) of a usable frame, else None with the skip reason recorded."""
        what, mp = rgb.split("_")[0], rgb.replace("_rgb", "_map")
        bname = self.case.note(name, bf.lookup.find(name), f"{what} box row")
        boxes = bf.boxes.get(bname) if bname else None
        if not boxes:
            skips.add("no_valid_box" if name in bf.named_lookup else "no_box", name)
            return None
        if not has_visit:
            skips.add("no_metadata_row", name)
            return None
        mname = self.case.note(name, self.maps[mp].find(name), f"{mp} file")
        if mname is None:
            skips.add("missing_map_file", name)
            return None
        paths = (self.folders[rgb] / name, self.folders[mp] / mname)
        if not self.checks.readable(*paths):
            skips.add("unreadable_frame", name)
            return None
        kept = self.checks.fit_boxes(name, boxes, bf.rows[bname], paths, box_skips)
        if not kept:
            skips.add("box_outside_frame", name)
            return None
        kept, why = self.map_frames.keep(mp, name, paths[1], kept, *(self.checks.sizes[str(p)] for p in paths))
        if why:
            skips.add(why, name)
            return None
        return mname, kept

    def add_thermal(self, frames: dict[str, FrameKey], bf: BoxFile, skips: Skips, box_skips: Skips) -> None:
        """Record every usable thermal frame as a match candidate of its visit."""
        for name, key in frames.items():
            usable = self._usable(name, bf, "thermal_rgb", skips, box_skips)
            if usable is None:
                continue
            self.thermal_map_name[name], self.thermal_boxes[name] = usable
            self.by_visit.setdefault(key.visit, []).append((name, key))

    def depth_samples(self, frames: dict[str, FrameKey], bf: BoxFile, visits: dict, labels,
                      skips: Skips, box_skips: Skips) -> Joined:
        """One row per usable depth box, its thermal frame matched by MATCH_RULES; `labels[i]` of metadata row i."""
        out = Joined([], {r: 0 for r in MATCH_RULES}, set())
        for name, key in frames.items():
            mi = visits.get(key.visit)
            usable = self._usable(name, bf, "depth_rgb", skips, box_skips, has_visit=mi is not None)
            if usable is None:
                continue
            rule, tname = match_thermal(key, self.by_visit.get(key.visit, []))
            if rule is None:
                skips.add("no_thermal_frame", name)
                continue
            out.used_thermal.add(tname)
            mname, boxes = usable
            for num in sorted(boxes):
                out.rows.append(self._row(key, name, mname, boxes[num], num, tname, rule, mi, int(labels[mi])))
                out.rule_counts[rule] += 1
        return out

    def _row(self, key: FrameKey, name: str, mname: str, dbox, num: int, tname: str, rule: str, mi: int,
             label: int) -> dict:
        tboxes = self.thermal_boxes[tname]
        tnum = num if num in tboxes else min(tboxes)
        row = {
            "sample_id": f"{key.view_id}_{num}",
            "patient": key.patient,
            "visit": f"P{key.patient:03d}{key.appt:02d}{key.dfu}",
            "label": label,
            "match_rule": rule,
            "appt": key.appt,
            "dfu": key.dfu,
            "box_number": int(num),
            "_random": key.random_number,
            "_meta_row": mi,
        }
        for m, fname, box in (
            ("depth_rgb", name, dbox),
            ("depth_map", mname, self.map_frames.box("depth_map", name, num)),
            ("thermal_rgb", tname, tboxes[tnum]),
            ("thermal_map", self.thermal_map_name[tname], self.map_frames.box("thermal_map", tname, tnum)),
        ):
            row[f"{m}_path"] = str(self.folders[m] / fname)
            for f, v in zip(BOX_FIELDS, box):
                row[f"{m}_{f}"] = int(v)
        return row
