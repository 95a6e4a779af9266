"""--executor ray end to end, on a local Ray instance and on a `ray start --head` cluster (this machine's CPUs):
same bytes as inline; a stopped or killed driver leaves no task running and resumes without retraining; a
failing job is retried, then reported while the rest finish."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.harness import DETERMINISTIC_ENV, ROOT, run_search, search_command

pytestmark = pytest.mark.slow

COMBO = ("--combinations", "metadata+thermal_map")
RAY = ("--executor", "ray")
OUTPUTS = ("results.csv", "summary.csv", "comparisons.csv", "calibration.csv")


def _prediction_files(run):
    return sorted(p.relative_to(run) for p in (run / "predictions").rglob("*.csv"))


def test_ray_gives_the_bytes_inline_gives(tmp_path, tiny_data):
    inline, _ = run_search(tmp_path / "inline", tiny_data, *COMBO, "--deterministic", env=DETERMINISTIC_ENV)
    ray, proc = run_search(tmp_path / "ray", tiny_data, *COMBO, *RAY, "--deterministic", env=DETERMINISTIC_ENV)
    assert "ray: local instance" in proc.stderr + proc.stdout
    files = _prediction_files(inline)
    assert files == _prediction_files(ray) and len(files) == 10  # 3 combinations + 2 baselines, 2 folds
    for rel in [*OUTPUTS, *files]:
        assert (inline / rel).read_bytes() == (ray / rel).read_bytes(), rel
    ledger = pd.read_csv(ray / "jobs.csv")
    assert sorted(ledger["job"]) == sorted(pd.read_csv(inline / "jobs.csv")["job"])
    assert (ledger["status"] == "done").all() and len(ledger) == 10  # 2 forests, 2 pre-trainings, 6 combinations
    assert ledger["pid"].nunique() >= 1 and os.getpid() not in set(ledger["pid"])


def _wait_for_finished_jobs(state, proc, n, timeout=600):
    t = time.time()
    while time.time() - t < timeout:
        if state.is_file():
            try:
                jobs = json.loads(state.read_text())["jobs"]
            except json.JSONDecodeError:  # never half-written (atomic), but be safe
                jobs = {}
            if len(jobs) >= n:
                return sorted(jobs)
        assert proc.poll() is None, "the search ended before it could be killed"
        time.sleep(0.2)
    raise AssertionError("no finished job in time")


@pytest.fixture
def ray_cluster(tmp_path):
    """A Ray cluster that outlives its drivers, as `ray start --head` makes one on a head node; yields its
    address and the environment a driver connects with (token auth off: a throwaway cluster on loopback).

    Stopped by a signal, it leaves /tmp/ray/ray_current_cluster naming the dead cluster, as a head node that
    was killed does; the local-instance tests that run after it must not try to join it (ray_address())."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "ray_start.log"
    with open(log, "w") as out:
        head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                                 f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                                 "--disable-usage-stats"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield head, f"127.0.0.1:{port}", env
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # every process `ray start` started (SIGTERM: a 33 s graceful stop)
        head.wait(timeout=60)


def _gone(pids, timeout=30) -> set:
    """The pids still alive after up to `timeout` s."""
    deadline, alive = time.time() + timeout, set(pids)
    while alive and time.time() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
        time.sleep(0.1)
    return alive


def _files(run) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def test_a_stopped_or_killed_ray_driver_resumes_with_the_same_command(tmp_path, tiny_data, ray_cluster):
    head, address, env = ray_cluster
    cmd = search_command(tmp_path / "logs", tiny_data, *COMBO, *RAY, "--ray_address", address)
    run = tmp_path / "logs" / "e2e"
    start = lambda: subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,  # noqa: E731
                                     text=True, start_new_session=True, env=env)
    # SIGTERM (a preempted node) after the first finished job: exit 130, resumable, and none of the run's tasks
    # left running on the cluster, which lives on
    proc = start()
    _wait_for_finished_jobs(run / "state.json", proc, 1)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert f"ray: cluster at {address}" in out and "Resume with the same command" in out, out[-3000:]
    workers = set(pd.read_csv(run / "jobs.csv")["pid"])
    assert not _gone(workers), f"the run's Ray workers {workers} kept running after their driver stopped"
    before = _files(run)
    time.sleep(3)  # a task still training would write an epoch's checkpoint or log line by now
    assert _files(run) == before and head.poll() is None
    # the same command, SIGKILLed once more jobs are finished: the cluster ends the dead driver's job itself
    proc = start()
    _wait_for_finished_jobs(run / "state.json", proc, 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not _gone(set(pd.read_csv(run / "jobs.csv")["pid"]))
    finished = sorted(json.loads((run / "state.json").read_text())["jobs"])  # as the kill left it
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-3000:]
    results = pd.read_csv(run / "results.csv")
    assert len(results) == len(results.drop_duplicates(["combination", "fold"])) == 10  # 3 combos + 2 baselines x 2
    for key in finished:
        combo, fold = key.split("|fold_")
        assert f"fold {fold} job {combo}: finished earlier, outputs verified; skipped" in out
        assert f"--- fold {fold} job {combo}\n" not in out, f"{key} was retrained"


def test_a_failing_job_is_retried_then_reported_while_the_others_finish(tmp_path, tiny_data):
    failing = "combination/fold_1/thermal_map"
    env = {"MEDFUSION_FAIL_JOB": failing}
    run, proc = run_search(tmp_path / "logs", tiny_data, *COMBO, *RAY, check=False, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"job {failing} failed (attempt 1 of 2)" in out and "retrying" in out
    assert "1 job(s) did not finish" in out and f"- {failing}: InjectedFailure" in out and "(2 attempts)" in out
    results = pd.read_csv(run / "results.csv")
    rows = set(zip(results["combination"], results["fold"]))
    assert ("thermal_map", 1) not in rows
    assert {("metadata", 0), ("metadata", 1), ("thermal_map", 0), ("metadata+thermal_map", 0),
            ("metadata+thermal_map", 1)} <= rows
    ledger = pd.read_csv(run / "jobs.csv")
    assert ledger.loc[ledger["job"] == failing, "status"].tolist() == ["failed"]
    # the same command without the fault runs only what is missing
    again, proc2 = run_search(tmp_path / "logs", tiny_data, *COMBO, *RAY)
    out2 = proc2.stdout + proc2.stderr
    assert "--- fold 1 job thermal_map\n" in out2 and "--- fold 0 job thermal_map\n" not in out2
    assert len(pd.read_csv(again / "results.csv")) == 10


def test_a_job_that_fails_once_succeeds_on_its_retry_inline(tmp_path, tiny_data):
    env = {"MEDFUSION_FAIL_JOB": "pretrain/fold_0/thermal_map:1", "MEDFUSION_FAIL_DIR": str(tmp_path / "fail")}
    run, proc = run_search(tmp_path / "logs", tiny_data, *COMBO, env=env)
    out = proc.stdout + proc.stderr
    assert "job pretrain/fold_0/thermal_map failed (attempt 1 of 2)" in out
    ledger = pd.read_csv(run / "jobs.csv").set_index("job")
    assert ledger.loc["pretrain/fold_0/thermal_map", "attempts"] == 2
