"""DFU adapter: the raw on-disk layout (DATA_FORMAT.md) -> a Manifest.

Inputs (names from DataConfig): metadata.csv, the two bounding-box CSVs and the four image
folders depth_rgb / depth_map / thermal_rgb / thermal_map. The CSVs are read by tables.py
(separator, duplicated or unnamed columns), metadata.py (keys, labels, typed features; leaks
by content in features.py) and boxes.py; names.py parses file names; frames.py lists the frames and
probes their headers; samples.py joins box rows, frames and maps into one row per depth box;
matching.py matches names (letter case ignored when that is the only difference) and diagnoses an
empty result. This module orders those steps and assembles the report.

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
  Rows naming a frame that is not in the image folder: counted. A coordinate that is not a number:
  ERROR; a Bounding Box Number outside 1..3 or a Patient# contradicting the file name: SKIP, named.
* frames: a frame whose file is missing, empty, not an image or cut short (images.probe_frame,
  no decoding) is SKIPPED with its samples, before any fold exists. A depth frame with no box
  row, or whose box rows are all invalid, is SKIPPED. A JPEG under a .png name is used, warned about
  by name. A 16-bit map that fails to decode is recorded (`undecodable_maps`): check.py makes it a
  problem, as it does a PNG whose image data fails its checksums (integrity.py).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES, IMAGE_MODALITIES
from medfusion.data.images import UNREADABLE_REASONS
from medfusion.data.frames import FrameChecks, check_folders, list_frames, nested_frames
from medfusion.data.manifest import BOX_FIELDS, Manifest
from medfusion.data.maps import MAP_SKIP_REASONS, MapFrames
from medfusion.data.matching import CaseLookup, CaseMatches, check_box_roles, diagnose_no_samples, list_other_files
from medfusion.data.boxes import BOX_COLUMNS, BOX_ROW_PROBLEMS, MIN_BOX_SIDE, read_boxes  # noqa: F401 (re-exported)
from medfusion.data.metadata import (DEFAULT_LABEL_COLUMN, KEY_COLUMNS, LEAKY_COLUMNS, blank,  # noqa: F401
                                     NON_FEATURE_COLUMNS, read_metadata)
from medfusion.data.names import N_EXAMPLES, FrameKey, Skips, parse_frame_name  # noqa: F401 (re-exported)
from medfusion.data.samples import MATCH_RULES, BoxFile, FrameJoin, Joined

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
BASE_COLUMNS = ["sample_id", "patient", "visit", "label", "match_rule", "appt", "dfu", "box_number"] + [
    c for m in IMAGE_MODALITIES for c in [f"{m}_path"] + [f"{m}_{f}" for f in BOX_FIELDS]]


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


def _data_root(data_dir) -> Path:
    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {str(root)!r} not found{' (it is a file)' if root.exists() else ''}; check --data_dir / "
            "data.data_dir (the demo dataset is generated only into data.demo_dir, with data.demo: true)"
        )
    return root


def _read_box_files(root: Path, data_cfg: DataConfig, log, report: dict) -> dict[str, BoxFile]:
    depth_csv, thermal_csv = root / data_cfg.depth_boxes_csv, root / data_cfg.thermal_boxes_csv
    out = {"depth": BoxFile(*read_boxes(depth_csv, "depth bounding-box", "D", log, "depth_boxes", report)),
           "thermal": BoxFile(*read_boxes(thermal_csv, "thermal bounding-box", "T", log, "thermal_boxes", report))}
    check_box_roles(report, depth_csv, thermal_csv)
    return out


def _frames_not_found(report: dict, log, named: dict, present: dict, folders: dict) -> None:
    """Box rows naming a frame that is not in the folder (letter case ignored): counted."""
    for key, cam in (("depth_boxes", "depth"), ("thermal_boxes", "thermal")):
        found = CaseLookup(present[cam])
        absent = sorted(n for n in named[cam] if n not in found)
        report[key]["frames_not_found"] = len(absent)
        if absent:
            report[key]["examples"]["frames_not_found"] = absent[:N_EXAMPLES]
            log.warning("%s: %d file name(s) with box rows have no image in %s, e.g. %s",
                        key.replace("_", " "), len(absent), folders[f"{cam}_rgb"], absent[:N_EXAMPLES])


def _join_report(report: dict, log, data_cfg: DataConfig, map_frames: MapFrames, checks: FrameChecks,
                 case: CaseMatches) -> None:
    """Map boxes, undecodable maps, JPEG files named .png, the map rules and case-insensitive matches."""
    report["map_boxes"] = map_frames.report(log)
    report["undecodable_maps"] = dict(map_frames.undecodable)  # a problem for data/check.py when a sample uses one
    report["jpeg_as_png"] = _jpeg_as_png(checks, log)
    report["maps"] = dataclasses.asdict(data_cfg.maps)  # read back by images.load_crops
    report["case_insensitive_matches"] = {"count": case.count, "examples": case.examples}
    if case.count:
        log.warning("%d file name(s) matched only when letter case is ignored (box rows vs image files, or rgb vs "
                    "map files); matched, e.g. %s", case.count, case.examples)


def _frame_box_report(report: dict, log, box_skips: dict) -> None:
    """Frame-level box checks (they need the frame size) go into the per-CSV report."""
    for cam, bs in box_skips.items():
        key = f"{cam}_boxes"
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


def _unreadable(checks: FrameChecks, log) -> dict:
    unreadable = {r: checks.unreadable.data[r] for r in UNREADABLE_REASONS if r in checks.unreadable.data}
    for reason, e in unreadable.items():
        log.warning("image files skipped (%s): %d, e.g. %s (%s)", reason, e["count"], e["examples"],
                    checks.first_message[reason])
    return unreadable


def _jpeg_as_png(checks: FrameChecks, log) -> dict:
    """JPEG files named .png: used (decoded by content), but said, since JPEG is lossy and 8-bit."""
    e = checks.jpeg_named.data.get("jpeg_as_png", {"count": 0, "examples": []})
    if e["count"]:
        log.warning("%d image file(s) hold JPEG data under a .png name, e.g. %s: they are read by their content, but "
                    "JPEG is lossy and 8-bit (a depth or thermal map saved so has lost its physical units); export "
                    "them from the source as PNG", e["count"], e["examples"])
    return e


def _samples_frame(rows: list, meta: pd.DataFrame, features: list) -> pd.DataFrame:
    """The samples table: unique sample ids, the metadata feature columns joined by metadata row."""
    samples = pd.DataFrame(rows, columns=BASE_COLUMNS + ["_random", "_meta_row"])
    if not len(samples):
        return pd.DataFrame(columns=BASE_COLUMNS + features)
    # unique sample ids: two depth frames of the same view -> append the random number
    dup = samples["sample_id"].duplicated(keep=False)
    samples.loc[dup, "sample_id"] = samples.loc[dup, "sample_id"] + "_" + samples.loc[dup, "_random"].astype(str)
    dup = samples["sample_id"].duplicated(keep=False)  # random numbers equal as integers ('10', '010')
    samples.loc[dup, "sample_id"] = samples.loc[dup, "sample_id"] + "_" + samples.loc[dup, "depth_rgb_path"].map(
        lambda x: Path(x).stem.split("_")[0])
    feat = meta.iloc[samples["_meta_row"].to_numpy()][features].reset_index(drop=True)
    return pd.concat([samples[BASE_COLUMNS].reset_index(drop=True), feat], axis=1)


def _no_samples_error(root, folders, skips, thermal_skips, unreadable, report, meta, depth_frames) -> ValueError:
    reasons = {k: v["count"] for k, v in skips.data.items()}
    other = {m: list_other_files(folders[m]) for m in ("depth_rgb", "thermal_rgb")}
    hints = diagnose_no_samples(reasons, len(depth_frames), other, report, set(meta["Appt#"].tolist()),
                                {k.appt for k in depth_frames.values()})
    hints = nested_frames(folders, len(depth_frames)) + hints
    return ValueError(
        f"no samples could be built from {str(root)!r}: {len(depth_frames)} depth frames, skipped by reason "
        f"{reasons}; thermal frames unusable by reason {({k: v['count'] for k, v in thermal_skips.data.items()})}; "
        f"unreadable image files {({k: v['count'] for k, v in unreadable.items()})}; "
        f"{len(meta)} metadata rows." + "".join(f" Likely cause: {h}." for h in hints)
        + " Check the folders, the box CSVs and that file names follow DATA_FORMAT.md"
    )


def _log_skips(log, rule_counts: dict, skips: Skips, thermal_skips: Skips) -> None:
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


def _usage(rows: list, samples: pd.DataFrame, meta: pd.DataFrame, features: list, checks: FrameChecks) -> dict:
    """Missing feature values over the metadata rows the samples use; frame sizes over the frames they use."""
    used_meta_rows = np.unique(np.array([r["_meta_row"] for r in rows], dtype=np.int64))
    used_meta = meta.iloc[used_meta_rows]
    missing = {c: int(blank(used_meta[c]).sum()) for c in features}
    missing = dict(sorted(((c, n) for c, n in missing.items() if n), key=lambda kv: (-kv[1], kv[0])))
    frame_sizes = {}
    for m in IMAGE_MODALITIES:
        wh = np.array([checks.sizes[p] for p in samples[f"{m}_path"].unique()], dtype=np.int64).reshape(-1, 2)
        frame_sizes[m] = {"n_frames": int(len(wh)), "width": [int(wh[:, 0].min()), int(wh[:, 0].max())],
                          "height": [int(wh[:, 1].min()), int(wh[:, 1].max())]}
    return {"missing_values": {"n_rows": int(len(used_meta)), "columns": missing}, "frame_sizes": frame_sizes}


def _counts(joined: Joined, skips: Skips, thermal_skips: Skips, unused: list, unreadable: dict,
            samples: pd.DataFrame, meta: pd.DataFrame, depth_frames: dict, thermal_frames: dict) -> dict:
    n_visits = int(samples["visit"].nunique())
    return {
        "match_rules": joined.rule_counts,
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
    }


# ----------------------------------------------------------------------------- loader


def load_dfu(data_dir, data_cfg: DataConfig, log: logging.Logger | None = None, modalities=None) -> Manifest:
    """Read the DFU layout in `data_dir` (file and folder names from `data_cfg`) into a Manifest.

    `modalities` (default: all) are the modalities the caller will use: without an image modality
    only metadata.csv is read and each visit is one sample (data/metadata_only.py).
    Raises FileNotFoundError / ValueError with a message naming the file, row and value for input
    that cannot be used; skips (with counts in `manifest.report` and log lines) what can be left out.
    """
    log = log or logging.getLogger("medfusion.data.dfu")
    root = _data_root(data_dir)
    if modalities is not None and not set(modalities) & set(IMAGE_MODALITIES):
        from medfusion.data.metadata_only import load_metadata_only

        return load_metadata_only(root, data_cfg, log)
    folders = {m: root / data_cfg.folders.get(m, m) for m in IMAGE_MODALITIES}
    check_folders(root, folders)
    report: dict = {}
    meta_path = root / data_cfg.metadata_csv
    meta, features = read_metadata(meta_path, data_cfg, log, report)
    visits = {tuple(int(x) for x in k): i for i, k in enumerate(meta[list(KEY_COLUMNS)].to_numpy())}
    box_files = _read_box_files(root, data_cfg, log, report)

    skips, thermal_skips = Skips(), Skips()
    depth_frames, depth_present = list_frames(folders["depth_rgb"], "D", skips)
    thermal_frames, thermal_present = list_frames(folders["thermal_rgb"], "T", thermal_skips)
    checks = FrameChecks(root, data_cfg.max_frame_pixels)
    map_frames = MapFrames(data_cfg.maps, data_cfg.box_margin)
    box_skips = {"depth": Skips(), "thermal": Skips()}
    case = CaseMatches()
    join = FrameJoin(folders, checks, map_frames, case)
    _frames_not_found(report, log, {k: b.named for k, b in box_files.items()},
                      {"depth": depth_present, "thermal": thermal_present}, folders)
    join.add_thermal(thermal_frames, box_files["thermal"], thermal_skips, box_skips["thermal"])
    joined = join.depth_samples(depth_frames, box_files["depth"], visits, meta["__label"].to_numpy(), skips,
                                box_skips["depth"])

    _check_appt_numbering(meta, depth_frames, meta_path, log, report)
    _join_report(report, log, data_cfg, map_frames, checks, case)
    _frame_box_report(report, log, box_skips)
    unreadable = _unreadable(checks, log)
    samples = _samples_frame(joined.rows, meta, features)
    if len(samples) == 0:
        raise _no_samples_error(root, folders, skips, thermal_skips, unreadable, report, meta, depth_frames)
    _log_skips(log, joined.rule_counts, skips, thermal_skips)
    unused = sorted(set(n for lst in join.by_visit.values() for n, _ in lst) - joined.used_thermal)
    report.update(_counts(joined, skips, thermal_skips, unused, unreadable, samples, meta, depth_frames,
                          thermal_frames))
    report.update(_usage(joined.rows, samples, meta, features, checks))
    log.info(
        "DFU manifest: %d samples, %d visits, %d patients, %d feature columns; classes %s",
        report["n_samples"], report["n_visits"], report["n_patients"], len(features), report["class_counts"],
    )
    manifest = Manifest(samples, features, report)
    manifest.validate()
    return manifest
