"""What every figure module shares: matplotlib on the Agg backend (no display), PNGs written atomically.

Also the tolerant number reading the plots use on job records (a missing value is NaN, never an error).
"""

from __future__ import annotations

import io
from pathlib import Path

from medfusion.runs import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Render to memory, then write atomically (temporary sibling + rename)."""
    buf = io.BytesIO()
    constrained = fig.get_layout_engine() is not None  # already laid out; "tight" would draw it twice
    fig.savefig(buf, format="png", dpi=110, bbox_inches=None if constrained else "tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _qwk(job) -> float:
    return _float((job.get("metrics") or {}).get("qwk"))
