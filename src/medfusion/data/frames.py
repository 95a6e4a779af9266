"""The four image folders and their frames: the folders checked, frames listed by file name, each file's
header probed once (images.probe_frame, no decoding) and boxes checked against the frame size.

Split out of dfu.py so that the loader only joins; every skip recorded here is counted and named in
`manifest.report` (docs/data_problems.md).
"""

from __future__ import annotations

from pathlib import Path

from medfusion.data.images import JPEG_SIGNATURE, UnreadableFrame, probe_frame
from medfusion.data.names import FrameKey, Skips, parse_frame_name


def check_folders(root: Path, folders: dict) -> None:
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


def list_frames(folder: Path, camera: str, skips: Skips | None) -> tuple[dict[str, FrameKey], set]:
    """(file name -> FrameKey of every usable .png frame of `camera`, every .png name present)."""
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


def nested_frames(folders: dict, n_depth: int) -> list[str]:
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


class FrameChecks:
    """Probes each image file once (header only) and checks boxes against the frame size."""

    def __init__(self, root: Path, max_pixels: int | None = None):
        self.root = root
        self.max_pixels = max_pixels
        self.sizes: dict[str, tuple | None] = {}
        self.unreadable = Skips()
        self.first_message: dict[str, str] = {}
        self.box_state: dict[tuple, str] = {}
        self.jpeg_named = Skips()  # JPEG data under a .png name: read by content, but lossy and 8-bit

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
                with open(path, "rb") as f:  # every listed frame is named .png
                    if f.read(len(JPEG_SIGNATURE)) == JPEG_SIGNATURE:
                        self.jpeg_named.add("jpeg_as_png", self._rel(path))
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

    def fit_boxes(self, name, boxes, rows, paths, box_skips: Skips) -> dict:
        """The boxes of one frame that lie at least partly inside every one of its frames (rgb and map)."""
        kept = {}
        for num in sorted(boxes):
            state = self.fit(boxes[num], paths)
            if (name, num) not in self.box_state:
                self.box_state[(name, num)] = state
                if state != "ok":
                    sizes = " / ".join("{}x{}".format(*self.sizes[str(p)]) for p in paths)
                    box_skips.add("outside_frame" if state == "outside" else "clipped",
                                  f"{name}#{num} (row {rows[num]}: {list(boxes[num])}, frame {sizes})")
            if state != "outside":
                kept[num] = boxes[num]
        return kept
