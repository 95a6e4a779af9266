"""File locks on what several processes share: a run folder and a pre-training cache entry.

Why: two searches that need the same pre-training must train it once (the second waits for the
first, then reuses the finished entry), and two searches writing one run folder would overwrite
each other's state.json, results and checkpoints.

- ``logs/.pretrain_cache/<key>.lock`` (beside the entry ``<key>/``): held while the entry is
  trained or read (:func:`cache_entry_lock`); a second process waits for it.
- ``logs/.locks/<run_name>.lock``: held for the whole search (:class:`RunLock`); a second search
  with the same --run_name is refused at once, with the holder's pid, host and start time. It
  lives beside the run folder, not inside it, because ``--resume_mode fresh`` moves the folder
  aside and a new run must not find a folder that holds only a lock file.

A lock is an advisory ``fcntl.flock`` on the lock file, which also records its holder. The OS
releases a flock when its process dies, so a lock file left by a killed search is free and is
taken over silently. The holder removes its lock file on release (after checking it is still
its own), so a finished search leaves nothing behind. flock is local to one machine, or spans
machines on file systems that support it (NFS on Linux emulates it with fcntl locks).
Windows has no fcntl: there locking is skipped with a warning, and running one search per run
folder and per cache at a time is up to the user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger("medfusion")

RUN_LOCKS_DIR = ".locks"  # under runtime.logs_dir: one <run_name>.lock per running search
_warned_no_locking = False


def holder_info() -> dict:
    """Who holds a lock: written into the lock file so that a refused process can name it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def describe_holder(info: dict) -> str:
    if not info:
        return "pid unknown: the lock file does not say"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"


def _warn_no_locking() -> None:
    global _warned_no_locking
    if not _warned_no_locking:
        _warned_no_locking = True
        log.warning("file locks are not available on this system (no fcntl, e.g. Windows): run folders and the "
                    "pre-training cache are not protected; run one search per run folder and cache at a time")


class FileLock:
    """An exclusive flock on ``path``; the file holds the holder's pid/host/start time while held."""

    def __init__(self, path: Path, remove_empty_parent: bool = False):
        self.path = Path(path)
        self.remove_empty_parent = remove_empty_parent  # for a folder of lock files only (logs/.locks)
        self._fd: int | None = None
        self._pid: int | None = None  # the process that took the lock (a forked child must not remove it)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _is_current(self, fd: int) -> bool:
        """The locked file is still the one at ``path`` (a releasing holder may have removed it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)

    def _lock(self, blocking: bool) -> bool:
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # the folder was removed between mkdir and open by a releasing holder
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if self._is_current(fd):
                break
            os.close(fd)  # we locked a file its holder had already removed: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder_info()).encode())
        self._fd, self._pid = fd, os.getpid()
        return True

    def try_acquire(self) -> bool:
        """Take the lock if it is free (a stale file of a dead process counts as free); never waits."""
        if self.held:
            return True
        if fcntl is None:
            _warn_no_locking()
            return True
        return self._lock(blocking=False)

    def acquire(self, on_wait=None) -> None:
        """Take the lock, waiting as long as it takes; ``on_wait(holder)`` is called once before waiting."""
        if self.try_acquire():
            return
        if on_wait is not None:
            on_wait(self.holder())
        self._lock(blocking=True)

    def holder(self, attempts: int = 20) -> dict:
        """The holder recorded in the lock file ({} when missing or unreadable after a short retry)."""
        for _ in range(attempts):  # the holder may be between truncating and writing its record
            try:
                info = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(info, dict) and info:
                    return info
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return {}

    def probe(self) -> dict | None:
        """The holder when another process holds the lock, else None; creates nothing."""
        if fcntl is None or self.held:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder()
        finally:
            os.close(fd)  # also releases the probe's own short-lived lock
        return None

    def release(self) -> None:
        """Remove the lock file (when it is still ours) and unlock; safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._pid != os.getpid():  # a forked copy: closing its descriptor leaves the parent's lock alone
            os.close(fd)
            return
        try:
            if self._is_current(fd):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
        if self.remove_empty_parent:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only succeeds when no other search holds a lock there

    def __del__(self):  # a dropped lock object (a Search never run to the end) must not keep its lock
        with contextlib.suppress(Exception):
            self.release()

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RunFolderInUse(RuntimeError):
    """Another process is running a search in this run folder."""


class RunLock(FileLock):
    """The lock of one run name: ``logs/.locks/<run_name>.lock``.

    Used as ``with RunLock(...) as lock:``, which acquires nothing on entry (the search takes
    it with :meth:`acquire_or_refuse` once the data check passed) and releases it on every exit.
    """

    def __init__(self, logs_dir, run_name: str):
        super().__init__(Path(logs_dir) / RUN_LOCKS_DIR / f"{run_name}.lock", remove_empty_parent=True)
        self.run_dir, self.run_name = Path(logs_dir) / run_name, run_name

    def _refusal(self, info: dict) -> RunFolderInUse:
        return RunFolderInUse(
            f"run folder {str(self.run_dir)!r} is in use by another search ({describe_holder(info)}; lock file "
            f"{str(self.path)!r}). Wait until that search finishes (then rerun this command to continue the run), "
            "or start this one with another --run_name.")

    def refuse_if_held(self) -> None:
        """Stop now if another process holds the run (creates no file: the data check has not run yet)."""
        info = self.probe()
        if info is not None:
            raise self._refusal(info)

    def acquire_or_refuse(self) -> None:
        if not self.run_name or self.run_name.startswith(".") or Path(self.run_name).name != self.run_name:
            raise ValueError(f"run name {self.run_name!r} is reserved or not a plain folder name; "
                             "choose another --run_name")
        logs = self.run_dir.parent
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            raise OSError(f"cannot create the logs folder {str(logs)!r}: a file of that name (or above it) is in the "
                          "way; pass a writable folder with --set runtime.logs_dir=PATH") from None
        if not self.try_acquire():
            raise self._refusal(self.holder())

    def __enter__(self) -> "RunLock":
        return self


@contextlib.contextmanager
def cache_entry_lock(cache_dir, key: str, log_: logging.Logger | None = None):
    """Hold ``<cache_dir>/<key>.lock`` while the entry ``<cache_dir>/<key>/`` is trained or read.

    A second process that needs the same entry waits here (and says so), then finds it finished.
    """
    logger = log_ or log
    lock = FileLock(Path(cache_dir) / f"{key}.lock")
    t0, waited = time.time(), []

    def waiting(info: dict) -> None:
        waited.append(True)
        logger.warning("waiting for another process training cache entry %s (%s)", key, describe_holder(info))

    lock.acquire(on_wait=waiting)
    if waited:
        logger.warning("cache entry %s is free after %.1f s of waiting", key, time.time() - t0)
    try:
        yield lock
    finally:
        lock.release()
