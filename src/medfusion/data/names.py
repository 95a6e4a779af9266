"""Image file names of the DFU layout, and the counter every loader step records its skips in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

N_EXAMPLES = 5  # file names / rows kept per skip reason

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


class Skips:
    """Counts per reason, with the first N_EXAMPLES items named."""

    def __init__(self):
        self.data: dict[str, dict] = {}

    def add(self, reason: str, example: str) -> None:
        entry = self.data.setdefault(reason, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < N_EXAMPLES:
            entry["examples"].append(example)

    def count(self, reason: str) -> int:
        return self.data.get(reason, {}).get("count", 0)
