"""DFU adapter: the raw on-disk layout (DATA_FORMAT.md) -> a Manifest.

Inputs (names from DataConfig): metadata.csv, the two bounding-box CSVs and the four image
folders depth_rgb / depth_map / thermal_rgb / thermal_map.

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
  lowest-numbered box. Map frames use the box of their rgb frame.
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

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES, IMAGE_MODALITIES
from medfusion.data.images import UNREADABLE_REASONS, UnreadableFrame, probe_frame
from medfusion.data.features import check_label_leaks, type_columns
from medfusion.data.manifest import BOX_FIELDS, Manifest
from medfusion.data.matching import CaseLookup, CaseMatches, check_box_roles, diagnose_no_samples, list_other_files
from medfusion.data.tables import read_table

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
# why a depth frame (or a thermal candidate) was not used; each frame counts once, under the
# first reason in this order
SKIP_REASONS = (
    "unparseable_name",
    "wrong_camera",
    "no_box",
    "no_valid_box",
    "no_metadata_row",
    "missing_map_file",
    "unreadable_frame",
    "box_outside_frame",
    "no_thermal_frame",
)
BOX_ROW_PROBLEMS = ("missing_coordinate", "inverted_box", "zero_area_box", "negative_box", "bad_box_number")
MIN_BOX_SIDE = 8  # px; smaller boxes are kept but counted and warned about
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

    def count(self, reason: str) -> int:
        return self.data.get(reason, {}).get("count", 0)


def _is_missing(v) -> bool:
    if v is None or v is pd.NA:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _int_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    vals = pd.to_numeric(df[col].astype("string").str.strip(), errors="coerce")
    bad = vals.isna() | (vals.fillna(0) % 1 != 0)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(
            f"{str(path)!r}: row {i + 1} (line {i + 2} counting the header) has {col}={df[col].iloc[i]!r}; "
            f"expected an integer ({int(bad.sum())} row(s) affected). Fill in or delete the row."
        )
    return vals.to_numpy().astype(np.int64)


def _blank(series: pd.Series) -> pd.Series:
    """True where a value is missing or only whitespace."""
    return series.isna() | series.astype("string").str.strip().fillna("").eq("")


def _parse_labels(df: pd.DataFrame, label_column: str, path: Path, log: logging.Logger, report: dict) -> np.ndarray:
    labels, bad, normalised = [], [], []
    for i, v in enumerate(df[label_column].tolist()):
        text = "" if _is_missing(v) else str(v)
        s = text.strip().upper()
        if s not in LABEL_INDEX:
            bad.append((i, text))
            labels.append(-1)
            continue
        if s != text:
            normalised.append((i, text, s))
        labels.append(LABEL_INDEX[s])
    if bad:
        listed = "; ".join(f"row {i + 1} (line {i + 2} counting the header) has {label_column}={t!r}"
                           + (" (empty)" if not t.strip() else "") for i, t in bad[:N_EXAMPLES])
        more = f" and {len(bad) - N_EXAMPLES} more" if len(bad) > N_EXAMPLES else ""
        raise ValueError(
            f"{str(path)!r}: {len(bad)} row(s) have a {label_column} value that is not one of {', '.join(CLASSES)}: "
            f"{listed}{more}. Empty and unknown labels are never guessed: correct these rows or delete them "
            "(lower case and surrounding spaces are accepted)."
        )
    if normalised:
        log.warning("%s: %d %s value(s) normalised (surrounding spaces / lower case), e.g. %s", path.name,
                    len(normalised), label_column,
                    ", ".join(f"row {i + 1} {t!r} -> {s!r}" for i, t, s in normalised[:N_EXAMPLES]))
    report["labels_normalised"] = len(normalised)
    return np.asarray(labels, dtype=np.int64)


def _select_features(df: pd.DataFrame, path: Path, data_cfg: DataConfig, log: logging.Logger, report: dict) -> list:
    label_column = data_cfg.label_column
    # compared ignoring letter case: 'healing phase' is as label-derived as 'Healing Phase'
    excluded_cf = {c.casefold() for c in (*NON_FEATURE_COLUMNS, label_column, "__label")}
    leaky_cf = {c.casefold() for c in (*LEAKY_COLUMNS, label_column)}
    columns = [c for c in df.columns if c != "__label"]
    excluded = {c for c in columns if c.casefold() in excluded_cf}
    eligible = [c for c in columns if c not in excluded]
    leaky = set(LEAKY_COLUMNS) | {label_column} | {c for c in columns if c.casefold() in leaky_cf}

    def listing(cols):
        return ", ".join(repr(c) for c in cols)

    requested = [str(c).strip() for c in (getattr(data_cfg, "feature_columns", ()) or ())]
    for c in requested:
        if c in leaky or c.casefold() in leaky_cf:
            raise ValueError(
                f"data.feature_columns requests {c!r}, which is {'the label' if c == label_column else 'derived from the label'}"
                f" and would leak it into the features; remove it (never usable: {listing(sorted(leaky))})"
            )
        if c not in columns:
            raise ValueError(
                f"data.feature_columns requests {c!r}, which is not a column of {str(path)!r}; "
                f"available feature columns: {listing(eligible)}"
            )
    for c in getattr(data_cfg, "exclude_columns", ()) or ():
        if str(c).strip() not in columns:
            raise ValueError(
                f"data.exclude_columns names {str(c).strip()!r}, which is not a column of {str(path)!r}; "
                f"available feature columns: {listing(eligible)}"
            )
    if requested:
        features = list(dict.fromkeys(requested))
        extra = [c for c in features if c in excluded]
        if extra:
            log.warning("%s: data.feature_columns includes identifier/free-text column(s) %s that are not "
                        "features by default", path.name, extra)
    else:
        features = eligible
    exclude = {str(c).strip() for c in (getattr(data_cfg, "exclude_columns", ()) or ())}
    features = [c for c in features if c not in exclude]
    empty = [c for c in features if _blank(df[c]).all()]
    if empty:
        (log.warning if requested else log.info)(
            "%s: %d entirely empty column(s) dropped from the features: %s", path.name, len(empty), empty)
    features = [c for c in features if c not in empty]
    report["empty_columns_dropped"] = empty
    report["feature_columns"] = {"n": len(features), "requested": requested, "excluded": sorted(exclude)}
    if not features:
        log.warning("%s: no metadata feature columns remain (check data.feature_columns / data.exclude_columns)",
                    path.name)
    return features


def _read_metadata(path: Path, data_cfg: DataConfig, log: logging.Logger, report: dict):
    label_column = data_cfg.label_column
    table = read_table(path, "metadata", list(KEY_COLUMNS) + [label_column], log)
    df = table.frame
    report["metadata_separator"] = table.separator
    if not len(df):
        raise ValueError(f"metadata file {str(path)!r} has a header but no rows; it needs one row per wound visit")
    for c in KEY_COLUMNS:
        df[c] = _int_column(df, c, path)
    df["__label"] = _parse_labels(df, label_column, path, log, report)

    dup = df.duplicated(list(KEY_COLUMNS), keep="first")
    n_dup = int(dup.sum())
    dup_keys = [tuple(int(x) for x in k) for k in df.loc[dup, list(KEY_COLUMNS)].to_numpy()[:N_EXAMPLES]]
    conflicts = 0
    if n_dup:
        first_label = df.loc[~dup].set_index(list(KEY_COLUMNS))["__label"]
        for key, lab in zip(df.loc[dup, list(KEY_COLUMNS)].itertuples(index=False), df.loc[dup, "__label"]):
            conflicts += int(first_label.loc[tuple(key)] != lab)
        log.warning(
            "%s: %d duplicated visit key(s) (Patient#, Appt#, DFU#) dropped, first row kept "
            "(%d with a different label than the kept row); e.g. %s",
            path.name, n_dup, conflicts, dup_keys,
        )
        df = df.loc[~dup].reset_index(drop=True)
    report["duplicate_visits"] = n_dup
    report["duplicate_visit_keys"] = [list(k) for k in dup_keys]
    report["duplicate_visits_conflicting_labels"] = conflicts
    features = _select_features(df, path, data_cfg, log, report)
    type_columns(df, features, path, table.separator, log, report)
    check_label_leaks(df, features, df["__label"].to_numpy(), label_column, path)
    return df, features


def _box_problem(c: np.ndarray) -> str | None:
    if np.isnan(c).any():
        return "missing_coordinate"
    if c[2] < c[0] or c[3] < c[1]:
        return "inverted_box"
    if c[2] == c[0] or c[3] == c[1]:
        return "zero_area_box"
    if c[2] <= 0 or c[3] <= 0:
        return "negative_box"
    return None


def _coordinates(df: pd.DataFrame, sep: str) -> np.ndarray:
    cols = df[["Xmin", "Ymin", "Xmax", "Ymax"]].apply(lambda c: c.str.strip())
    if sep != ",":  # a ';'-separated export may write decimal commas
        cols = cols.apply(lambda c: c.str.replace(",", ".", regex=False))
    return cols.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)


def _box_numbers(df: pd.DataFrame) -> list:
    """Box numbers; an empty cell is box 1, anything but a whole number is None (the row is skipped)."""
    raw = df["Bounding Box Number"].str.strip()
    nums = pd.to_numeric(raw.where(raw.ne(""), "1"), errors="coerce")
    return [int(v) if pd.notna(v) and float(v).is_integer() else None for v in nums]


def _read_boxes(path: Path, what: str, camera: str, log: logging.Logger, report_key: str, report: dict):
    """file name -> {box_number: (xmin, ymin, xmax, ymax)}, and file name -> {box_number: CSV row}.

    Bad rows are counted by kind (BOX_ROW_PROBLEMS, their sum as `invalid_box`), named by row. Rows naming
    a frame of the other camera (`camera` is the letter this file's frames must carry) are `wrong_camera`.
    """
    table = read_table(path, what, BOX_COLUMNS, log)
    df = table.frame
    out: dict[str, dict[int, tuple]] = {}
    rows_of: dict[str, dict[int, int]] = {}
    skips = _Skips()
    named = set()  # every parseable file name that has at least one row
    names = df["Filename"].str.strip().tolist()
    nums = _box_numbers(df)
    coords = _coordinates(df, table.separator)
    for i, (name, num, c) in enumerate(zip(names, nums, coords)):
        base = Path(name).name
        try:
            key = parse_frame_name(base)
        except ValueError:
            skips.add("unparseable_name", f"{base!r} (row {i + 1})")
            continue
        if key.camera != camera:
            skips.add("wrong_camera", f"{base} (row {i + 1})")
            continue
        named.add(base)
        problem = "bad_box_number" if num is None else _box_problem(c)
        if problem:
            shown = [None if np.isnan(v) else (int(v) if float(v).is_integer() else float(v)) for v in c]
            shown_num = df["Bounding Box Number"].iat[i] if num is None else num
            example = f"{base}#{shown_num} (row {i + 1}: {shown})"
            skips.add(problem, example)
            skips.add("invalid_box", f"{example} {problem}")
            continue
        boxes = out.setdefault(base, {})
        if num in boxes:
            skips.add("duplicate_box", f"{base}#{num} (row {i + 1})")
            continue
        boxes[num] = tuple(int(round(v)) for v in c)
        rows_of.setdefault(base, {})[num] = i + 1
        if min(c[2] - c[0], c[3] - c[1]) < MIN_BOX_SIDE:
            skips.add("small_box", f"{base}#{num} (row {i + 1}: {int(c[2] - c[0])}x{int(c[3] - c[1])} px)")
    for k in ("invalid_box", "unparseable_name", "duplicate_box", "wrong_camera"):
        if skips.count(k):
            log.warning("%s: %d row(s) dropped (%s), e.g. %s", path.name, skips.count(k), k, skips.data[k]["examples"])
    if skips.count("small_box"):
        log.warning("%s: %d box(es) smaller than %d px on a side kept (their crops are mostly upscaled), e.g. %s",
                    path.name, skips.count("small_box"), MIN_BOX_SIDE, skips.data["small_box"]["examples"])
    counts = {"rows": len(df), "file": path.name}
    for k in ("invalid_box", *BOX_ROW_PROBLEMS, "unparseable_name", "duplicate_box", "small_box", "wrong_camera"):
        counts[k] = skips.count(k)
    report[report_key] = {
        **counts,
        "frames": len(out),
        "examples": {k: v["examples"] for k, v in skips.data.items()},
    }
    return out, rows_of, named


def _list_frames(folder: Path, camera: str, skips: _Skips | None) -> tuple[dict[str, FrameKey], set]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"image folder {str(folder)!r} not found; check data.data_dir and data.folders in the data config"
        )
    frames, present = {}, set()
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
        frames[p.name] = key
    return frames, present


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
        self.unreadable = _Skips()
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
        for p in paths:
            w, h = self.sizes[str(p)]
            xmin, ymin, xmax, ymax = box
            if xmax <= 0 or ymax <= 0 or xmin >= w or ymin >= h:
                return "outside"
            if xmin < 0 or ymin < 0 or xmax > w or ymax > h:
                state = "clipped"
        return state


def _fit_boxes(name, boxes, rows, paths, checks: _FrameChecks, box_skips: _Skips) -> dict:
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


def load_dfu(data_dir, data_cfg: DataConfig, log: logging.Logger | None = None) -> Manifest:
    """Read the DFU layout in `data_dir` (file and folder names from `data_cfg`) into a Manifest.

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
    folders = {m: root / data_cfg.folders.get(m, m) for m in IMAGE_MODALITIES}
    for m, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(
                f"image folder {str(folder)!r} ({m}) not found; every sample needs all four image folders. "
                "Check data.data_dir and data.folders in the data config"
            )
    report: dict = {}

    meta_path = root / data_cfg.metadata_csv
    meta, features = _read_metadata(meta_path, data_cfg, log, report)
    visits = {tuple(int(x) for x in k): i for i, k in enumerate(meta[list(KEY_COLUMNS)].to_numpy())}

    depth_csv, thermal_csv = root / data_cfg.depth_boxes_csv, root / data_cfg.thermal_boxes_csv
    depth_boxes, depth_rows, depth_named = _read_boxes(depth_csv, "depth bounding-box", "D", log, "depth_boxes", report)
    thermal_boxes, thermal_rows, thermal_named = _read_boxes(
        thermal_csv, "thermal bounding-box", "T", log, "thermal_boxes", report)
    check_box_roles(report, depth_csv, thermal_csv)

    skips = _Skips()
    depth_frames, depth_present = _list_frames(folders["depth_rgb"], "D", skips)
    thermal_skips = _Skips()
    thermal_frames, thermal_present = _list_frames(folders["thermal_rgb"], "T", thermal_skips)
    checks = _FrameChecks(root, data_cfg.max_frame_pixels)
    depth_box_skips, thermal_box_skips = _Skips(), _Skips()
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
        rule, tname = _match_thermal(key, by_visit.get(key.visit, []))
        if rule is None:
            skips.add("no_thermal_frame", name)
            continue
        used_thermal.add(tname)
        tboxes = usable_thermal_boxes[tname]
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
                ("depth_map", mname, dbox),
                ("thermal_rgb", tname, tbox),
                ("thermal_map", thermal_map_name[tname], tbox),
            ):
                row[f"{m}_path"] = str(folders[m] / fname)
                for f, v in zip(BOX_FIELDS, box):
                    row[f"{m}_{f}"] = int(v)
            rows.append(row)
            rule_counts[rule] += 1

    _check_appt_numbering(meta, depth_frames, meta_path, log, report)
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
        feat = meta.iloc[samples["_meta_row"].to_numpy()][features].reset_index(drop=True)
        samples = pd.concat([samples[base_cols].reset_index(drop=True), feat], axis=1)
    else:
        samples = pd.DataFrame(columns=base_cols + features)
    if len(samples) == 0:
        reasons = {k: v["count"] for k, v in skips.data.items()}
        other = {m: list_other_files(folders[m]) for m in ("depth_rgb", "thermal_rgb")}
        hints = diagnose_no_samples(reasons, len(depth_frames), other, report, set(meta["Appt#"].tolist()),
                                    {k.appt for k in depth_frames.values()})
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
            (log.warning if reason in ("unreadable_frame", "box_outside_frame") else log.info)(
                "DFU depth frames skipped (%s): %d, e.g. %s", reason, e["count"], e["examples"])
    for reason, e in thermal_skips.data.items():
        log.info("DFU thermal frames unusable (%s): %d, e.g. %s", reason, e["count"], e["examples"])
    unused = sorted(set(n for lst in by_visit.values() for n, _ in lst) - used_thermal)

    # missing values of the feature columns over the metadata rows the samples use
    used_meta = meta.iloc[used_meta_rows]
    missing = {c: int(_blank(used_meta[c]).sum()) for c in features}
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
