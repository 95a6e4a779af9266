"""Running one planned job, in the driver (inline) or in a worker process (Ray): the same code either way.

A job reads only its declared inputs (the context's data and crops, its fold's indices, the
results of the jobs it depends on, which live in the run folder and the pre-training cache) and
returns a small record to the driver. It writes its own outputs (predictions, job record, bundle,
forest arrays, cache entry) atomically; the driver alone writes state.json, results.csv and
summary.csv, so a job that dies leaves nothing the driver will trust.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medfusion.constants import image_modalities_of
from medfusion.evaluation.scoring import job_scores
from medfusion.evaluation.visits import PROBA_COLUMNS
from medfusion.plan import FoldSplit, Job
from medfusion.runs import FileLog, atomic_write_csv, atomic_write_json
from medfusion.stopping import interrupted

log = logging.getLogger("medfusion")

FAIL_ENV = "MEDFUSION_FAIL_JOB"  # test hook: "<job id>[:n]" raises in that job (the first n attempts; all if no n)
FAIL_DIR_ENV = "MEDFUSION_FAIL_DIR"  # where attempts are counted across processes (needed with :n)


class InjectedFailure(RuntimeError):
    """Raised by the MEDFUSION_FAIL_JOB test hook."""


@dataclass
class JobContext:
    """What every job of one search reads: the config, the dataset, the crops, the folders, the devices."""
    cfg: object
    manifest: object
    crops: dict
    run_dir: Path
    cache_dir: Path
    strategy: object = None


def job_record_path(combo: str, k: int) -> str:
    return f"jobs/{combo}/fold_{k}.json"


def prediction_path(combo: str, k: int) -> str:
    return f"predictions/{combo}/fold_{k}.csv"


def write_job_outputs(run_dir: Path, manifest, combo: str, k: int, va, proba, job: dict) -> list[str]:
    """Predictions and the job record of a combination job; returns their paths relative to the run folder."""
    samples = manifest.samples.iloc[va]
    pred = pd.DataFrame({"sample_id": samples["sample_id"].to_numpy(), "patient": samples["patient"].to_numpy(),
                         "visit": samples["visit"].to_numpy(), "y_true": manifest.labels[va],
                         **{c: proba[:, i] for i, c in enumerate(PROBA_COLUMNS)}})
    pred_rel, job_rel = prediction_path(combo, k), job_record_path(combo, k)
    atomic_write_csv(Path(run_dir) / pred_rel, pred)
    job.update(job_scores(pred, job.get("decision")), predictions_file=pred_rel)
    atomic_write_json(Path(run_dir) / job_rel, job)
    s = job["metrics"]
    log.info("  fold %d %s: QWK %.4f (visits %.4f, %d) kappa %.4f acc %.4f F1-macro %.4f; predicted classes %s",
             k, combo, s["qwk"], s["visit_qwk"], s["n_val_visits"], s["kappa"], s["accuracy"], s["f1_macro"],
             job["val_pred_counts"])
    return [pred_rel, job_rel]


def _maybe_fail(job: Job) -> None:
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    want, _, times = spec.partition(":")
    if want != job.id:
        return
    if times:
        counter = Path(os.environ[FAIL_DIR_ENV]) / job.id.replace("/", "__")
        counter.parent.mkdir(parents=True, exist_ok=True)
        n = int(counter.read_text()) if counter.is_file() else 0
        counter.write_text(str(n + 1))
        if n >= int(times):
            return
    raise InjectedFailure(f"injected failure in job {job.id} ({FAIL_ENV}={spec})")


@contextlib.contextmanager
def _traceback_logged(job: Job):
    """A job's error goes into its fold's log with its traceback; the driver reports it in one line."""
    try:
        yield
    except Exception:
        if not interrupted():  # after Ctrl-C the error is the stop itself (cli.py), not something to debug
            log.error("job %s raised:\n%s", job.id, traceback.format_exc().rstrip())
        raise


def run_job(ctx: JobContext, job: Job, deps: dict) -> dict:
    """Run one job with its fold's log files attached; returns the record the driver keeps.

    `deps`: the records of the jobs it depends on (job id -> record), as returned by run_job.
    """
    from medfusion.training.precision import configure

    t = time.time()
    with FileLog(ctx.run_dir / f"fold_{job.fold}.log"), FileLog(ctx.run_dir / "run.log"), _traceback_logged(job):
        _maybe_fail(job)
        if job.kind == "forest":
            record = _forest(ctx, job)
        else:
            runtime = {**configure(ctx.cfg.runtime), "replicas": ctx.strategy.num_replicas_in_sync,
                       "executor": ctx.cfg.runtime.executor, "host": socket.gethostname(), "pid": os.getpid()}
            record = _pretrain(ctx, job) if job.kind == "pretrain" else _combination(ctx, job, deps, runtime)
    gc.collect()
    return {**record, "id": job.id, "kind": job.kind, "fold": job.fold, "name": job.name, "key": job.key,
            "seconds": round(time.time() - t, 2), "pid": os.getpid(), "host": socket.gethostname()}


def _forest(ctx, job) -> dict:
    from medfusion.jobs import forest_job

    e = job.extra
    forest_job(ctx, job.fold, e["train"], e["val"], e["seed"])
    return {}


def _pretrain(ctx, job) -> dict:
    from medfusion.jobs import pretrain_job

    e = job.extra
    _, result, key, reused = pretrain_job(ctx, job.fold, job.name, e["fit"], e["sel"], e["seed"], key=job.key or None)
    return {"result": result.to_dict(), "cache_key": key, "reused": reused}


def _combination(ctx, job, deps, runtime: dict) -> dict:
    """One (combination, fold) job: the fusion model (or the forest alone), decision rule, bundle, predictions."""
    from medfusion.bundles import save_bundle
    from medfusion.evaluation.calibration import calibrate_job
    from medfusion.evaluation.decisions import fit_decision
    from medfusion.jobs import forest_job, forest_pipeline_path, fusion_job, load_pretrained

    cfg, k, combo, e = ctx.cfg, job.fold, job.name, job.extra
    t = time.time()
    sp = FoldSplit(e["train"], e["val"], e["fit"], e["sel"])
    log.info("--- fold %d job %s", k, combo)
    record = {"combination": combo, "fold": k, **e["fold_info"], "stages": {}, "transfer": [], "pretrain": {},
              "max_alpha_ratio": cfg.train.max_alpha_ratio, "job_key": job.key,
              "replicas": runtime["replicas"], "runtime": runtime}
    has_meta = "metadata" in combo.split("+")
    p_meta = forest_job(ctx, k, sp.train, sp.val, e["seed"]) if has_meta else None
    model = None
    if combo == "metadata":
        proba_sel, proba = p_meta[sp.sel], p_meta[sp.val]
    else:
        pretrained = {}
        for m in image_modalities_of(combo):
            dep = deps[f"pretrain/fold_{k}/{m}"]
            pretrained[m] = load_pretrained(ctx, k, m, dep["cache_key"], e["seed"])
            record["pretrain"][m] = {**dep["result"], "cache_key": dep["cache_key"], "reused": dep["reused"]}
            log.info("  pre-trained %s: %s cache entry %s", m, "reused" if dep["reused"] else "trained this run",
                     dep["cache_key"])
        model, proba_sel, proba = fusion_job(ctx, combo, k, sp, p_meta, pretrained, e["seed"], record)
    y_sel = ctx.manifest.labels[sp.sel]
    proba_sel, proba, record["calibration"] = calibrate_job(cfg.train.calibrate, proba_sel, y_sel, proba)
    record["decision"] = fit_decision(cfg.train.decision, proba_sel, y_sel)
    files = save_bundle(ctx.run_dir, combo, k, cfg, model=model,
                        forest_file=forest_pipeline_path(ctx, k) if has_meta else None,
                        decision=record["decision"], fusion_rf_weight=record.get("fusion_rf_weight"),
                        selection=cfg.search.selection, calibration=record["calibration"])
    if record["decision"]["kind"] != "argmax":
        log.info("  decision rule fit on the selection split: thresholds %s on the expected class index "
                 "(selection QWK %.4f)", record["decision"]["thresholds"], record["decision"]["selection_qwk"])
    record["seconds"] = round(time.time() - t, 2)
    files += write_job_outputs(ctx.run_dir, ctx.manifest, combo, k, sp.val, proba, record)
    return {"files": files, "qwk": record["metrics"]["qwk"], "visit_qwk": record["metrics"]["visit_qwk"]}
