"""The run folder logs/<run_name>/: creation, atomic writes and per-fold log files.

Every file is written to a temporary sibling and renamed into place, so a crash leaves
either the old or the new version of a file, never a truncated one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from medfusion.stopping import crash_point

LOGGER_NAME = "medfusion"


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text[: len(text) // 2])
            crash_point(f"write:{path.name}")  # half the bytes are in the temporary file
            fh.write(text[len(text) // 2:])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_csv(path: Path, df: pd.DataFrame, float_format: str | None = "%.6f") -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format=float_format)
    atomic_write_text(path, buf.getvalue())


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def prepare_run_dir(logs_dir: str | Path, run_name: str, log: logging.Logger) -> Path:
    """Create logs/<run_name>/; an existing non-empty folder is moved aside, never deleted."""
    if not run_name or run_name.startswith(".") or Path(run_name).name != run_name:
        raise ValueError(f"run name {run_name!r} is reserved or not a plain folder name (names starting with '.' "
                         "belong to medfusion, e.g. the shared pre-training cache); choose another --run_name")
    logs_dir = Path(logs_dir)
    for what, path, fix in (("logs folder", logs_dir, "pass a folder with --set runtime.logs_dir=PATH"),
                            ("run folder", logs_dir / run_name, "move the file away or choose another --run_name")):
        if path.exists() and not path.is_dir():
            raise OSError(f"the {what} {str(path)!r} is a file, not a folder; {fix}")
    try:
        logs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot create the logs folder {str(logs_dir)!r}: {exc.strerror}; "
                      "pass a writable folder with --set runtime.logs_dir=PATH") from None
    run_dir = logs_dir / run_name
    if run_dir.exists() and any(run_dir.iterdir()):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = logs_dir / f"{run_name}.{stamp}"
        n = 1
        while aside.exists():
            aside = logs_dir / f"{run_name}.{stamp}-{n}"
            n += 1
        run_dir.rename(aside)
        log.warning("run folder %s existed: moved aside to %s (nothing was deleted)", run_dir, aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK):
        raise OSError(f"the run folder {str(run_dir)!r} is not writable; pass --set runtime.logs_dir=PATH")
    return run_dir


_CONSOLE_LEVEL = {0: logging.WARNING, 1: logging.INFO, 2: logging.INFO, 3: logging.DEBUG}


def setup_console(verbosity: int) -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for h in list(log.handlers):
        if getattr(h, "_medfusion_console", False):
            log.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setLevel(_CONSOLE_LEVEL.get(verbosity, logging.INFO))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler._medfusion_console = True
    log.addHandler(handler)
    return log


class FileLog:
    """Attach logs/<run>/<name>.log to the medfusion logger while a block of work runs."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.handler: logging.Handler | None = None

    def __enter__(self):
        self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logging.getLogger(LOGGER_NAME).addHandler(self.handler)
        return self

    def write(self, text: str) -> None:
        """A log line for this file only (e.g. something already shown on the console)."""
        self.handler.handle(logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, "%s", (text,), None))

    def __exit__(self, *exc):
        logging.getLogger(LOGGER_NAME).removeHandler(self.handler)
        self.handler.close()
        return False


# ----------------------------------------------------------------------------- run state


def file_record(path: Path) -> dict:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


class RunState:
    """logs/<run>/state.json: which (combination, fold) jobs are finished, and the files each vouches for.

    A job counts as finished only while every file it lists still exists with the recorded
    size and checksum, so a deleted or truncated output is redone rather than trusted.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "state.json"
        self.data = {"version": 1, "jobs": {}}
        if self.path.exists():
            self.data = read_run_json(self.path, state_problem)

    @staticmethod
    def key(combination: str, fold: int) -> str:
        return f"{combination}|fold_{fold}"

    def save(self) -> None:
        atomic_write_json(self.path, self.data)

    def mark_done(self, combination: str, fold: int, files: list[str], **extra) -> None:
        self.data["jobs"][self.key(combination, fold)] = {
            "combination": combination, "fold": fold, "status": "done",
            "files": {rel: file_record(self.run_dir / rel) for rel in files}, **extra}
        self.save()

    def files(self, combination: str, fold: int) -> list[str]:
        """The files a finished job vouches for (relative to the run folder); [] if not finished."""
        return list((self.data["jobs"].get(self.key(combination, fold)) or {}).get("files", {}))

    def forget(self, combination: str, fold: int) -> None:
        self.data["jobs"].pop(self.key(combination, fold), None)
        self.save()

    def problem(self, combination: str, fold: int, only: tuple = ()) -> str | None:
        """None when the job is finished and intact; otherwise why it is not.

        `only`: check just the files under these folders (e.g. the weights, for from_models).
        """
        job = self.data["jobs"].get(self.key(combination, fold))
        if job is None or job.get("status") != "done":
            return "not finished"
        for rel, rec in job["files"].items():
            if only and not rel.startswith(only):
                continue
            path = self.run_dir / rel
            if not path.is_file():
                return f"{rel} is missing"
            if path.stat().st_size != rec["size"] or file_record(path)["sha256"] != rec["sha256"]:
                return f"{rel} does not match its recorded checksum"
        return None

    def done_jobs(self) -> list[dict]:
        """Finished jobs by (fold, combination order): the order jobs finished in (any, under Ray) changes nothing."""
        from medfusion.constants import MODALITIES, all_combinations

        order = {c: i for i, c in enumerate(all_combinations(MODALITIES))}
        done = [j for j in self.data["jobs"].values() if j.get("status") == "done"]
        return sorted(done, key=lambda j: (int(j["fold"]), order.get(j["combination"], len(order)), j["combination"]))


def remove_stale_temporaries(folder: Path) -> int:
    """Delete half-written temporary files a killed process left behind (ours only: '.<name>.*.tmp*')."""
    n = 0
    for p in Path(folder).rglob(".*.tmp*"):
        if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".tmp.npz")):
            p.unlink()
            n += 1
    return n


# ----------------------------------------------------------------------------- reading a run folder back

CONTINUE_HINT = ("To continue, use --resume_mode fresh (the old folder is moved aside, nothing is deleted) or a new "
                 "--run_name.")


class RunFolderError(ValueError):
    """A file of an existing run folder that cannot be used; the message names it and how to continue."""


def _damaged(path: Path, what: str) -> RunFolderError:
    return RunFolderError(f"run file {str(path)!r} {what}. {CONTINUE_HINT}")


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _damaged(path, f"is not UTF-8 text (byte offset {exc.start}): it was damaged or overwritten") from None
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})") from None


def read_run_json(path: Path, check=None):
    """Parse a JSON file of the run folder; `check(obj)` returns what is wrong with its structure, or None."""
    text = _read_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "is empty" if not text.strip() else f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        raise _damaged(path, what + ": it was cut short or edited") from None
    problem = check(obj) if check else None
    if problem:
        raise _damaged(path, f"does not hold what medfusion wrote there: {problem}")
    return obj


def read_run_yaml(path: Path) -> dict:
    import yaml

    from medfusion.yamlio import load_yaml

    text = _read_text(path)
    try:
        obj = load_yaml(text)
    except yaml.YAMLError as exc:
        raise _damaged(path, f"is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise _damaged(path, f"does not hold a mapping of config sections (found {type(obj).__name__})")
    return obj


def read_run_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise _damaged(path, f"is not a readable CSV table ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise _damaged(path, f"cannot be read ({exc.strerror or exc})") from None


def state_problem(obj) -> str | None:
    """What is wrong with the structure of a state.json, or None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("jobs"), dict):
        return "expected an object with a 'jobs' mapping"
    for key, job in obj["jobs"].items():
        if not isinstance(job, dict) or not isinstance(job.get("files"), dict) or "combination" not in job \
                or not isinstance(job.get("fold"), int):
            return f"job {key!r} lacks its combination, fold or files"
        for rel, rec in job["files"].items():
            if not isinstance(rec, dict) or not isinstance(rec.get("size"), int) or not isinstance(rec.get("sha256"), str):
                return f"job {key!r}: the record of {rel!r} lacks its size or checksum"
    return None


def folds_problem(obj) -> str | None:
    """What is wrong with the structure of a folds.json (sample_id -> fold), or None."""
    if not isinstance(obj, dict) or not obj:
        return "expected a non-empty mapping sample_id -> fold"
    bad = [(k, v) for k, v in obj.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        return f"{len(bad)} sample(s) have no valid fold number, e.g. {bad[0][0]!r}: {bad[0][1]!r}"
    return None


def check_run_folder(run_dir: Path) -> None:
    """Before continuing a run: every file it will read back parses and has the expected structure."""
    run_dir = Path(run_dir)
    read_run_yaml(run_dir / "config.yaml")
    if (run_dir / "state.json").exists():
        read_run_json(run_dir / "state.json", state_problem)
    if (run_dir / "folds.json").exists():
        read_run_json(run_dir / "folds.json", folds_problem)


def read_run_arrays(path: Path, loader):
    """`loader(path)` for an .npz of the run folder; a damaged file becomes a RunFolderError naming it."""
    import zipfile

    try:
        return loader(path)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise _damaged(path, f"is not a readable array file ({type(exc).__name__}: {exc})") from None


def stage_folder_problem(folder: Path) -> str | None:
    """What makes a checkpoint or pre-training cache folder unreadable (a file cut short, edited), or None.

    Reads every .json and checks every .npz's CRCs, so a damaged entry is found before it is trusted.
    """
    import zipfile

    for p in sorted(Path(folder).rglob("*")):
        if p.name.startswith(".") or not p.is_file():
            continue  # our temporaries; remove_stale_temporaries deals with them
        try:
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.suffix == ".npz":
                with zipfile.ZipFile(p) as z:
                    bad = z.testzip()
                if bad:
                    return f"{p.relative_to(folder)}: member {bad} fails its checksum"
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            return f"{p.relative_to(folder)}: {type(exc).__name__}: {exc}"
    return None


def set_aside(folder: Path, tag: str = "damaged") -> Path:
    """Rename a folder to '<name>.<tag>-<timestamp>' beside it (nothing is deleted); returns the new path."""
    folder = Path(folder)
    aside = folder.with_name(f"{folder.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside = folder.with_name(f"{folder.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    folder.rename(aside)
    return aside
