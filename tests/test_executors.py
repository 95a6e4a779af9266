"""execute(): dependency order, retries, failures reported while the rest goes on, cancellation on Ctrl-C."""

import pytest

from medfusion.executors import execute, failure_report
from medfusion.plan import plan_jobs


class ScriptedExecutor:
    """Runs nothing: a job 'finishes' with a record or raises as scripted (job id -> failures before success)."""

    def __init__(self, failures=None, interrupt_at=None, capacity=2):
        self.failures, self.interrupt_at, self.capacity = dict(failures or {}), interrupt_at, capacity
        self.started, self.cancelled, self._jobs, self._n = [], [], {}, 0

    def has_capacity(self, n_running):
        return n_running < self.capacity

    def submit(self, job, deps):
        assert set(deps) == set(job.deps)  # a job starts only with the records of everything it reads
        self._n += 1
        self._jobs[self._n] = job
        self.started.append(job.id)
        return self._n

    def wait_one(self, handles):
        h = handles[0]
        job = self._jobs.pop(h)
        if job.id == self.interrupt_at:
            raise KeyboardInterrupt
        if self.failures.get(job.id, 0):
            self.failures[job.id] -= 1
            return h, RuntimeError(f"boom in {job.id}")
        return h, {"id": job.id}

    def cancel(self, handles):
        self.cancelled += list(handles)


JOBS = plan_jobs({0: ["metadata", "depth_rgb", "metadata+depth_rgb"], 1: ["metadata"]})


def _run(executor, retries=1):
    done = {}
    failures = execute(JOBS, executor, retries, lambda job, rec: done.setdefault(job.id, rec["attempts"]))
    return done, failures


def test_every_job_runs_once_after_what_it_reads():
    ex = ScriptedExecutor()
    done, failures = _run(ex)
    assert failures == [] and sorted(ex.started) == sorted(j.id for j in JOBS) and len(ex.started) == len(JOBS)
    order = {j: i for i, j in enumerate(ex.started)}
    for job in JOBS:
        assert all(order[d] < order[job.id] for d in job.deps)
    assert set(done.values()) == {1}


def test_a_job_that_fails_once_is_retried_and_finishes():
    done, failures = _run(ScriptedExecutor({"pretrain/fold_0/depth_rgb": 1}), retries=1)
    assert failures == [] and done["pretrain/fold_0/depth_rgb"] == 2


def test_a_job_that_keeps_failing_is_reported_and_only_its_dependents_are_skipped():
    done, failures = _run(ScriptedExecutor({"pretrain/fold_0/depth_rgb": 5}), retries=1)
    by_job = {f.job: f for f in failures}
    assert by_job["pretrain/fold_0/depth_rgb"].attempts == 2
    assert "boom" in by_job["pretrain/fold_0/depth_rgb"].error
    assert by_job["combination/fold_0/depth_rgb"].error.startswith("not run: pretrain/fold_0/depth_rgb failed")
    assert set(by_job) == {"pretrain/fold_0/depth_rgb", "combination/fold_0/depth_rgb",
                           "combination/fold_0/metadata+depth_rgb"}
    assert set(done) == {"forest/fold_0", "combination/fold_0/metadata", "forest/fold_1", "combination/fold_1/metadata"}
    text = failure_report(failures)
    assert "3 job(s) did not finish" in text and "pretrain/fold_0/depth_rgb: RuntimeError: boom" in text


def test_no_retries_means_one_attempt():
    _, failures = _run(ScriptedExecutor({"forest/fold_1": 1}), retries=0)
    assert [f.job for f in failures] == ["forest/fold_1", "combination/fold_1/metadata"]


def test_an_interrupt_cancels_the_running_jobs_and_propagates():
    ex = ScriptedExecutor(interrupt_at="pretrain/fold_0/depth_rgb")
    with pytest.raises(KeyboardInterrupt):
        _run(ex)
    assert ex.cancelled  # what was still running was handed to cancel


def test_finished_jobs_read_back_in_plan_order_whatever_order_they_finished_in(tmp_path):
    """Under Ray jobs finish in any order; everything aggregated from state.json must not see it."""
    from medfusion.runs import RunState

    finished = [("metadata+depth_rgb", 1), ("depth_rgb", 0), ("metadata", 1), ("metadata+depth_rgb", 0),
                ("metadata", 0), ("depth_rgb", 1)]
    orders = []
    for name, jobs in (("a", finished), ("b", finished[::-1])):
        state = RunState(tmp_path / name)
        (tmp_path / name).mkdir()
        for combo, fold in jobs:
            state.mark_done(combo, fold, [])
        orders.append([(j["combination"], j["fold"]) for j in RunState(tmp_path / name).done_jobs()])
    assert orders[0] == orders[1] == [("metadata", 0), ("depth_rgb", 0), ("metadata+depth_rgb", 0),
                                      ("metadata", 1), ("depth_rgb", 1), ("metadata+depth_rgb", 1)]


def test_ray_job_resources_follow_the_cluster_and_reserve_memory_only_when_asked():
    from types import SimpleNamespace

    from medfusion.ray_executor import job_resources

    rt = lambda cpus=0, gpus=-1, mem=0.0: SimpleNamespace(cpus_per_job=cpus, gpus_per_job=gpus,  # noqa: E731
                                                          memory_per_job_gb=mem)
    cpu_node = {"CPU": 2.0, "memory": 16e9}
    gpu_node = {"CPU": 16.0, "GPU": 4.0, "memory": 100e9}
    assert job_resources(rt(), cpu_node) == {"num_cpus": 1, "num_gpus": 0, "max_retries": 0}
    assert job_resources(rt(), gpu_node) == {"num_cpus": 4, "num_gpus": 1, "max_retries": 0}  # 16 CPUs / 4 GPUs
    assert job_resources(rt(mem=10.5), cpu_node)["memory"] == 10_500_000_000
    with pytest.raises(RuntimeError, match="largest offer is 16.0 GB"):
        job_resources(rt(mem=20), cpu_node)
    with pytest.raises(RuntimeError, match="has 2 CPU.*no job could start"):
        job_resources(rt(cpus=4), cpu_node)
    with pytest.raises(RuntimeError, match="0 GPU"):
        job_resources(rt(gpus=1), cpu_node)


def test_ray_address_is_the_flag_then_ray_address_env_then_a_new_local_instance(monkeypatch):
    from types import SimpleNamespace

    from medfusion.ray_executor import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # "local", not Ray's default None, which joins the last `ray start` cluster of the machine, dead or alive
    assert ray_address(SimpleNamespace(ray_address="")) == ("local", "local")
    assert ray_address(SimpleNamespace(ray_address="auto")) == ("auto", "auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # as `ray job submit` sets it for its entrypoint
    assert ray_address(SimpleNamespace(ray_address="")) == ("10.0.0.5:6379", "10.0.0.5:6379 (from RAY_ADDRESS)")
    assert ray_address(SimpleNamespace(ray_address="ray://head:10001"))[0] == "ray://head:10001"


def test_ray_probe_runs_once_whichever_of_replicas_and_numerics_asks_first():
    from types import SimpleNamespace

    from medfusion.ray_executor import RayExecutor

    probes = []
    seen = {"replicas": 3, "numerics": {"precision": "mixed_float16", "jit_compile": True}, "pid": 7}
    fake_ray = SimpleNamespace(
        remote=lambda fn: SimpleNamespace(options=lambda **o: SimpleNamespace(remote=lambda ref: probes.append(ref))),
        get=lambda obj: seen)
    ex = RayExecutor.__new__(RayExecutor)  # no Ray instance: only the probe's bookkeeping is under test
    ex.ray, ex.options, ex.ref, ex.probed, ex.expected = fake_ray, {}, "inputs-ref", {}, None
    assert ex.numerics() == {"precision": "mixed_float16", "jit_compile": True}
    assert ex.expected == 3  # jobs submitted after numerics() alone still check their worker's replica count
    assert ex.replicas() == 3 and probes == ["inputs-ref"]
