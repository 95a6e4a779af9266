"""How a process is asked to stop: the Ctrl-C / SIGTERM flag, and the crash points the resume tests kill at.

The flag lets code that sees an error after a stop tell the stop from a failure (a KeyboardInterrupt that
TensorFlow wrapped, or that a __del__ swallowed); the crash points let a test stop a run at an exact moment.
"""

from __future__ import annotations

import os

_crash_counts: dict[str, int] = {}
_interrupted = False


def mark_interrupted() -> None:
    """Called by the Ctrl-C / SIGTERM handler (cli.py)."""
    global _interrupted
    _interrupted = True


def clear_interrupted() -> None:
    global _interrupted
    _interrupted = False


def interrupted() -> bool:
    """True once this process was asked to stop: an error seen afterwards is the stop, not a job failure."""
    return _interrupted


def crash_point(name: str) -> None:
    """Test hook: MEDFUSION_CRASH_AT=name:n kills this process with SIGKILL the n-th time `name` is reached.

    The resume tests use it to stop a run at exact moments (mid-epoch, mid-write); unset, it does nothing.
    """
    spec = os.environ.get("MEDFUSION_CRASH_AT")
    if not spec:
        return
    want, _, nth = spec.rpartition(":")
    if want != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
