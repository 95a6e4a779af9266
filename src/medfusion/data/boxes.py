"""The bounding-box CSVs -> file name -> {box number: box}, with every dropped row counted and named."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.data.features import PLACEHOLDERS
from medfusion.data.names import Skips, parse_frame_name
from medfusion.data.tables import read_table

BOX_COLUMNS = ("Filename", "Bounding Box Number", "Xmin", "Ymin", "Xmax", "Ymax")
COORDINATES = ("Xmin", "Ymin", "Xmax", "Ymax")
BOX_ROW_PROBLEMS = ("missing_coordinate", "inverted_box", "zero_area_box", "negative_box", "bad_box_number")
BOX_NUMBERS = (1, 2, 3)  # DATA_FORMAT.md: a frame has up to 3 boxes
MIN_BOX_SIDE = 8  # px; smaller boxes are kept but counted and warned about
N_SHOWN = 5
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


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


def _coordinates(df: pd.DataFrame, sep: str, path: Path, what: str) -> np.ndarray:
    """(N, 4) coordinates; an empty cell or a placeholder (features.PLACEHOLDERS) is NaN, so its row is skipped
    as missing_coordinate. Any other value that is not a plain finite number is an error naming each one: read
    as missing it would silently drop its box, and `inf` cannot be rounded to a pixel."""
    out = np.full((len(df), len(COORDINATES)), np.nan)
    bad = []
    for j, col in enumerate(COORDINATES):
        for i, raw in enumerate(df[col].tolist()):
            v = raw.strip()
            if not v or v.casefold() in PLACEHOLDERS:
                continue
            if sep != ",":  # a ';'-separated export may write decimal commas
                v = v.replace(",", ".")
            if _PLAIN_NUMBER.match(v):
                out[i, j] = float(v)
            else:
                bad.append((i, col, raw))
    if bad:
        bad.sort()
        shown = ", ".join(f"row {i + 1} {col} {raw!r}" for i, col, raw in bad[:N_SHOWN])
        comma = any("," in raw for _, _, raw in bad)
        raise ValueError(
            f"{what} file {str(path)!r}: {len(bad)} coordinate value(s) are not numbers: {shown}"
            + (" ..." if len(bad) > N_SHOWN else "") + ". Coordinates are pixels written as plain numbers"
            + (" with a decimal point (a decimal comma needs a ';'-separated file)" if comma else "")
            + ", without units. Correct them, or empty the cell (the row is then skipped as missing_coordinate)")
    return out


def _refuse_normalised(coords: np.ndarray, path: Path) -> None:
    """Boxes in 0..1 are fractions of the frame (YOLO style): rounded to pixels they vanish or become 1 px."""
    finite = coords[np.isfinite(coords)]
    if finite.size and finite.max() <= 1.0 and (finite % 1 != 0).any():
        i = int(np.flatnonzero(np.isfinite(coords).all(axis=1))[0]) if np.isfinite(coords).all(axis=1).any() else 0
        raise ValueError(
            f"{str(path)!r}: every coordinate lies between 0 and 1 (row {i + 1}: {coords[i].tolist()}): the boxes look "
            "normalised to the frame size, but medfusion needs pixel coordinates (Xmin, Ymin, Xmax, Ymax in pixels). "
            "Multiply by each frame's width and height.")


def _box_numbers(df: pd.DataFrame) -> list:
    """Box numbers; an empty cell is box 1, anything but a whole number in BOX_NUMBERS is None (the row is skipped)."""
    raw = df["Bounding Box Number"].str.strip()
    nums = pd.to_numeric(raw.where(raw.ne(""), "1"), errors="coerce")
    return [int(v) if pd.notna(v) and float(v).is_integer() and int(v) in BOX_NUMBERS else None for v in nums]


def _patient_numbers(df: pd.DataFrame) -> list:
    """The Patient# cell of each row ('' when the file has no such column): checked against the file name."""
    if "Patient#" not in df.columns:
        return [""] * len(df)
    return [v.strip() for v in df["Patient#"].tolist()]


def _patient_contradicts(cell: str, patient: int) -> bool:
    """A non-empty Patient# that is not the file name's patient (zero padding ignored: '003' == '3')."""
    if not cell:
        return False
    try:
        return float(cell) != patient
    except ValueError:
        return True


def read_boxes(path: Path, what: str, camera: str, log: logging.Logger, report_key: str, report: dict):
    """file name -> {box_number: (xmin, ymin, xmax, ymax)}, and file name -> {box_number: CSV row}.

    Bad rows are counted by kind (BOX_ROW_PROBLEMS, their sum as `invalid_box`), named by row. Rows naming
    a frame of the other camera (`camera` is the letter this file's frames must carry) are `wrong_camera`;
    rows whose Patient# is not the patient of their Filename are `patient_mismatch` (the box may belong to
    another frame, so it is never used). A coordinate that is not a number stops with an error.
    """
    table = read_table(path, what, BOX_COLUMNS, log)
    df = table.frame
    out: dict[str, dict[int, tuple]] = {}
    rows_of: dict[str, dict[int, int]] = {}
    skips = Skips()
    named = set()  # every parseable file name that has at least one row
    names = df["Filename"].str.strip().tolist()
    nums = _box_numbers(df)
    patients = _patient_numbers(df)
    coords = _coordinates(df, table.separator, path, what)
    _refuse_normalised(coords, path)
    for i, (name, num, c, pcell) in enumerate(zip(names, nums, coords, patients)):
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
        if _patient_contradicts(pcell, key.patient):
            shown_num = df["Bounding Box Number"].iat[i] if num is None else num
            skips.add("patient_mismatch", f"{base}#{shown_num} (row {i + 1}: Patient# {pcell!r}, the file name "
                                          f"says patient {key.patient})")
            continue
        # checked again after rounding to pixels: (10.2, 5, 10.4, 9) has no width left
        problem = "bad_box_number" if num is None else (_box_problem(c) or _box_problem(np.round(c)))
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
    _log_skips(path, skips, log)
    report[report_key] = _counts(len(df), path, out, skips)
    return out, rows_of, named


def _counts(n_rows: int, path: Path, out: dict, skips: Skips) -> dict:
    counts = {"rows": n_rows, "file": path.name}
    for k in ("invalid_box", *BOX_ROW_PROBLEMS, "unparseable_name", "duplicate_box", "small_box", "wrong_camera",
              "patient_mismatch"):
        counts[k] = skips.count(k)
    return {**counts, "frames": len(out), "examples": {k: v["examples"] for k, v in skips.data.items()}}


# what to do, added to the log line of a dropped row's kind
_ADVICE = {"patient_mismatch": "; correct the Patient# or the Filename of these rows"}


def _log_skips(path: Path, skips: Skips, log: logging.Logger) -> None:
    for k in ("invalid_box", "unparseable_name", "duplicate_box", "wrong_camera", "patient_mismatch"):
        if skips.count(k):
            log.warning("%s: %d row(s) dropped (%s), e.g. %s%s", path.name, skips.count(k), k,
                        skips.data[k]["examples"], _ADVICE.get(k, ""))
    if skips.count("bad_box_number"):
        log.warning("%s: %d row(s) have a Bounding Box Number that is not a whole number %d..%d (a frame has up to "
                    "%d boxes; an empty cell is box 1) and were dropped, e.g. %s; correct the numbers",
                    path.name, skips.count("bad_box_number"), BOX_NUMBERS[0], BOX_NUMBERS[-1], len(BOX_NUMBERS),
                    skips.data["bad_box_number"]["examples"])
    if skips.count("small_box"):
        log.warning("%s: %d box(es) smaller than %d px on a side kept (their crops are mostly upscaled), e.g. %s",
                    path.name, skips.count("small_box"), MIN_BOX_SIDE, skips.data["small_box"]["examples"])
