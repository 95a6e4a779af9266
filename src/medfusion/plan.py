"""A search as a graph of jobs: what must be computed, and what each job waits for.

Per fold k: ``forest/fold_k`` (the metadata forest), ``pretrain/fold_k/<modality>`` (one image
pre-training per image modality), and ``combination/fold_k/<combination>`` (a fusion model, or
the forest alone for ``metadata``), which waits for the forest and the pre-trainings of its
modalities. Aggregation and the review run in the driver once every job has ended.

A job is data (a name, its fold, what it waits for, a content key) so an executor can ship it
to another process or machine, retry it, and a resumed search can tell a finished job from a
changed one. The graph's shape depends only on the combinations and folds, so it can be shown
(``--mode plan``) before any data is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from medfusion.constants import MODALITIES, all_combinations, canonical_combination, image_modalities_of

KINDS = ("forest", "pretrain", "combination")


@dataclass(frozen=True)
class FoldSplit:
    """Positional indices of one fold: outer train/val, and the train part's fitting/selection split."""
    train: np.ndarray
    val: np.ndarray
    fit: np.ndarray
    sel: np.ndarray


@dataclass(frozen=True)
class Job:
    kind: str  # forest | pretrain | combination
    fold: int
    name: str = ""  # the modality of a pre-training, the combination of a combination job
    deps: tuple = ()  # ids of the jobs whose results this one reads
    key: str = ""  # content key: a hash of everything that determines the result ("" until computed)
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # indices, seed: what the job reads

    @property
    def id(self) -> str:
        return job_id(self.kind, self.fold, self.name)


def resolve_combinations(cfg) -> list[str]:
    """The configured combinations (canonical names), or every non-empty combination of the modalities."""
    if cfg.search.combinations:
        combos = {canonical_combination(str(c).split("+")) for c in cfg.search.combinations}
        combos |= {m for c in combos for m in c.split("+")}  # single-modality baselines always run alongside
        order = all_combinations(MODALITIES)
        return sorted(combos, key=order.index)
    return all_combinations(cfg.search.modalities)


def job_id(kind: str, fold: int, name: str = "") -> str:
    return f"{kind}/fold_{fold}" + (f"/{name}" if name else "")


def content_key(payload: dict) -> str:
    """A short stable hash of a JSON-able description of a job's inputs."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fold_jobs(k: int, todo: list[str]) -> list[Job]:
    """The jobs fold k needs for the combinations `todo`, each after the jobs it reads."""
    jobs = []
    if any("metadata" in c.split("+") for c in todo):
        jobs.append(Job("forest", k))
    jobs += [Job("pretrain", k, m) for m in _ordered_modalities(todo)]
    for combo in todo:
        deps = ([job_id("forest", k)] if "metadata" in combo.split("+") else []) + \
               [job_id("pretrain", k, m) for m in image_modalities_of(combo)]
        jobs.append(Job("combination", k, combo, tuple(deps)))
    return jobs


def _ordered_modalities(combos: list[str]) -> list[str]:
    seen: list[str] = []
    for c in combos:
        for m in image_modalities_of(c):
            if m not in seen:
                seen.append(m)
    return seen


def plan_jobs(folds: dict[int, list[str]]) -> list[Job]:
    """Every fold's jobs, fold by fold (a topological order: each job after those it reads)."""
    return [j for k in sorted(folds) for j in fold_jobs(k, folds[k])]


def check_plan(jobs: list[Job]) -> None:
    """Each job's dependencies exist and come before it; ids are unique."""
    seen: set[str] = set()
    for j in jobs:
        if j.id in seen:
            raise ValueError(f"plan: job {j.id} appears twice")
        missing = [d for d in j.deps if d not in seen]
        if missing:
            raise ValueError(f"plan: job {j.id} needs {missing}, which are not planned before it")
        seen.add(j.id)


def critical_path(jobs: list[Job], seconds: dict[str, float] | None = None) -> tuple[list[str], float]:
    """The longest chain of dependent jobs: (job ids, its length in seconds or, without durations, in jobs).

    With unlimited workers a search cannot finish faster than this chain.
    """
    # without durations every job counts 1; ties go to the chain through the job with the most image branches
    cost = (lambda j: seconds.get(j.id, 0.0)) if seconds else (  # noqa: E731
        lambda j: 1.0 + 1e-3 * len(image_modalities_of(j.name) if j.kind == "combination" else [j.name] * (j.kind == "pretrain")))
    best: dict[str, tuple[float, list[str]]] = {}
    for j in jobs:  # topological order
        prev = max((best[d] for d in j.deps), key=lambda t: t[0], default=(0.0, []))
        best[j.id] = (prev[0] + cost(j), prev[1] + [j.id])
    if not best:
        return [], 0.0
    length, path = max(best.values(), key=lambda t: t[0])
    return path, length


def describe_plan(jobs: list[Job], seconds: dict[str, float] | None = None) -> str:
    """Job counts per kind, the widest level (how many jobs can run at once) and the critical path."""
    counts = {k: sum(j.kind == k for j in jobs) for k in KINDS}
    level: dict[str, int] = {}
    for j in jobs:
        level[j.id] = 1 + max((level[d] for d in j.deps), default=0)
    width = max((sum(v == lv for v in level.values()) for lv in set(level.values())), default=0)
    path, length = critical_path(jobs, seconds)
    size = f"{length:.0f} s" if seconds else f"{len(path)} jobs"
    lines = [f"{len(jobs)} jobs: " + ", ".join(f"{n} {k}" for k, n in counts.items()),
             f"dependency depth {max(level.values(), default=0)}; up to {width} jobs can run at once",
             f"critical path ({size}): " + " -> ".join(path)]
    return "\n".join(lines)


LEDGER = "jobs.csv"  # logs/<run>/jobs.csv: one row per job attempt that ended (written by the driver only)


def measured_seconds(run_dir) -> dict[str, float]:
    """Job id -> seconds of its last finished attempt, from a run's jobs.csv ({} without one)."""
    import pandas as pd
    from pathlib import Path

    path = Path(run_dir) / LEDGER
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    done = df[df["status"] == "done"]
    return {str(j): float(s) for j, s in zip(done["job"], done["seconds"])}


def run_plan(cfg, log) -> int:
    """--mode plan: the job graph of this config (no data read), with measured times if the run has them."""
    from pathlib import Path

    folds = {k: resolve_combinations(cfg) for k in range(cfg.search.cv_folds)}
    jobs = plan_jobs(folds)
    check_plan(jobs)
    log.warning("plan of %s: %d combinations x %d folds\n%s", cfg.runtime.run_name, len(folds[0]),
                cfg.search.cv_folds, describe_plan(jobs))
    seconds = measured_seconds(Path(cfg.runtime.logs_dir) / cfg.runtime.run_name)
    if seconds:
        known = sum(j.id in seconds for j in jobs)
        path, length = critical_path(jobs, seconds)
        total = sum(seconds.get(j.id, 0.0) for j in jobs)
        log.warning("measured in %s (%d of %d jobs): %.0f s of jobs in all; critical path %.0f s: %s; with enough "
                    "workers the search takes at least %.0f%% of its one-worker time", LEDGER, known, len(jobs),
                    total, length, " -> ".join(path), 100 * length / total if total else 0)
    return 0
