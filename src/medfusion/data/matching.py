"""Joining box rows, frames and maps by file name, and saying why nothing joined.

Names are matched exactly first; a name that matches only when letter case is ignored (a box row
`10_P257001ADMW.png` for the file `10_p257001admw.PNG`) is matched too, counted and warned about,
unless the case-folded name is ambiguous. When no sample can be built, `diagnose_no_samples` turns
the skip counts into the likely cause: a separator, swapped box files or folders, another format,
visit numbers that do not meet.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

N_EXAMPLES = 5


class CaseLookup:
    """Exact name, else the one name equal to it ignoring letter case, else None."""

    def __init__(self, names):
        self.names = set(names)
        folded = Counter(n.casefold() for n in self.names)
        self.by_fold = {n.casefold(): n for n in self.names if folded[n.casefold()] == 1}

    def find(self, name: str) -> str | None:
        if name in self.names:
            return name
        return self.by_fold.get(name.casefold())

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None


class CaseMatches:
    """Counts the joins that needed case-insensitive matching (one example per pair)."""

    def __init__(self):
        self.count = 0
        self.examples: list[str] = []

    def note(self, wanted: str, found: str | None, what: str) -> str | None:
        if found is not None and found != wanted:
            self.count += 1
            if len(self.examples) < N_EXAMPLES:
                self.examples.append(f"{wanted} ~ {found} ({what})")
        return found


def list_other_files(folder: Path) -> list[str]:
    """Files in an image folder that are not .png (ignored by the loader)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() != ".png"
                  and not p.name.startswith("."))


def check_box_roles(report: dict, depth_csv: Path, thermal_csv: Path) -> None:
    """Stop when a box file names mostly frames of the other camera (the two files swapped, or one wrong)."""
    wrong = {}
    for key, path, letter, other in (("depth_boxes", depth_csv, "D", "T"), ("thermal_boxes", thermal_csv, "T", "D")):
        b = report[key]
        usable = b["rows"] - b["unparseable_name"]
        if b["wrong_camera"] and b["wrong_camera"] * 2 > usable:
            wrong[key] = (path, letter, other, b)
    if not wrong:
        return
    parts = [f"{str(path)!r} is the {key.split('_')[0]} box file (camera letter {letter}) but {b['wrong_camera']} of "
             f"its {b['rows']} rows name camera-{other} frames (e.g. {', '.join(b['examples']['wrong_camera'][:2])})"
             for key, (path, letter, other, b) in wrong.items()]
    swapped = len(wrong) == 2
    raise ValueError(
        ("the depth and thermal box files look swapped: " if swapped else "a box file names the other camera's "
         "frames: ") + "; ".join(parts) + ". "
        + ("Swap the two files, or exchange data.depth_boxes_csv and data.thermal_boxes_csv."
           if swapped else "Point data.depth_boxes_csv / data.thermal_boxes_csv at the right files.")
    )


def _top(skips: dict) -> tuple[str, int]:
    return max(skips.items(), key=lambda kv: kv[1]) if skips else ("", 0)


def diagnose_no_samples(depth_skips: dict, n_depth: int, other_files: dict, report: dict,
                        meta_appts: set, depth_appts: set) -> list[str]:
    """Likely causes of an empty manifest, most specific first (skip counts by reason -> sentences)."""
    hints = []
    for folder, files in other_files.items():
        if files and n_depth == 0:
            hints.append(f"{folder} holds no .png frame but {len(files)} other file(s) (e.g. {files[:3]}); "
                         "medfusion reads PNG files named as in DATA_FORMAT.md")
    reason, n = _top(depth_skips)
    if reason == "wrong_camera":
        hints.append(f"{n} frame(s) in the depth_rgb folder carry the thermal camera letter T: the depth and thermal "
                     "folders look swapped (check data.folders)")
    elif reason == "unparseable_name":
        hints.append(f"{n} file name(s) in depth_rgb do not follow "
                     "'{random}_P{patient:3d}{appt:2d}{dfu}{B|A}{D|T}{R|M|L}{Z|W}.png'")
    elif reason == "no_box":
        b = report.get("depth_boxes", {})
        hints.append(f"{n} depth frame(s) have no row in the depth box file ({b.get('rows', 0)} rows, "
                     f"{b.get('frames_not_found', 0)} of its file names not in depth_rgb, e.g. "
                     f"{b.get('examples', {}).get('frames_not_found', [])[:2]}): is data.depth_boxes_csv the right file?")
    elif reason == "no_valid_box":
        hints.append(f"every box row of {n} depth frame(s) is invalid (see the invalid_box rows above)")
    elif reason == "no_metadata_row":
        shift = " (the metadata has no Appt# 0: does it number visits from 1?)" if 0 not in meta_appts and \
            0 in depth_appts else ""
        hints.append(f"{n} depth frame(s) have no metadata row with their (Patient#, Appt#, DFU#){shift}; frame "
                     f"appointments {sorted(depth_appts)[:6]}, metadata Appt# {sorted(meta_appts)[:6]}")
    elif reason == "missing_map_file":
        hints.append(f"{n} depth frame(s) have no file of the same name in depth_map")
    elif reason == "unreadable_frame":
        hints.append(f"{n} depth frame(s) or their maps cannot be used as images (see 'unreadable image files')")
    elif reason == "no_thermal_frame":
        hints.append(f"{n} depth frame(s) have no usable thermal frame of the same visit (see 'thermal frames "
                     "unusable')")
    elif reason:
        hints.append(f"most depth frames were skipped as {reason} ({n})")
    return hints
