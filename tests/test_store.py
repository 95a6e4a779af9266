"""The store's file locks: holder records, refusal messages, stale and killed holders, waiting (no TensorFlow)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from medfusion import store
from medfusion.store import FileLock, RunFolderInUse, RunLock, cache_entry_lock

pytestmark = pytest.mark.skipif(store.fcntl is None, reason="no fcntl (Windows): locking is skipped there")

HOLD = """
import sys, time
from medfusion.store import FileLock
lock = FileLock(sys.argv[1])
assert lock.try_acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder_process(tmp_path):
    """Start a process that holds the lock at a path; yields a function path -> Popen (killed afterwards)."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        p.stdout.close()


def test_a_held_lock_records_its_holder_and_release_removes_the_file(tmp_path):
    lock = FileLock(tmp_path / "sub" / "x.lock")
    assert lock.try_acquire() and lock.held
    info = json.loads(lock.path.read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
    lock.release()
    assert not lock.held and not lock.path.exists() and (tmp_path / "sub").is_dir()  # the folder stays
    lock.release()  # twice is harmless


def test_a_second_lock_on_the_same_file_is_refused_and_names_the_holder(tmp_path):
    first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
    assert first.try_acquire()
    assert not second.try_acquire() and not second.held
    assert second.probe()["pid"] == os.getpid() and second.holder()["pid"] == os.getpid()
    first.release()
    assert second.probe() is None and second.try_acquire()
    second.release()


def test_a_stale_lock_file_is_taken_over_silently(tmp_path, caplog):
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))  # nobody holds a flock
    lock = FileLock(path)
    with caplog.at_level(logging.WARNING, logger="medfusion"):
        assert lock.probe() is None and lock.try_acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid() and not caplog.records
    lock.release()


def test_a_killed_holder_releases_its_lock(tmp_path, holder_process):
    path = tmp_path / "x.lock"
    proc = holder_process(path)
    lock = FileLock(path)
    assert lock.probe()["pid"] == proc.pid and not lock.try_acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert path.exists()  # the killed process left its file behind ...
    assert lock.try_acquire()  # ... and the OS released its flock
    lock.release()


def test_acquire_waits_for_the_holder_then_locks_the_file_that_replaced_it(tmp_path):
    path = tmp_path / "x.lock"
    first = FileLock(path)
    assert first.try_acquire()
    waiter, seen, done = FileLock(path), [], threading.Event()

    def wait_for_it():
        waiter.acquire(on_wait=seen.append)
        done.set()

    thread = threading.Thread(target=wait_for_it, daemon=True)
    thread.start()
    time.sleep(0.3)
    assert not done.is_set() and seen and seen[0]["pid"] == os.getpid()
    first.release()  # removes the file the waiter has open: the waiter must lock a new one
    assert done.wait(10)
    assert waiter.held and path.exists() and waiter._is_current(waiter._fd)
    assert not FileLock(path).try_acquire()
    waiter.release()
    thread.join(5)


def test_run_lock_refuses_a_second_search_with_pid_host_and_what_to_do(tmp_path, holder_process):
    logs = tmp_path / "logs"
    proc = holder_process(logs / store.RUN_LOCKS_DIR / "r.lock")
    with RunLock(logs, "r") as lock:
        for attempt in (lock.refuse_if_held, lock.acquire_or_refuse):
            with pytest.raises(RunFolderInUse) as exc:
                attempt()
            msg = str(exc.value)
            assert f"run folder {str(logs / 'r')!r} is in use by another search (pid {proc.pid} on host " \
                   f"{socket.gethostname()}, started " in msg
            assert str(lock.path) in msg and "--run_name" in msg and "Wait until" in msg
    assert lock.path.exists()  # the other process's lock is left alone
    assert isinstance(RunFolderInUse("x"), RuntimeError)  # cli.py turns it into exit status 2


def test_run_lock_creates_nothing_until_acquired_and_cleans_up_on_exit(tmp_path):
    logs = tmp_path / "logs"
    with RunLock(logs, "r") as lock:
        lock.refuse_if_held()
        assert not logs.exists()  # a search that stops at the data check leaves no logs folder
        lock.acquire_or_refuse()
        assert lock.path == logs / ".locks" / "r.lock" and lock.path.is_file()
        other = RunLock(logs, "other")
        other.acquire_or_refuse()  # another run name is independent
    assert not lock.path.exists() and (logs / ".locks").is_dir()  # "other" still holds a lock there
    other.release()
    assert not (logs / ".locks").exists()


def test_run_lock_is_released_when_the_search_raises(tmp_path):
    with pytest.raises(ValueError):
        with RunLock(tmp_path, "r") as lock:
            lock.acquire_or_refuse()
            raise ValueError("boom")
    assert not lock.held and RunLock(tmp_path, "r").try_acquire()


def test_cache_entry_lock_waits_and_says_for_whom(tmp_path, caplog):
    holder = FileLock(tmp_path / "abc.lock")
    assert holder.try_acquire()
    threading.Timer(0.3, holder.release).start()
    with caplog.at_level(logging.WARNING, logger="medfusion"):
        with cache_entry_lock(tmp_path, "abc") as lock:
            assert lock.held
    assert f"waiting for another process training cache entry abc (pid {os.getpid()} on host" in caplog.text
    assert "cache entry abc is free after" in caplog.text
    assert not (tmp_path / "abc.lock").exists()


def test_cache_entry_lock_without_contention_is_silent(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medfusion"):
        with cache_entry_lock(tmp_path / "cache", "abc"):
            assert (tmp_path / "cache" / "abc.lock").is_file()
    assert not caplog.records and not (tmp_path / "cache" / "abc.lock").exists()


def test_without_fcntl_locking_is_skipped_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(store, "fcntl", None)
    monkeypatch.setattr(store, "_warned_no_locking", False)
    with caplog.at_level(logging.WARNING, logger="medfusion"):
        a, b = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
        assert a.try_acquire() and b.try_acquire() and a.probe() is None
    assert caplog.text.count("file locks are not available") == 1
    assert not (tmp_path / "x.lock").exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_dropping_the_lock_leaves_the_parents_lock_alone(tmp_path):
    lock = FileLock(tmp_path / "x.lock")
    assert lock.try_acquire()
    pid = os.fork()
    if pid == 0:  # the child: what a worker process does when it garbage-collects its copy
        lock.release()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    assert lock.path.exists() and not FileLock(lock.path).try_acquire()
    lock.release()
