"""DFU adapter: the raw on-disk layout (DATA_FORMAT.md) -> a Manifest.

Inputs (names from DataConfig): metadata.csv, the two bounding-box CSVs and the four image
folders depth_rgb / depth_map / thermal_rgb / thermal_map. The CSVs are read by tables.py
(separator, duplicated or unnamed columns), metadata.py (keys, labels, typed features; leaks
by content in features.py) and boxes.py; names.py parses file names; matching.py joins names
(letter case ignored when that is the only difference) and diagnoses an empty result.

Choices made here (each one is counted in `manifest.report` and logged; docs/data_problems.md
lists every message):

* ONE SAMPLE PER DEPTH BOX. A depth frame with several wound boxes (Bounding Box Number
  1..3) yields one sample per valid box; the samples share the depth frame, its map, the
  matched thermal frame and the visit's metadata row. (Patient-level folds keep them in the
  same fold, so this cannot leak.)
* The thermal frame of a sample is the thermal_rgb frame of the same visit and view
  (debridement, angle, zoom). When that view is missing the match is relaxed in a fixed
  order and the rule used is recorded in the sample's `match_rule`:
  `exact` -> `relax_angle` (any angle, same zoom + debridement) -> `relax_zoom` (any angle
  and zoom, same debridement) -> `relax_debridement` (any view of the visit). Ties go to the
  first file name in sorted order. Only thermal frames that have a usable box, a thermal_map
  file and readable rgb and map files are candidates.
* The thermal box is the thermal frame's box with the same Bounding Box Number, else its
  lowest-numbered box. A map frame gets the box of its rgb frame mapped into the map's pixels
  (size ratio, then `data.maps.<map>.box_scale` / `box_margin_px`; maps.map_box), counted and
  logged; 16-bit maps are decoded once here and a box whose map cannot be normalised (no valid
  pixel in the box or its skin ring, a constant map: maps.MAP_SKIP_REASONS) is SKIPPED, named.
* Patient numbers in the box CSVs may be zero-padded or not; every join uses the integers
  parsed from the image file name, never the raw `Patient#` text.

Bad input (ERROR = ValueError/FileNotFoundError naming file, row and value; SKIP = dropped,
counted in the report with the first few names, and logged):

* metadata: missing file, missing key/label column, non-integer key, non-UTF-8 bytes: ERROR.
  Label values with surrounding spaces or in lower case are normalised (count logged); empty
  or unknown label values: ERROR listing the rows (a guessed label is a wrong number).
  Duplicated visit keys: the first row is kept (count and label conflicts logged). A feature
  column that is entirely empty is dropped (logged). `data.feature_columns` naming an unknown
  column, or `data.exclude_columns` naming one: ERROR listing the available columns; a
  label-leaking column requested as a feature: ERROR.
* boxes: rows with a missing coordinate, inverted (xmax < xmin or ymax < ymin), zero area or
  lying entirely at negative coordinates: SKIP (the row is named). Boxes entirely outside
  their frame (size read from the image header): SKIP. Boxes partly outside: kept, clipped by
  images.crop_box, counted. Boxes under MIN_BOX_SIDE px on a side: kept, counted, warned.
  Rows naming a frame that is not in the image folder: counted.
* frames: a frame whose file is missing, empty, not an image or cut short (images.probe_frame,
  no decoding) is SKIPPED with its samples, before any fold exists. A depth frame with no box
  row, or whose box rows are all invalid, is SKIPPED.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES, IMAGE_MODALITIES
from medfusion.data.images import UNREADABLE_REASONS, UnreadableFrame, probe_frame
from medfusion.data.manifest import BOX_FIELDS, Manifest
from medfusion.data.maps import MAP_SKIP_REASONS, MapFrames
from medfusion.data.matching import CaseLookup, CaseMatches, check_box_roles, diagnose_no_samples, list_other_files
from medfusion.data.boxes import BOX_COLUMNS, BOX_ROW_PROBLEMS, MIN_BOX_SIDE, read_boxes  # noqa: F401 (re-exported)
from medfusion.data.metadata import (DEFAULT_LABEL_COLUMN, KEY_COLUMNS, LEAKY_COLUMNS, blank,  # noqa: F401
                                     NON_FEATURE_COLUMNS, read_metadata)
from medfusion.data.names import N_EXAMPLES, FrameKey, Skips, parse_frame_name  # noqa: F401 (re-exported)

MATCH_RULES = ("exact", "relax_angle", "relax_zoom", "relax_debridement")
# why a depth frame (or a thermal candidate) was not used; each frame counts once, under the
# first reason in this order
SKIP_REASONS = (
    "unparseable_name",
    "wrong_camera",
    "case_duplicate",
    "no_box",
    "no_valid_box",
    "no_metadata_row",
    "missing_map_file",
    "unreadable_frame",
    "box_outside_frame",
    *MAP_SKIP_REASONS,
    "no_thermal_frame",
)


def _list_frames(folder: Path, camera: str, skips: Skips | None) -> tuple[dict[str, FrameKey], set]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {str(folder)!r} not found; check data.data_dir and data.folders in the data config"
        )
    frames, present, folded = {}, set(), {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() != ".png":
            continue
        present.add(p.name)
        try:
            key = parse_frame_name(p.name)
        except ValueError:
            if skips is not None:
                skips.add("unparseable_name", p.name)
            continue
        if key.camera != camera:
            if skips is not None:
                skips.add("wrong_camera", p.name)
            continue
        first = folded.setdefault(p.name.casefold(), p.name)
        if first != p.name:  # the same frame twice on a case-sensitive disk: one sample, not two
            if skips is not None:
                skips.add("case_duplicate", f"{p.name} (same name as {first} ignoring letter case)")
            continue
        frames[p.name] = key
    return frames, present


def _check_folders(root: Path, folders: dict) -> None:
    """All four image folders exist; else one error naming each missing one (or that it is a file)."""
    bad = [f"{m} ({str(f)!r} {'is a file, not a folder' if f.exists() else 'not found'})"
           for m, f in folders.items() if not f.is_dir()]
    if bad:
        present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
        raise FileNotFoundError(
            f"image folder(s) missing in {str(root)!r}: {'; '.join(bad)}. A search with an image modality needs all "
            f"four image folders (a sample is one matched view of a visit; a metadata-only search, --modalities "
            f"metadata, needs only the metadata file); the folder holds {', '.join(present[:10]) or 'nothing'}. "
            "Check data.data_dir and data.folders in the data config")


def _nested_frames(folders: dict, n_depth: int) -> list[str]:
    """Hint when an image folder holds no frame itself but its subfolders do (the loader does not descend)."""
    hints = []
    for m in ("depth_rgb", "thermal_rgb"):
        if m == "depth_rgb" and n_depth:
            continue
        if any(p.suffix.lower() == ".png" for p in folders[m].iterdir() if p.is_file()):
            continue
        nested = sorted(p.relative_to(folders[m]) for p in folders[m].rglob("*.[pP][nN][gG]") if p.is_file())
        if nested:
            hints.append(f"{m} holds no .png frame itself but its subfolder(s) hold {len(nested)} (e.g. "
                         f"{str(nested[0])!r}): frames must lie directly in the folder; move them up or point "
                         "data.folders at the subfolder")
    return hints


def _match_thermal(depth: FrameKey, candidates: list[tuple[str, FrameKey]]):
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


class _FrameChecks:
    """Probes each image file once (header only) and checks boxes against the frame size."""

    def __init__(self, root: Path, max_pixels: int | None = None):
        self.root = root
        self.max_pixels = max_pixels
        self.sizes: dict[str, tuple | None] = {}
        self.unreadable = Skips()
        self.first_message: dict[str, str] = {}
        self.box_state: dict[tuple, str] = {}

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def size(self, path: Path):
        key = str(path)
        if key not in self.sizes:
            try:
                self.sizes[key] = probe_frame(path, self.max_pixels)
            except UnreadableFrame as exc:
                self.sizes[key] = None
                self.unreadable.add(exc.reason, self._rel(path))
                self.first_message.setdefault(exc.reason, str(exc))
        return self.sizes[key]

    def readable(self, *paths: Path) -> bool:
        return all([self.size(p) is not None for p in paths])  # list: probe every path, count each failure

    def fit(self, box, paths) -> str:
        """'ok', 'clipped' (partly outside a frame) or 'outside' (entirely outside one of the frames)."""
        state = "ok"
        w0, h0 = self.sizes[str(paths[0])]
        for p in paths:
            w, h = self.sizes[str(p)]  # a map of another size: the box scaled by the size ratio
            xmin, ymin, xmax, ymax = (v * s for v, s in zip(box, (w / w0, h / h0, w / w0, h / h0)))
            if xmax <= 0 or ymax <= 0 or xmin >= w or ymin >= h:
                return "outside"
            if xmin < 0 or ymin < 0 or xmax > w or ymax > h:
                state = "clipped"
        return state


def _fit_boxes(name, boxes, rows, paths, checks: _FrameChecks, box_skips: Skips) -> dict:
    """The boxes of one frame that lie at least partly inside every one of its frames (rgb and map)."""
    kept = {}
    for num in sorted(boxes):
        state = checks.fit(boxes[num], paths)
        if (name, num) not in checks.box_state:
            checks.box_state[(name, num)] = state
            if state != "ok":
                sizes = " / ".join("{}x{}".format(*checks.sizes[str(p)]) for p in paths)
                box_skips.add("outside_frame" if state == "outside" else "clipped",
                              f"{name}#{num} (row {rows[num]}: {list(boxes[num])}, frame {sizes})")
        if state != "outside":
            kept[num] = boxes[num]
    return kept


def _check_appt_numbering(meta: pd.DataFrame, depth_frames: dict, path: Path, log, report: dict) -> None:
    """Appt# is 0-based like the file names; metadata numbered from 1 silently gives frames the next visit's label."""
    n_zero = sum(1 for k in depth_frames.values() if k.appt == 0)
    report["appt_numbering"] = None
    if n_zero and len(meta) and 0 not in set(meta["Appt#"].tolist()):
        report["appt_numbering"] = (
            f"{path.name} has no row with Appt# 0 but {n_zero} depth frame(s) are appointment 00 (e.g. "
            f"{next(n for n, k in depth_frames.items() if k.appt == 0)}): if the metadata numbers visits from 1, every "
            "frame is joined to the wrong visit and label. Appt# must count from 0, as in the file names")
        log.warning("%s", report["appt_numbering"])


# ----------------------------------------------------------------------------- loader


def load_dfu(data_dir, data_cfg: DataConfig, log: logging.Logger | None = None, modalities=None) -> Manifest:
    """Read the DFU layout in `data_dir` (file and folder names from `data_cfg`) into a Manifest.

    `modalities` (default: all) are the modalities the caller will use: without an image modality
    only metadata.csv is read and each visit is one sample (data/metadata_only.py).
    Raises FileNotFoundError / ValueError with a message naming the file, row and value for input
    that cannot be used; skips (with counts in `manifest.report` and log lines) what can be left out.
    """
    log = log or logging.getLogger("medfusion.data.dfu")
    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {str(root)!r} not found{' (it is a file)' if root.exists() else ''}; check --data_dir / "
            "data.data_dir (the demo dataset is generated only into data.demo_dir, with data.demo: true)"
        )
    if modalities is not None and not set(modalities) & set(IMAGE_MODALITIES):
        from medfusion.data.metadata_only import load_metadata_only

        return load_metadata_only(root, data_cfg, log)
    folders = {m: root / data_cfg.folders.get(m, m) for m in IMAGE_MODALITIES}
    _check_folders(root, folders)
    report: dict = {}

    meta_path = root / data_cfg.metadata_csv
    meta, features = read_metadata(meta_path, data_cfg, log, report)
    visits = {tuple(int(x) for x in k): i for i, k in enumerate(meta[list(KEY_COLUMNS)].to_numpy())}

    depth_csv, thermal_csv = root / data_cfg.depth_boxes_csv, root / data_cfg.thermal_boxes_csv
    depth_boxes, depth_rows, depth_named = read_boxes(depth_csv, "depth bounding-box", "D", log, "depth_boxes", report)
    thermal_boxes, thermal_rows, thermal_named = read_boxes(
        thermal_csv, "thermal bounding-box", "T", log, "thermal_boxes", report)
    check_box_roles(report, depth_csv, thermal_csv)

    skips = Skips()
    depth_frames, depth_present = _list_frames(folders["depth_rgb"], "D", skips)
    thermal_skips = Skips()
    thermal_frames, thermal_present = _list_frames(folders["thermal_rgb"], "T", thermal_skips)
    checks = _FrameChecks(root, data_cfg.max_frame_pixels)
    map_frames = MapFrames(data_cfg.maps, data_cfg.box_margin)
    depth_box_skips, thermal_box_skips = Skips(), Skips()
    case = CaseMatches()
    maps = {m: CaseLookup(p.name for p in folders[m].iterdir() if p.is_file()) for m in ("depth_map", "thermal_map")}

    # box rows naming a frame that is not in the folder (letter case ignored)
    for key, named, present, folder in (("depth_boxes", depth_named, depth_present, folders["depth_rgb"]),
                                        ("thermal_boxes", thermal_named, thermal_present, folders["thermal_rgb"])):
        found = CaseLookup(present)
        absent = sorted(n for n in named if n not in found)
        report[key]["frames_not_found"] = len(absent)
        if absent:
            report[key]["examples"]["frames_not_found"] = absent[:N_EXAMPLES]
            log.warning("%s: %d file name(s) with box rows have no image in %s, e.g. %s",
                        key.replace("_", " "), len(absent), folder, absent[:N_EXAMPLES])
    depth_lookup, thermal_lookup = CaseLookup(depth_boxes), CaseLookup(thermal_boxes)
    depth_named_lookup, thermal_named_lookup = CaseLookup(depth_named), CaseLookup(thermal_named)

    # usable thermal candidates per visit: a valid box, a map file, readable frames, a box inside them
    by_visit: dict[tuple, list] = {}
    usable_thermal_boxes: dict[str, dict] = {}
    thermal_map_name: dict[str, str] = {}
    for name, key in thermal_frames.items():
        bname = case.note(name, thermal_lookup.find(name), "thermal box row")
        if bname is None:
            thermal_skips.add("no_valid_box" if name in thermal_named_lookup else "no_box", name)
            continue
        mname = case.note(name, maps["thermal_map"].find(name), "thermal_map file")
        if mname is None:
            thermal_skips.add("missing_map_file", name)
            continue
        paths = (folders["thermal_rgb"] / name, folders["thermal_map"] / mname)
        if not checks.readable(*paths):
            thermal_skips.add("unreadable_frame", name)
            continue
        kept = _fit_boxes(name, thermal_boxes[bname], thermal_rows[bname], paths, checks, thermal_box_skips)
        if not kept:
            thermal_skips.add("box_outside_frame", name)
            continue
        kept, why = map_frames.keep("thermal_map", name, paths[1], kept, *(checks.sizes[str(p)] for p in paths))
        if why:
            thermal_skips.add(why, name)
            continue
        usable_thermal_boxes[name] = kept
        thermal_map_name[name] = mname
        by_visit.setdefault(key.visit, []).append((name, key))

    rows = []
    rule_counts = {r: 0 for r in MATCH_RULES}
    used_thermal = set()
    for name, key in depth_frames.items():
        bname = case.note(name, depth_lookup.find(name), "depth box row")
        boxes = depth_boxes.get(bname) if bname else None
        if not boxes:
            skips.add("no_valid_box" if name in depth_named_lookup else "no_box", name)
            continue
        mi = visits.get(key.visit)
        if mi is None:
            skips.add("no_metadata_row", name)
            continue
        mname = case.note(name, maps["depth_map"].find(name), "depth_map file")
        if mname is None:
            skips.add("missing_map_file", name)
            continue
        paths = (folders["depth_rgb"] / name, folders["depth_map"] / mname)
        if not checks.readable(*paths):
            skips.add("unreadable_frame", name)
            continue
        boxes = _fit_boxes(name, boxes, depth_rows[bname], paths, checks, depth_box_skips)
        if not boxes:
            skips.add("box_outside_frame", name)
            continue
        boxes, why = map_frames.keep("depth_map", name, paths[1], boxes, *(checks.sizes[str(p)] for p in paths))
        if why:
            skips.add(why, name)
            continue
        rule, tname = _match_thermal(key, by_visit.get(key.visit, []))
        if rule is None:
            skips.add("no_thermal_frame", name)
            continue
        used_thermal.add(tname)
        tboxes = usable_thermal_boxes[tname]
        for num in sorted(boxes):
            tnum = num if num in tboxes else min(tboxes)
            tbox, dbox = tboxes[tnum], boxes[num]
            row = {
                "sample_id": f"{key.view_id}_{num}",
                "patient": key.patient,
                "visit": f"P{key.patient:03d}{key.appt:02d}{key.dfu}",
                "label": int(meta["__label"].iat[mi]),
                "match_rule": rule,
                "appt": key.appt,
                "dfu": key.dfu,
                "box_number": int(num),
                "_random": key.random_number,
                "_meta_row": mi,
            }
            for m, fname, box in (
                ("depth_rgb", name, dbox),
                ("depth_map", mname, map_frames.box("depth_map", name, num)),
                ("thermal_rgb", tname, tbox),
                ("thermal_map", thermal_map_name[tname], map_frames.box("thermal_map", tname, tnum)),
            ):
                row[f"{m}_path"] = str(folders[m] / fname)
                for f, v in zip(BOX_FIELDS, box):
                    row[f"{m}_{f}"] = int(v)
            rows.append(row)
            rule_counts[rule] += 1

    _check_appt_numbering(meta, depth_frames, meta_path, log, report)
    report["map_boxes"] = map_frames.report(log)
    report["maps"] = dataclasses.asdict(data_cfg.maps)  # read back by images.load_crops
    report["case_insensitive_matches"] = {"count": case.count, "examples": case.examples}
    if case.count:
        log.warning("%d file name(s) matched only when letter case is ignored (box rows vs image files, or rgb vs "
                    "map files); matched, e.g. %s", case.count, case.examples)
    # frame-level box checks (need the frame size) go into the per-CSV report
    for key, bs in (("depth_boxes", depth_box_skips), ("thermal_boxes", thermal_box_skips)):
        for k in ("outside_frame", "clipped"):
            report[key][k] = bs.count(k)
            if bs.count(k):
                report[key]["examples"][k] = bs.data[k]["examples"]
        if bs.count("outside_frame"):
            log.warning("%s: %d box(es) lie entirely outside their frame and were dropped, e.g. %s",
                        key.replace("_", " "), bs.count("outside_frame"), bs.data["outside_frame"]["examples"])
        if bs.count("clipped"):
            log.info("%s: %d box(es) reach past the frame edge and are clipped, e.g. %s",
                     key.replace("_", " "), bs.count("clipped"), bs.data["clipped"]["examples"])
    unreadable = {r: checks.unreadable.data[r] for r in UNREADABLE_REASONS if r in checks.unreadable.data}
    for reason, e in unreadable.items():
        log.warning("image files skipped (%s): %d, e.g. %s (%s)", reason, e["count"], e["examples"],
                    checks.first_message[reason])

    base_cols = ["sample_id", "patient", "visit", "label", "match_rule", "appt", "dfu", "box_number"]
    for m in IMAGE_MODALITIES:
        base_cols += [f"{m}_path"] + [f"{m}_{f}" for f in BOX_FIELDS]
    samples = pd.DataFrame(rows, columns=base_cols + ["_random", "_meta_row"])
    used_meta_rows = np.unique(samples["_meta_row"].to_numpy(dtype=np.int64)) if len(samples) else np.array([], int)
    if len(samples):
        # unique sample ids: two depth frames of the same view -> append the random number
        dup = samples["sample_id"].duplicated(keep=False)
        samples.loc[dup, "sample_id"] = (
            samples.loc[dup, "sample_id"] + "_" + samples.loc[dup, "_random"].astype(str)
        )
        dup = samples["sample_id"].duplicated(keep=False)  # random numbers equal as integers ('10', '010')
        samples.loc[dup, "sample_id"] = samples.loc[dup, "sample_id"] + "_" + samples.loc[dup, "depth_rgb_path"].map(
            lambda x: Path(x).stem.split("_")[0])
        feat = meta.iloc[samples["_meta_row"].to_numpy()][features].reset_index(drop=True)
        samples = pd.concat([samples[base_cols].reset_index(drop=True), feat], axis=1)
    else:
        samples = pd.DataFrame(columns=base_cols + features)
    if len(samples) == 0:
        reasons = {k: v["count"] for k, v in skips.data.items()}
        other = {m: list_other_files(folders[m]) for m in ("depth_rgb", "thermal_rgb")}
        hints = diagnose_no_samples(reasons, len(depth_frames), other, report, set(meta["Appt#"].tolist()),
                                    {k.appt for k in depth_frames.values()})
        hints = _nested_frames(folders, len(depth_frames)) + hints
        raise ValueError(
            f"no samples could be built from {str(root)!r}: {len(depth_frames)} depth frames, skipped by reason "
            f"{reasons}; thermal frames unusable by reason {({k: v['count'] for k, v in thermal_skips.data.items()})}; "
            f"unreadable image files {({k: v['count'] for k, v in unreadable.items()})}; "
            f"{len(meta)} metadata rows." + "".join(f" Likely cause: {h}." for h in hints)
            + " Check the folders, the box CSVs and that file names follow DATA_FORMAT.md"
        )

    for rule in MATCH_RULES:
        log.info("DFU samples matched by rule %-17s %d", rule + ":", rule_counts[rule])
    for reason in SKIP_REASONS:
        if reason in skips.data:
            e = skips.data[reason]
            (log.warning if reason in ("unreadable_frame", "box_outside_frame", "case_duplicate") else log.info)(
                "DFU depth frames skipped (%s): %d, e.g. %s", reason, e["count"], e["examples"])
    for reason, e in thermal_skips.data.items():
        (log.warning if reason == "case_duplicate" else log.info)(
            "DFU thermal frames unusable (%s): %d, e.g. %s", reason, e["count"], e["examples"])
    unused = sorted(set(n for lst in by_visit.values() for n, _ in lst) - used_thermal)

    # missing values of the feature columns over the metadata rows the samples use
    used_meta = meta.iloc[used_meta_rows]
    missing = {c: int(blank(used_meta[c]).sum()) for c in features}
    missing = dict(sorted(((c, n) for c, n in missing.items() if n), key=lambda kv: (-kv[1], kv[0])))
    # frame sizes (from the image headers) per modality over the frames the samples use
    frame_sizes = {}
    for m in IMAGE_MODALITIES:
        wh = np.array([checks.sizes[p] for p in samples[f"{m}_path"].unique()], dtype=np.int64).reshape(-1, 2)
        frame_sizes[m] = {"n_frames": int(len(wh)), "width": [int(wh[:, 0].min()), int(wh[:, 0].max())],
                          "height": [int(wh[:, 1].min()), int(wh[:, 1].max())]}

    n_visits = int(samples["visit"].nunique())
    report.update(
        {
            "match_rules": rule_counts,
            "skipped": {k: skips.data[k] for k in SKIP_REASONS if k in skips.data},
            "thermal_unusable": {k: thermal_skips.data[k] for k in SKIP_REASONS if k in thermal_skips.data},
            "thermal_frames_unused": {"count": len(unused), "examples": unused[:N_EXAMPLES]},
            "unreadable_files": unreadable,
            "n_depth_frames": len(depth_frames),
            "n_thermal_frames": len(thermal_frames),
            "n_metadata_rows": len(meta),
            "n_samples": int(len(samples)),
            "n_visits": n_visits,
            "n_patients": int(samples["patient"].nunique()),
            "visits_without_samples": int(len(meta) - n_visits),
            "class_counts": {c: int((samples["label"] == i).sum()) for i, c in enumerate(CLASSES)},
            "missing_values": {"n_rows": int(len(used_meta)), "columns": missing},
            "frame_sizes": frame_sizes,
        }
    )
    log.info(
        "DFU manifest: %d samples, %d visits, %d patients, %d feature columns; classes %s",
        report["n_samples"], n_visits, report["n_patients"], len(features), report["class_counts"],
    )
    manifest = Manifest(samples, features, report)
    manifest.validate()
    return manifest
