"""The bounding-box CSVs -> file name -> {box number: box}, with every dropped row counted and named."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.data.names import Skips, parse_frame_name
from medfusion.data.tables import read_table

BOX_COLUMNS = ("Filename", "Bounding Box Number", "Xmin", "Ymin", "Xmax", "Ymax")
BOX_ROW_PROBLEMS = ("missing_coordinate", "inverted_box", "zero_area_box", "negative_box", "bad_box_number")
MIN_BOX_SIDE = 8  # px; smaller boxes are kept but counted and warned about


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
    """Box numbers; an empty cell is box 1, anything but a whole number is None (the row is skipped)."""
    raw = df["Bounding Box Number"].str.strip()
    nums = pd.to_numeric(raw.where(raw.ne(""), "1"), errors="coerce")
    return [int(v) if pd.notna(v) and float(v).is_integer() else None for v in nums]


def read_boxes(path: Path, what: str, camera: str, log: logging.Logger, report_key: str, report: dict):
    """file name -> {box_number: (xmin, ymin, xmax, ymax)}, and file name -> {box_number: CSV row}.

    Bad rows are counted by kind (BOX_ROW_PROBLEMS, their sum as `invalid_box`), named by row. Rows naming
    a frame of the other camera (`camera` is the letter this file's frames must carry) are `wrong_camera`.
    """
    table = read_table(path, what, BOX_COLUMNS, log)
    df = table.frame
    out: dict[str, dict[int, tuple]] = {}
    rows_of: dict[str, dict[int, int]] = {}
    skips = Skips()
    named = set()  # every parseable file name that has at least one row
    names = df["Filename"].str.strip().tolist()
    nums = _box_numbers(df)
    coords = _coordinates(df, table.separator)
    _refuse_normalised(coords, path)
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
