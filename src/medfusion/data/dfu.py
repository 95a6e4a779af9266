"""DFU adapter: the raw on-disk layout (DATA_FORMAT.md) -> a Manifest.

Inputs (names from DataConfig): metadata.csv, the two bounding-box CSVs and the four image
folders depth_rgb / depth_map / thermal_rgb / thermal_map.

Choices made here (each one is counted in `manifest.report` and logged):

* ONE SAMPLE PER DEPTH BOX. A depth frame with several wound boxes (Bounding Box Number
  1..3) yields one sample per valid box; the samples share the depth frame, its map, the
  matched thermal frame and the visit's metadata row. (Patient-level folds keep them in the
  same fold, so this cannot leak.)
* The thermal frame of a sample is the thermal_rgb frame of the same visit and view
  (debridement, angle, zoom). When that view is missing the match is relaxed in a fixed
  order and the rule used is recorded in the sample's `match_rule`:
  `exact` -> `relax_angle` (any angle, same zoom + debridement) -> `relax_zoom` (any angle
  and zoom, same debridement) -> `relax_debridement` (any view of the visit). Ties go to the
  first file name in sorted order. Only thermal frames that have a usable box and a
  thermal_map file are candidates.
* The thermal box is the thermal frame's box with the same Bounding Box Number, else its
  lowest-numbered box. Map frames use the box of their rgb frame.
* Patient numbers in the box CSVs may be zero-padded or not; every join uses the integers
  parsed from the image file name, never the raw `Patient#` text.
* Boxes with xmax <= xmin or ymax <= ymin, or lying entirely at negative coordinates, are
  dropped here (that needs no image). Clipping to the frame size happens in images.py.
* Duplicated visit keys (Patient#, Appt#, DFU#) in metadata.csv: the first row is kept.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES, IMAGE_MODALITIES
from medfusion.data.manifest import BOX_FIELDS, Manifest

LEAKY_COLUMNS = ("Healing Phase", "Phase Confidence (%)")
DEFAULT_LABEL_COLUMN = "Healing Phase Abs"
NON_FEATURE_COLUMNS = (
    "ID",
    "Patient#",
    "Appt#",
    "DFU#",
    "Appt Days",
    "Location",
    "Type of Pain",
    "Type of Pain2",
    DEFAULT_LABEL_COLUMN,
) + LEAKY_COLUMNS
KEY_COLUMNS = ("Patient#", "Appt#", "DFU#")
BOX_COLUMNS = ("Filename", "Bounding Box Number", "Xmin", "Ymin", "Xmax", "Ymax")
MATCH_RULES = ("exact", "relax_angle", "relax_zoom", "relax_debridement")
SKIP_REASONS = (
    "unparseable_name",
    "wrong_camera",
    "no_box",
    "no_metadata_row",
    "missing_map_file",
    "no_thermal_frame",
)
N_EXAMPLES = 5
LABEL_INDEX = {c: i for i, c in enumerate(CLASSES)}

_NAME_RE = re.compile(r"^(\d+)_P(\d{3})(\d{2})(\d)([BA])([DT])([RML])([ZW])\.png$", re.IGNORECASE)


@dataclass(frozen=True)
class FrameKey:
    """The fields of an image file name `{random}_P{patient:3d}{appt:2d}{dfu}{B|A}{D|T}{R|M|L}{Z|W}.png`."""

    patient: int
    appt: int
    dfu: int
    debridement: str  # "B" | "A"
    camera: str  # "D" | "T"
    angle: str  # "R" | "M" | "L"
    zoom: str  # "Z" | "W"
    random_number: int = 0

    @property
    def visit(self) -> tuple[int, int, int]:
        return (self.patient, self.appt, self.dfu)

    @property
    def view(self) -> tuple[str, str, str]:
        return (self.debridement, self.angle, self.zoom)

    @property
    def view_id(self) -> str:
        """e.g. 'P0070012AMW' (camera letter left out)."""
        return f"P{self.patient:03d}{self.appt:02d}{self.dfu}{self.debridement}{self.angle}{self.zoom}"


def parse_frame_name(name: str) -> FrameKey:
    """Parse an image file name (a bare name or a path); ValueError on anything else."""
    base = Path(str(name).strip()).name
    m = _NAME_RE.match(base)
    if not m:
        raise ValueError(
            f"image file name {base!r} does not follow "
            "'{random}_P{patient:3d}{appt:2d}{dfu:1d}{B|A}{D|T}{R|M|L}{Z|W}.png' (e.g. '10_P257001ADMW.png')"
        )
    rnd, pat, appt, dfu, deb, cam, ang, zoom = m.groups()
    return FrameKey(int(pat), int(appt), int(dfu), deb.upper(), cam.upper(), ang.upper(), zoom.upper(), int(rnd))


# ----------------------------------------------------------------------------- helpers


class _Skips:
    def __init__(self):
        self.data: dict[str, dict] = {}

    def add(self, reason: str, example: str) -> None:
        entry = self.data.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < N_EXAMPLES:
            entry["examples"].append(example)


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file {str(path)!r} not found; check data.data_dir and the file name in the data config "
            "(or set data.demo: true to generate the demo dataset)"
        )
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{what} file {str(path)!r} could not be read as UTF-8 CSV: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _require_columns(df: pd.DataFrame, path: Path, cols, what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} file {str(path)!r} has no column {missing[0]!r} (required: {', '.join(cols)}); "
            f"columns found: {', '.join(map(str, df.columns[:12]))}{' ...' if len(df.columns) > 12 else ''}. "
            "Fix the header or point the data config at the right file/column."
        )


def _int_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    vals = pd.to_numeric(df[col].astype("string").str.strip(), errors="coerce")
    bad = vals.isna() | (vals.fillna(0) % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{str(path)!r}: row {i + 1} (line {i + 2} counting the header) has {col}={df[col].iloc[i]!r}; "
            "expected an integer"
        )
    return vals.to_numpy().astype(np.int64)


def _read_metadata(path: Path, label_column: str, log: logging.Logger, report: dict):
    df = _read_csv(path, "metadata")
    _require_columns(df, path, list(KEY_COLUMNS) + [label_column], "metadata")
    for c in KEY_COLUMNS:
        df[c] = _int_column(df, c, path)
    raw = df[label_column]
    labels = []
    for i, v in enumerate(raw.tolist()):
        s = "" if (v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA) else str(v).strip().upper()
        if s not in LABEL_INDEX:
            raise ValueError(
                f"{str(path)!r}: row {i + 1} (line {i + 2} counting the header) has {label_column}={v!r}; "
                f"expected one of {', '.join(CLASSES)}"
            )
        labels.append(LABEL_INDEX[s])
    df["__label"] = np.asarray(labels, dtype=np.int64)

    dup = df.duplicated(list(KEY_COLUMNS), keep="first")
    n_dup = int(dup.sum())
    dup_keys = [tuple(int(x) for x in k) for k in df.loc[dup, list(KEY_COLUMNS)].to_numpy()[:N_EXAMPLES]]
    if n_dup:
        log.warning(
            "%s: %d duplicated visit key(s) (Patient#, Appt#, DFU#) dropped, first row kept; e.g. %s",
            path.name, n_dup, dup_keys,
        )
        df = df.loc[~dup].reset_index(drop=True)
    report["duplicate_visits"] = n_dup
    report["duplicate_visit_keys"] = [list(k) for k in dup_keys]

    excluded = set(NON_FEATURE_COLUMNS) | {label_column}
    features = [c for c in df.columns if c not in excluded and c != "__label"]
    empty = [c for c in features if df[c].isna().all() or df[c].astype("string").str.strip().fillna("").eq("").all()]
    if empty:
        log.info("%s: %d entirely empty column(s) dropped from the features: %s", path.name, len(empty), empty)
    features = [c for c in features if c not in empty]
    report["empty_columns_dropped"] = empty
    return df, features


def _read_boxes(path: Path, what: str, log: logging.Logger, report_key: str, report: dict) -> dict:
    """file name -> {box_number: (xmin, ymin, xmax, ymax)}; bad rows counted."""
    df = _read_csv(path, what)
    _require_columns(df, path, BOX_COLUMNS, what)
    out: dict[str, dict[int, tuple]] = {}
    counts = {"rows": len(df), "invalid_box": 0, "unparseable_name": 0, "duplicate_box": 0}
    examples: dict[str, list] = {"invalid_box": [], "unparseable_name": [], "duplicate_box": []}
    names = df["Filename"].astype("string").str.strip().fillna("").tolist()
    nums = pd.to_numeric(df["Bounding Box Number"], errors="coerce").fillna(1).astype(int).tolist()
    coords = df[["Xmin", "Ymin", "Xmax", "Ymax"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    for i, (name, num, c) in enumerate(zip(names, nums, coords)):
        base = Path(name).name
        try:
            parse_frame_name(base)
        except ValueError:
            counts["unparseable_name"] += 1
            if len(examples["unparseable_name"]) < N_EXAMPLES:
                examples["unparseable_name"].append(base)
            continue
        if np.isnan(c).any() or c[2] <= c[0] or c[3] <= c[1] or c[2] <= 0 or c[3] <= 0:
            counts["invalid_box"] += 1
            if len(examples["invalid_box"]) < N_EXAMPLES:
                examples["invalid_box"].append(f"{base}#{num} (row {i + 1}: {c.tolist()})")
            continue
        boxes = out.setdefault(base, {})
        if num in boxes:
            counts["duplicate_box"] += 1
            if len(examples["duplicate_box"]) < N_EXAMPLES:
                examples["duplicate_box"].append(f"{base}#{num}")
            continue
        boxes[num] = tuple(int(round(v)) for v in c)
    for k in ("invalid_box", "unparseable_name", "duplicate_box"):
        if counts[k]:
            log.info("%s: %d row(s) dropped (%s), e.g. %s", path.name, counts[k], k, examples[k])
    report[report_key] = {**counts, "frames": len(out), "examples": {k: v for k, v in examples.items() if v}}
    return out


def _list_frames(folder: Path, camera: str, skips: _Skips | None) -> dict[str, FrameKey]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {str(folder)!r} not found; check data.data_dir and data.folders in the data config"
        )
    frames = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() != ".png":
            continue
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
        frames[p.name] = key
    return frames


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


# ----------------------------------------------------------------------------- loader


def load_dfu(data_dir, data_cfg: DataConfig, log: logging.Logger | None = None) -> Manifest:
    """Read the DFU layout in `data_dir` (file and folder names from `data_cfg`) into a Manifest."""
    log = log or logging.getLogger("medfusion.data.dfu")
    root = Path(data_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(
            f"data directory {str(root)!r} not found; set data.data_dir (or data.demo: true for the demo dataset)"
        )
    folders = {m: root / data_cfg.folders.get(m, m) for m in IMAGE_MODALITIES}
    report: dict = {}

    meta_path = root / data_cfg.metadata_csv
    meta, features = _read_metadata(meta_path, data_cfg.label_column, log, report)
    visits = {tuple(int(x) for x in k): i for i, k in enumerate(meta[list(KEY_COLUMNS)].to_numpy())}

    depth_boxes = _read_boxes(root / data_cfg.depth_boxes_csv, "depth bounding-box", log, "depth_boxes", report)
    thermal_boxes = _read_boxes(root / data_cfg.thermal_boxes_csv, "thermal bounding-box", log, "thermal_boxes", report)

    skips = _Skips()
    depth_frames = _list_frames(folders["depth_rgb"], "D", skips)
    thermal_skips = _Skips()
    thermal_frames = _list_frames(folders["thermal_rgb"], "T", thermal_skips)

    # usable thermal candidates per visit: a box and a map file
    by_visit: dict[tuple, list] = {}
    for name, key in thermal_frames.items():
        if name not in thermal_boxes:
            thermal_skips.add("no_box", name)
            continue
        if not (folders["thermal_map"] / name).is_file():
            thermal_skips.add("missing_map_file", name)
            continue
        by_visit.setdefault(key.visit, []).append((name, key))

    rows = []
    rule_counts = {r: 0 for r in MATCH_RULES}
    used_thermal = set()
    for name, key in depth_frames.items():
        boxes = depth_boxes.get(name)
        if not boxes:
            skips.add("no_box", name)
            continue
        mi = visits.get(key.visit)
        if mi is None:
            skips.add("no_metadata_row", name)
            continue
        if not (folders["depth_map"] / name).is_file():
            skips.add("missing_map_file", name)
            continue
        rule, tname = _match_thermal(key, by_visit.get(key.visit, []))
        if rule is None:
            skips.add("no_thermal_frame", name)
            continue
        used_thermal.add(tname)
        tboxes = thermal_boxes[tname]
        for num in sorted(boxes):
            tbox = tboxes.get(num, tboxes[min(tboxes)])
            dbox = boxes[num]
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
                ("depth_map", name, dbox),
                ("thermal_rgb", tname, tbox),
                ("thermal_map", tname, tbox),
            ):
                row[f"{m}_path"] = str(folders[m] / fname)
                for f, v in zip(BOX_FIELDS, box):
                    row[f"{m}_{f}"] = int(v)
            rows.append(row)
            rule_counts[rule] += 1

    base_cols = ["sample_id", "patient", "visit", "label", "match_rule", "appt", "dfu", "box_number"]
    for m in IMAGE_MODALITIES:
        base_cols += [f"{m}_path"] + [f"{m}_{f}" for f in BOX_FIELDS]
    samples = pd.DataFrame(rows, columns=base_cols + ["_random", "_meta_row"])
    if len(samples):
        # unique sample ids: two depth frames of the same view -> append the random number
        dup = samples["sample_id"].duplicated(keep=False)
        samples.loc[dup, "sample_id"] = (
            samples.loc[dup, "sample_id"] + "_" + samples.loc[dup, "_random"].astype(str)
        )
        feat = meta.iloc[samples["_meta_row"].to_numpy()][features].reset_index(drop=True)
        samples = pd.concat([samples[base_cols].reset_index(drop=True), feat], axis=1)
    else:
        samples = pd.DataFrame(columns=base_cols + features)
    if len(samples) == 0:
        raise ValueError(
            f"no samples could be built from {str(root)!r}: skipped depth frames by reason "
            f"{ {k: v['count'] for k, v in skips.data.items()} }; check the folders and box CSVs"
        )

    for rule in MATCH_RULES:
        log.info("DFU samples matched by rule %-17s %d", rule + ":", rule_counts[rule])
    for reason in SKIP_REASONS:
        if reason in skips.data:
            e = skips.data[reason]
            log.info("DFU depth frames skipped (%s): %d, e.g. %s", reason, e["count"], e["examples"])
    for reason, e in thermal_skips.data.items():
        log.info("DFU thermal frames unusable (%s): %d, e.g. %s", reason, e["count"], e["examples"])
    unused = sorted(set(n for lst in by_visit.values() for n, _ in lst) - used_thermal)

    n_visits = int(samples["visit"].nunique())
    report.update(
        {
            "match_rules": rule_counts,
            "skipped": {k: skips.data[k] for k in SKIP_REASONS if k in skips.data},
            "thermal_unusable": thermal_skips.data,
            "thermal_frames_unused": {"count": len(unused), "examples": unused[:N_EXAMPLES]},
            "n_depth_frames": len(depth_frames),
            "n_thermal_frames": len(thermal_frames),
            "n_metadata_rows": len(meta),
            "n_samples": int(len(samples)),
            "n_visits": n_visits,
            "n_patients": int(samples["patient"].nunique()),
            "visits_without_samples": int(len(meta) - n_visits),
            "class_counts": {c: int((samples["label"] == i).sum()) for i, c in enumerate(CLASSES)},
        }
    )
    log.info(
        "DFU manifest: %d samples, %d visits, %d patients, %d feature columns; classes %s",
        report["n_samples"], n_visits, report["n_patients"], len(features), report["class_counts"],
    )
    manifest = Manifest(samples, features, report)
    manifest.validate()
    return manifest
