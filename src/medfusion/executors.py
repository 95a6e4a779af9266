"""Executors: where a plan's jobs run. `inline` runs them one by one in this process; `ray` runs them as
Ray tasks (a local instance sized to this machine, or an existing cluster), in dependency order.

Both go through `execute`, which owns the rules a user sees: a job starts once every job it reads
has finished; a job that raises is retried (`runtime.job_retries`) and then reported while the
jobs that do not depend on it continue; jobs that depend on a failed job are reported as not run.
Only the driver learns of finished jobs (`on_done`), so only it writes the run's state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from medfusion.plan import Job
from medfusion.runner import JobContext, run_job
from medfusion.stopping import interrupted

log = logging.getLogger("medfusion")


@dataclass
class Failure:
    job: str
    error: str
    attempts: int


class JobsFailed(RuntimeError):
    """Some jobs failed after their retries; the message lists them."""


def execute(jobs: list[Job], executor, retries: int, on_done) -> list[Failure]:
    """Run `jobs` (topologically ordered) on `executor`; returns the failures (empty when all finished)."""
    pending, running, records, failed = list(jobs), {}, {}, {}
    attempts: dict[str, int] = {}
    try:
        while pending or running:
            if interrupted():  # a Ctrl-C swallowed inside a library (e.g. raised in a __del__) stops here
                raise KeyboardInterrupt
            for job in list(pending):
                blocked = [d for d in job.deps if d in failed]
                if blocked:
                    pending.remove(job)
                    failed[job.id] = Failure(job.id, f"not run: {blocked[0]} failed", 0)
                    log.error("job %s not run: the job it reads, %s, failed", job.id, blocked[0])
                elif all(d in records for d in job.deps) and executor.has_capacity(len(running)):
                    pending.remove(job)
                    attempts[job.id] = attempts.get(job.id, 0) + 1
                    running[executor.submit(job, {d: records[d] for d in job.deps})] = job
            if not running:
                break
            handle, result = executor.wait_one(list(running))
            job = running.pop(handle)
            if isinstance(result, BaseException) and interrupted():  # the stop surfaced as the job's error
                raise KeyboardInterrupt from result
            if not isinstance(result, BaseException):
                records[job.id] = result
                on_done(job, {**result, "attempts": attempts[job.id]})
            elif attempts[job.id] <= retries:
                log.warning("job %s failed (attempt %d of %d): %s; retrying", job.id, attempts[job.id], retries + 1,
                            _one_line(result))
                pending.insert(0, job)
            else:
                failed[job.id] = Failure(job.id, _one_line(result), attempts[job.id])
                log.error("job %s failed after %d attempt(s): %s; the jobs that do not need it continue", job.id,
                          attempts[job.id], _one_line(result))
    except BaseException:
        if running:
            log.warning("stopping: cancelling %d running job(s); finished jobs are kept, the run is resumable",
                        len(running))
        executor.cancel(list(running))
        raise
    return list(failed.values())


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError carries the job's own exception
    if cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    return " ".join(text.split())[:2000]


def failure_report(failures: list[Failure], resume_command: str = "the same command") -> str:
    lines = [f"  - {f.job}: {f.error}" + (f" ({f.attempts} attempts)" if f.attempts > 1 else "") for f in failures]
    return (f"{len(failures)} job(s) did not finish:\n" + "\n".join(lines) +
            f"\nEvery other job finished and is recorded; fix the cause and run {resume_command} to run these.")


class InlineExecutor:
    """Jobs one at a time in this process (the default): a job runs inside wait_one."""

    name = "inline"

    def __init__(self, ctx: JobContext):
        self.ctx = ctx
        self._queue: dict[int, tuple] = {}
        self._next = 0

    def replicas(self) -> int:
        return self.ctx.strategy.num_replicas_in_sync

    def numerics(self) -> dict:
        from medfusion.training.precision import resolved

        return resolved(self.ctx.cfg.runtime)

    def has_capacity(self, n_running: int) -> bool:
        return n_running < 1

    def submit(self, job: Job, deps: dict) -> int:
        self._next += 1
        self._queue[self._next] = (job, deps)
        return self._next

    def wait_one(self, handles: list):
        handle = handles[0]
        job, deps = self._queue.pop(handle)
        try:
            return handle, run_job(self.ctx, job, deps)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - every job error is reported, the search goes on
            if interrupted():  # TensorFlow wrapped the Ctrl-C in an error of its own
                raise KeyboardInterrupt from exc
            return handle, exc

    def cancel(self, handles: list) -> None:
        for h in handles:
            self._queue.pop(h, None)

    def close(self) -> None:
        pass


def make_executor(cfg, ctx: JobContext):
    if cfg.runtime.executor == "ray":
        from medfusion.ray_executor import RayExecutor

        return RayExecutor(cfg, ctx)
    return InlineExecutor(ctx)

