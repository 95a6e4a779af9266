"""Run records: what a search leaves in logs/<run>/, read by review, report and predict.

load_run() reads the job records (jobs/<combination>/fold_<k>.json), results.csv, summary.csv,
config.yaml, oracle_reference.csv and comparisons.csv into one RunRecords; the helpers below read
numbers out of a job record the same way for the review's checks and the report's tables.
Keeping them here (not in review.py) lets report.py read a run without importing the review,
so the two modules no longer import each other. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES, MODALITIES, all_combinations

SEVERITIES = ("error", "warning", "info")  # of a review finding, most serious first


# ----------------------------------------------------------------------------- loading
@dataclass
class RunRecords:
    """Everything review and report read from one run folder; absent or unreadable CSVs are None."""

    run_dir: Path
    jobs: list  # job record dicts, sorted by (combination order, fold)
    results: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    config: dict = field(default_factory=dict)
    oracle: pd.DataFrame | None = None
    unreadable: list = field(default_factory=list)  # (path, error)
    comparisons: pd.DataFrame | None = None  # comparisons.csv: paired bootstrap of each fusion vs its best member

    @property
    def combinations(self) -> list[str]:
        return sorted({j["combination"] for j in self.jobs}, key=combination_order)

    @property
    def folds(self) -> list[int]:
        return sorted({int(j["fold"]) for j in self.jobs})

    def job(self, combination: str, fold: int) -> dict | None:
        for j in self.jobs:
            if j["combination"] == combination and int(j["fold"]) == fold:
                return j
        return None


_ORDER = all_combinations(MODALITIES)


def combination_order(name: str):
    """Sort key: canonical combination order (singles first), unknown names (late-fusion rows) last."""
    return (_ORDER.index(name), name) if name in _ORDER else (len(_ORDER), name)


def read_csv(path: Path) -> pd.DataFrame | None:
    """A CSV of the run folder, or None when it is missing or unreadable (a review of a partial run goes on)."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return None


def load_run(run_dir: Path) -> RunRecords:
    """Read a run folder's job records, results, summary and config; raise if there is nothing to review."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist; run a search first "
                                "(python main.py --mode search --run_name NAME), then review logs/NAME")
    paths = sorted(run_dir.glob("jobs/*/fold_*.json"))
    if not paths:
        raise FileNotFoundError(f"run folder {str(run_dir)!r} has no job records (jobs/<combination>/fold_<k>.json); "
                                "run a search first (python main.py --mode search --run_name NAME)")
    jobs, unreadable = [], []
    for p in paths:
        try:
            job = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(job, dict) or "combination" not in job or "fold" not in job:
                raise ValueError("not a job record (no combination/fold)")
            jobs.append(job)
        except (ValueError, OSError) as exc:
            unreadable.append((str(p.relative_to(run_dir)), str(exc)))
    if not jobs:
        raise FileNotFoundError(f"run folder {str(run_dir)!r} has no readable job records ({len(paths)} unreadable); "
                                "run a search first (python main.py --mode search --run_name NAME)")
    jobs.sort(key=lambda j: (combination_order(j["combination"]), int(j["fold"])))
    config = {}
    if (run_dir / "config.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            config = {}
    return RunRecords(run_dir, jobs, read_csv(run_dir / "results.csv"), read_csv(run_dir / "summary.csv"),
                      config if isinstance(config, dict) else {}, read_csv(run_dir / "oracle_reference.csv"),
                      unreadable, read_csv(run_dir / "comparisons.csv"))


def summary_from_jobs(run: RunRecords) -> pd.DataFrame:
    """summary.csv's QWK columns recomputed from the job records (mean, sample std over folds)."""
    rows = [{"combination": j["combination"], "fold": j["fold"], **(j.get("metrics") or {})} for j in run.jobs]
    df = pd.DataFrame(rows)
    out = []
    for combo, g in df.groupby("combination", sort=False):
        q = pd.to_numeric(g.get("qwk"), errors="coerce")
        out.append({"combination": combo, "n_folds": int(g["fold"].nunique()), "qwk_mean": q.mean(),
                    "qwk_std": q.std(ddof=1) if q.count() > 1 else 0.0})
    return pd.DataFrame(out).sort_values("qwk_mean", ascending=False, kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- numbers out of a job record
def to_float(x) -> float | None:
    """float(x), or None for a missing or non-numeric value (records written by older versions)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def job_qwk(job: dict) -> float | None:
    """The job's validation (view-level) QWK."""
    return to_float((job.get("metrics") or {}).get("qwk"))


def class_counts(d, n=len(CLASSES)) -> np.ndarray | None:
    """{"I": n, ...} -> counts in CLASSES order; None when the record has no such dict."""
    if not isinstance(d, dict):
        return None
    return np.array([int(d.get(c, 0) or 0) for c in CLASSES[:n]], dtype=np.int64)


def pred_counts(job: dict, run_dir: Path | None = None) -> np.ndarray | None:
    """Predicted class counts on the validation fold: the record's val_pred_counts, else the predictions CSV."""
    counts = class_counts(job.get("val_pred_counts"))
    if counts is not None:
        return counts
    if run_dir is not None and job.get("predictions_file"):
        pred = read_csv(Path(run_dir) / job["predictions_file"])
        if pred is not None and all(f"p_{c}" in pred.columns for c in CLASSES):
            arg = pred[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(axis=1)
            return np.bincount(arg, minlength=len(CLASSES))
    return None


def stage_records(jobs: list[dict]):
    """(combination, fold, stage name, StageResult dict) for every stage, pre-training once per (fold, modality).

    A modality's pre-training in a fold is shared by every combination containing it, so its
    record is repeated in each job; it is reviewed once, attributed to the single-modality
    combination (the modality's own name).
    """
    seen = set()
    for job in jobs:
        combo, fold = job["combination"], int(job["fold"])
        for m, sr in sorted((job.get("pretrain") or {}).items()):
            if (fold, m) in seen or not isinstance(sr, dict):
                continue
            seen.add((fold, m))
            yield m, fold, sr.get("stage") or f"pretrain {m}", sr
        for name in ("stage1", "stage2"):
            sr = (job.get("stages") or {}).get(name)
            if isinstance(sr, dict):
                yield combo, fold, sr.get("stage") or name, sr


def stage_history(sr: dict, key: str) -> list[float]:
    values = (sr.get("history") or {}).get(key) or []
    out = []
    for v in values:
        f = to_float(v)
        out.append(float("nan") if f is None else f)
    return out


def fmt_num(x, digits=4) -> str:
    f = to_float(x)
    return "n/a" if f is None else f"{f:.{digits}f}"


# ----------------------------------------------------------------------------- key figures
def _stage_figures(sr: dict | None) -> dict | None:
    if not isinstance(sr, dict):
        return None
    return {"best_epoch": sr.get("best_epoch"), "epochs_run": sr.get("epochs_run"),
            "start_val_qwk": to_float(sr.get("start_val_qwk")), "best_val_qwk": to_float(sr.get("best_val_qwk")),
            "lr": sr.get("lr"), "trainable_params": sr.get("trainable_params"), "total_params": sr.get("total_params"),
            "backbone_change": to_float(sr.get("backbone_change"))}


def key_figures(job: dict, run_dir: Path | None = None) -> dict:
    """The numbers a person reads first for one job (logged by the review, tabled by the report)."""
    counts = pred_counts(job, run_dir)
    stages = job.get("stages") or {}
    return {
        "combination": job["combination"], "fold": int(job["fold"]), "n_val": job.get("n_val"), "qwk": job_qwk(job),
        "pretrain": {m: _stage_figures(sr) for m, sr in sorted((job.get("pretrain") or {}).items())},
        "stage1": _stage_figures(stages.get("stage1")),
        "stage2": "skipped" if job.get("stage2_skipped") else _stage_figures(stages.get("stage2")),
        "stage2_kept": job.get("stage2_kept"),
        "fusion_rf_weight": job.get("fusion_rf_weight"),
        "val_pred_counts": None if counts is None else dict(zip(CLASSES, counts.tolist())),
        "val_class_counts": job.get("val_class_counts"),
    }


def format_stage(name: str, s: dict | str | None) -> str:
    """'stage1 ep 4/5 QWK 0.100->0.500' from a key-figures stage entry."""
    if s is None:
        return ""
    if s == "skipped":
        return f"{name} skipped"
    return (f"{name} ep {s['best_epoch']}/{s['epochs_run']} QWK {fmt_num(s['start_val_qwk'], 3)}->"
            f"{fmt_num(s['best_val_qwk'], 3)}")
