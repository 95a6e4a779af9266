"""`--executor ray`: every job a Ray task, on a local Ray instance or an existing cluster.

The crops, the dataset and the config go into Ray's object store once per run (`ray.put`); each
task receives the reference, so a worker maps the crops from shared memory instead of receiving a
copy per job. Jobs read and write the run folder and the pre-training cache directly, so on a
cluster both must be on a file system every node mounts at the same path (docs/ray.md).

A task that uses GPUs runs in a fresh worker process (`max_calls=1`): TensorFlow binds the GPUs
it sees at start-up and keeps their memory, so a reused worker would train on the previous task's
GPU. CPU-only tasks reuse their workers (TensorFlow is imported once per worker).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from medfusion.runner import JobContext, run_job

log = logging.getLogger("medfusion")

_WORKER: dict = {}  # per worker process: the configured strategy


def _worker_context(payload: dict, want: int | None) -> JobContext:
    """This worker's devices (configured once per process) and the run's shared inputs."""
    cfg = payload["cfg"]
    if "strategy" not in _WORKER:
        from medfusion.runs import setup_console
        from medfusion.training.devices import configure_strategy, configure_tensorflow

        setup_console(cfg.runtime.verbosity)
        configure_tensorflow(cfg, threads=payload["threads"])
        _WORKER["strategy"] = configure_strategy(cfg.runtime)
    strategy = _WORKER["strategy"]
    if want is not None and strategy.num_replicas_in_sync != want:
        raise RuntimeError(f"this worker has {strategy.num_replicas_in_sync} replica(s), the run was planned with "
                           f"{want}: the global batch would change; give every job the same devices "
                           "(--gpus_per_job, --cpu_replicas)")
    return JobContext(cfg, payload["manifest"], payload["crops"], Path(payload["run_dir"]),
                      Path(payload["cache_dir"]), strategy)


def ray_job(payload: dict, replicas: int, job, deps: dict) -> dict:
    """The Ray task: one planned job in a worker process."""
    return run_job(_worker_context(payload, replicas), job, deps)


def ray_probe(payload: dict) -> dict:
    """How many replicas a job's worker gets and the precision it resolves (run once, with a job's resources,
    before planning: the driver may have no GPU)."""
    from medfusion.training.precision import resolved

    ctx = _worker_context(payload, None)
    return {"replicas": ctx.strategy.num_replicas_in_sync, "numerics": resolved(ctx.cfg.runtime), "pid": os.getpid()}


def _passed_env() -> dict:
    """The variables workers must share with the driver: TensorFlow switches and medfusion's test hooks."""
    return {k: v for k, v in os.environ.items() if k.startswith(("TF_", "MEDFUSION_"))}


def ray_address(rt) -> tuple[str, str]:
    """The address ray.init gets, and how the log names it: --ray_address, else $RAY_ADDRESS (what `ray job
    submit` sets for its entrypoint), else a new local instance. Never Ray's own default, which joins the last
    `ray start` cluster of this machine (a dead one hangs the driver) instead of the documented local instance."""
    if rt.ray_address:
        return rt.ray_address, rt.ray_address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], f"{os.environ['RAY_ADDRESS']} (from RAY_ADDRESS)"
    return "local", "local"


def job_resources(rt, res: dict) -> dict:
    """Ray task options for one job from runtime's per-job settings and the cluster's resources.

    Memory is reserved only when asked for (runtime.memory_per_job_gb): Ray then starts no more jobs on a
    node than its memory holds, where by CPUs alone two EfficientNetB3 Stage 2 jobs (~9 GB each on a CPU)
    would share one 16 GB machine."""
    gpus = rt.gpus_per_job if rt.gpus_per_job >= 0 else (1 if res.get("GPU", 0) > 0 else 0)
    cpus = rt.cpus_per_job or (max(1, int(res.get("CPU", 1) // max(res.get("GPU", 0), 1))) if gpus else 1)
    if cpus > res.get("CPU", 0) or gpus > res.get("GPU", 0):
        raise RuntimeError(f"--cpus_per_job {cpus} / --gpus_per_job {gpus}: the Ray cluster has "
                           f"{res.get('CPU', 0):g} CPU(s) and {res.get('GPU', 0):g} GPU(s); no job could start")
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0}
    if rt.memory_per_job_gb > 0:
        memory = int(rt.memory_per_job_gb * 1e9)
        if memory > res.get("memory", 0):
            raise RuntimeError(f"--memory_per_job_gb {rt.memory_per_job_gb:g}: the Ray cluster's largest offer is "
                               f"{res.get('memory', 0) / 1e9:.1f} GB of task memory; no job could start (lower it, "
                               "or 0 to reserve none)")
        options["memory"] = memory
    return options


class RayExecutor:
    name = "ray"

    def __init__(self, cfg, ctx: JobContext):
        import ray

        rt = cfg.runtime
        self.ray, self.started = ray, False
        address, where = ray_address(rt)
        if not ray.is_initialized():
            term = signal.getsignal(signal.SIGTERM)
            log.info("ray: %s", "starting a local instance" if address == "local" else f"connecting to {where}")
            ray.init(address=address, include_dashboard=False, log_to_driver=True,
                     logging_level=logging.WARNING, runtime_env={"env_vars": _passed_env()})
            # Ray's failure handler takes SIGTERM (it dumps a stack and dies with 15); a preempted driver must
            # instead stop like Ctrl-C: stop its tasks and leave the run resumable (cli.py's handler)
            signal.signal(signal.SIGTERM, term)
            self.started = True
        res = ray.cluster_resources()
        self.options = job_resources(rt, res)
        cpus, gpus = self.options["num_cpus"], self.options["num_gpus"]
        # a GPU job in a fresh worker each time: TensorFlow keeps the GPUs (and memory) it started with
        self._task = ray.remote(max_calls=1 if gpus else 0)(ray_job).options(**self.options)
        # the run's inputs go into the object store once; every task gets this one reference
        self.ref = ray.put({"cfg": cfg, "manifest": ctx.manifest, "crops": ctx.crops, "run_dir": str(ctx.run_dir),
                            "cache_dir": str(ctx.cache_dir), "threads": cpus})
        self.expected: int | None = None
        self.probed: dict = {}
        log.info("ray: %s, %g CPU(s), %g GPU(s); each job gets %d CPU(s) and %d GPU(s), so up to %d at once",
                 "local instance" if address == "local" else f"cluster at {where}", res.get("CPU", 0),
                 res.get("GPU", 0), cpus, gpus,
                 int(min(res.get("CPU", 0) // cpus, res.get("GPU", 0) // gpus if gpus else 1e9)))

    def _probe(self) -> dict:
        """What a job's worker sees (one probe task with a job's resources, run once)."""
        if not self.probed:
            probe = self.ray.remote(ray_probe).options(**self.options)
            self.probed = self.ray.get(probe.remote(self.ref))
            self.expected = int(self.probed["replicas"])  # every job checks its worker has as many
        return self.probed

    def replicas(self) -> int:
        """The replica count of a job's worker; jobs must all match it."""
        return int(self._probe()["replicas"])

    def numerics(self) -> dict:
        """The precision and XLA setting a job's worker resolves."""
        return dict(self._probe()["numerics"])

    def has_capacity(self, n_running: int) -> bool:
        return True  # Ray queues tasks until a worker has the resources

    def submit(self, job, deps: dict):
        return self._task.remote(self.ref, self.expected, job, deps)

    def wait_one(self, handles: list):
        ready, _ = self.ray.wait(handles, num_returns=1)
        ref = ready[0]
        try:
            return ref, self.ray.get(ref)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a task's error (or its worker's death) is the job's failure
            return ref, exc

    def cancel(self, handles: list) -> None:
        """Stop the running tasks by ending this driver's Ray job (close()); ray.cancel only on a caller's Ray.

        Ray 2.60's ray.cancel can race a task that is just finishing and then abort the driver ("Tried to
        complete task that was not pending"; bench/ray_cancel_race.py reproduces it), which turned a SIGTERM's
        clean exit 130 into a crash. A driver that disconnects ends its job, and Ray stops the job's workers
        at once (measured on a local instance and a `ray start` cluster; tests/test_ray.py checks the cluster)."""
        if self.started:
            return  # close() disconnects: Ray stops every task of this job
        for ref in handles:
            try:
                self.ray.cancel(ref, force=True)
            except Exception as exc:  # noqa: BLE001 - already finished or gone
                log.debug("cancel %s: %s", ref, exc)

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
