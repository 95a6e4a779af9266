"""Locks between processes, end to end through main.py: the shared pre-training cache and the run folder.

- Two searches started at once with the same settings and different run names train each
  pre-training once in total (the second waits for the cache entry's lock, then reuses it).
- A second search in a run folder that another search is using is refused at once (exit 2),
  naming the other process; a lock file left by a dead process does not block.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medfusion import store
from tests.harness import FAST, ROOT, run_search

pytestmark = pytest.mark.skipif(store.fcntl is None, reason="no fcntl (Windows): locking is skipped there")

TRAINED = re.compile(r"cache key (\w+) \(training")
REUSED = re.compile(r"cache key (\w+) \(found, reused")


def _cmd(logs: Path, data: Path, run_name: str, *extra) -> list[str]:
    """The command tests/harness.py's run_search runs, for starting searches side by side."""
    return [sys.executable, str(ROOT / "main.py"), "--mode", "search", "--config", str(ROOT / "configs/demo.yaml"),
            "--data_dir", str(data), "--cv_folds", "2", "--run_name", run_name,
            "--set", f"runtime.logs_dir={logs}", "--set", "data.demo=false", *FAST, "--combinations", "depth_rgb",
            *extra]


def _start(logs: Path, data: Path, run_name: str, *extra) -> subprocess.Popen:
    return subprocess.Popen(_cmd(logs, data, run_name, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return out, err


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, f"the first search ended before {path} appeared: {proc.communicate()[1][-3000:]}"
        assert time.time() - t0 < timeout, f"{path} did not appear within {timeout} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_two_searches_at_once_train_each_pretraining_once(tmp_path, tiny_data):
    logs = tmp_path / "logs"
    stale = logs / store.RUN_LOCKS_DIR / "a.lock"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))  # left by a killed search
    # one inline, one on Ray: the cache lock is taken by the job, in whichever process runs it
    procs = [_start(logs, tiny_data, name, *extra) for name, extra in (("a", ()), ("b", ("--executor", "ray")))]
    for p in procs:
        _finish(p)
    logs_text = {name: (logs / name / "run.log").read_text() for name in ("a", "b")}
    trained = [key for text in logs_text.values() for key in TRAINED.findall(text)]
    reused = [key for text in logs_text.values() for key in REUSED.findall(text)]
    assert len(trained) == 2 and len(set(trained)) == 2, (trained, reused)  # one pre-training per fold, in total
    assert sorted(reused) == sorted(trained)  # the other search reused each of them
    for text in logs_text.values():
        waited = re.findall(r"waiting for another process training cache entry (\w+) \(pid (\d+)", text)
        assert all(key in trained for key, _ in waited)
    cache = logs / ".pretrain_cache"
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted(trained)
    assert not list(cache.glob("*.lock")) and not (logs / store.RUN_LOCKS_DIR).exists()  # every lock released


@pytest.mark.slow
def test_a_second_search_in_a_run_folder_in_use_is_refused(tmp_path, tiny_data):
    logs = tmp_path / "logs"
    first = _start(logs, tiny_data, "r")
    try:
        _wait_for(logs / "r" / "run.log", first)
        assert (logs / store.RUN_LOCKS_DIR / "r.lock").is_file()
        for mode in ("auto", "fresh"):
            second = subprocess.run(_cmd(logs, tiny_data, "r", "--resume_mode", mode), capture_output=True, text=True,
                                    timeout=300, cwd=ROOT)
            text = second.stdout + second.stderr
            assert second.returncode == 2, text[-3000:]
            assert f"run folder {str(logs / 'r')!r} is in use by another search (pid {first.pid} on host " in text
            assert "another --run_name" in text and "Traceback" not in text
            assert first.poll() is None, "the first search finished before the second was refused; test is void"
        _finish(first)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert not [p for p in logs.iterdir() if p.name.startswith("r.")]  # "fresh" moved nothing aside
    assert (logs / "r" / "summary.csv").is_file() and not (logs / store.RUN_LOCKS_DIR).exists()


@pytest.mark.slow
def test_a_stale_run_lock_does_not_block(copy_run, tiny_data):
    logs = copy_run.parent
    stale = logs / store.RUN_LOCKS_DIR / f"{copy_run.name}.lock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))  # nobody holds its flock
    # the shared search's own settings (tests/conftest.py), re-scored from its predictions: no training
    _, proc = run_search(logs, tiny_data, "--combinations", "metadata+depth_rgb", "--resume_mode", "from_predictions",
                         run_name=copy_run.name)
    assert "in use by another search" not in proc.stdout + proc.stderr and not stale.exists()
