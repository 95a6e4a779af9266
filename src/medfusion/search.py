"""The search: every requested modality combination x every patient-level fold.

Per fold: the metadata forest (fit on one row per training visit), an inner patient-level
split of the training part into fitting and selection patients, one image pre-training per
image modality (shared by every combination containing it), then per combination a fusion
model with strictly transferred weights, Stage 1 (backbones frozen) and Stage 2 (backbones
unfrozen, kept only if it beats Stage 1 on the selection patients). The fusion weight and the
decision rule are fit on the selection patients; the outer validation fold is predicted once,
after every choice, and only the scorer reads its labels.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace as with_fields
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from medfusion import __version__
from medfusion.config import Config, ConfigError, config_to_dict, flatten
from medfusion.constants import CLASSES, IMAGE_MODALITIES, PRETRAIN_CACHE_DIR, image_modalities_of
from medfusion.data.folds import (check_fold_classes, class_distribution, fold_indices, selection_split,
                                  subsample_patients)
from medfusion.evaluation.aggregate import compare, format_summary, pooled_by_combination, results_frame, row_from_job
from medfusion.evaluation.aggregate import summarize
from medfusion.evaluation.calibration import calibration_table
from medfusion.evaluation.oracle import OracleReference
from medfusion.executors import JobsFailed, execute, failure_report, make_executor
from medfusion.heldout import evaluate_test, hold_out
from medfusion.jobs import pretrain_key
from medfusion.plan import LEDGER, FoldSplit, Job, check_plan, content_key, describe_plan, job_id, plan_jobs
from medfusion.plan import resolve_combinations  # noqa: F401 - imported from here by predict, explain, tests
from medfusion.recompute import predict_fold, rescore_from_predictions
from medfusion.run_folder import fold_assignment, open_run
from medfusion.runner import JobContext, write_job_outputs
from medfusion.runs import FileLog, RunState, atomic_write_csv, atomic_write_json, read_run_csv, read_run_json
from medfusion.stopping import crash_point
from medfusion.store import RunLock
from medfusion.training.devices import describe

log = logging.getLogger("medfusion")


def _counts(labels: np.ndarray) -> dict:
    return dict(zip(CLASSES, np.bincount(labels, minlength=len(CLASSES)).tolist()))


class DataError(ValueError):
    """The dataset cannot be used for the requested search; the message lists why."""


class Search:
    """Holds what one search shares across folds and jobs; `run()` does the work.

    Resumable: finished jobs are recorded in state.json with checksums of their outputs,
    stages checkpoint every epoch, and image pre-training lives in a cache shared by every
    combination, run and resume (logs/.pretrain_cache/<key>/).
    """

    def __init__(self, cfg: Config, strategy: tf.distribute.Strategy):
        self.cfg, self.strategy = cfg, strategy
        self.combinations = resolve_combinations(cfg)
        self.image_modalities = [m for m in IMAGE_MODALITIES if any(m in image_modalities_of(c) for c in self.combinations)]
        self.run_dir = Path(cfg.runtime.logs_dir) / cfg.runtime.run_name
        self.cache_dir = Path(cfg.runtime.logs_dir) / PRETRAIN_CACHE_DIR
        self.run_lock = RunLock(cfg.runtime.logs_dir, cfg.runtime.run_name)  # logs/.locks/<run>.lock (store.py)
        self.oracle_ref = self._oracle()

    def _oracle(self) -> OracleReference:
        return OracleReference(self.cfg.data.data_dir, self.run_dir, {m for c in self.combinations for m in c.split("+")})

    # ------------------------------------------------------------------ orchestration
    def run(self) -> pd.DataFrame:
        """The search, holding the run folder's lock: a second search on it is refused; released on any exit."""
        with self.run_lock:
            self.run_lock.refuse_if_held()  # before the data check, so a second search stops at once
            return self._run()

    def _run(self) -> pd.DataFrame:
        cfg = self.cfg
        t0 = time.time()
        mode = cfg.runtime.resume_mode
        manifest, data_summary = None, ""
        if mode != "from_predictions":  # check the data before any run folder is created or touched
            from medfusion.data.check import check_dataset

            check = check_dataset(cfg, log)
            data_summary = check.summary(short=True)
            log.info("%s", data_summary)
            if not check.ok:
                raise DataError("the dataset cannot be used for this search:\n" +
                                "\n".join(f"  - {p}" for p in check.problems) +
                                f"\nRun python main.py --mode check_data --data_dir {cfg.data.data_dir} for details.")
            manifest = subsample_patients(check.manifest, cfg.search.data_percentage, cfg.search.seed,
                                          n_folds=cfg.search.cv_folds)
        resuming = open_run(cfg, self.run_dir, self.run_lock)
        self.state = RunState(self.run_dir)
        with FileLog(self.run_dir / "run.log") as run_log:
            log.info("run %s (%s): %d combinations x %d folds -> %s", cfg.runtime.run_name,
                     f"resume_mode {mode}, continuing" if resuming else "new", len(self.combinations),
                     cfg.search.cv_folds, self.run_dir)
            if mode == "from_predictions":
                return self._finish(t0)
            log.info("combinations: %s", ", ".join(self.combinations))
            if data_summary:
                run_log.write(data_summary)  # already on the console: into the file only
            log.info("dataset: %d samples, %d visits, %d patients; classes %s", len(manifest),
                     manifest.samples["visit"].nunique(), manifest.samples["patient"].nunique(),
                     class_distribution(manifest.labels))
            manifest, self.test_manifest = hold_out(self, manifest, resuming)
            self.manifest = manifest
            self.oracle_ref = self._oracle()  # the demo's oracle.csv exists once the data check generated it
            self.assignment = fold_assignment(cfg, self.run_dir, manifest, resuming)
            for warning in check_fold_classes(manifest, self.assignment, cfg.search.cv_folds):
                log.warning("%s", warning)
            self.crops = {}
            for m in self.image_modalities:
                from medfusion.data.images import load_crops

                t = time.time()
                self.crops[m] = load_crops(manifest, m, cfg.data.image_size, cfg.data.box_margin, log=log)
                log.info("loaded %d %s crops at %dpx in %.1fs", len(manifest), m, cfg.data.image_size, time.time() - t)
        if mode == "from_models":
            for k in range(cfg.search.cv_folds):
                with FileLog(self.run_dir / f"fold_{k}.log"), FileLog(self.run_dir / "run.log"):
                    predict_fold(self, k)
            failures = []
        else:
            failures = self._train()
        with FileLog(self.run_dir / "run.log"):
            summary = self._finish(t0)
            if failures:
                raise JobsFailed(failure_report(failures))
            return summary

    def _finish(self, t0: float) -> pd.DataFrame:
        ckpts = self.run_dir / "checkpoints"
        if ckpts.is_dir() and not any(p.is_file() for p in ckpts.rglob("*")):
            shutil.rmtree(ckpts)  # only empty job folders are left once every job is recorded
        if self.cfg.runtime.resume_mode == "from_predictions":
            rescore_from_predictions(self)
        late_rows: list[dict] = []
        predictions = self.fold_predictions(late_rows)
        visits = pooled_by_combination(predictions)
        results = results_frame(self.result_rows() + late_rows)
        s = self.cfg.search
        summary = summarize(results, visits, s.bootstrap_resamples, s.seed)
        comparisons = compare(summary, results, visits, s.bootstrap_resamples, s.seed)
        atomic_write_csv(self.run_dir / "results.csv", results)
        atomic_write_csv(self.run_dir / "summary.csv", summary)
        atomic_write_csv(self.run_dir / "comparisons.csv", comparisons)
        atomic_write_csv(self.run_dir / "calibration.csv", calibration_table(predictions))
        if s.selection == "outer":
            log.warning("search.selection is 'outer': epochs, Stage 2, the fusion weight and the decision rule were "
                        "chosen on the reported folds, so these scores are optimistic (the reference study's "
                        "protocol, for comparison only)")
        log.warning("\n%s", format_summary(summary, comparisons, self.oracle_ref.summary()))
        if getattr(self, "test_manifest", None) is not None:
            evaluate_test(self, summary)
        log.warning("search finished in %.1f min; results in %s", (time.time() - t0) / 60, self.run_dir)
        from medfusion.review import run_review

        run_review(self.run_dir, strict=False, log=log)
        return summary

    def fold_predictions(self, late_rows: list | None = None) -> dict:
        """combination -> [(prediction table, decision rule)] of every finished fold, from the run folder.

        The late-fusion baselines (evaluation/late_fusion.py) are added as combinations (argmax): their
        averaged tables are written to predictions/<folder_name>/fold_<k>.csv and, when `late_rows` is
        a list, their results rows are appended to it.
        """
        from medfusion.evaluation.late_fusion import folder_name, late_fusion_row, late_fusion_tables

        out: dict = {}
        by_fold: dict = {}
        for rec in self.state.done_jobs():
            combo, k = rec["combination"], rec["fold"]
            pred = read_run_csv(self.run_dir / "predictions" / combo / f"fold_{k}.csv")
            if "visit" not in pred.columns:  # written before visits were recorded: each view is its own visit
                pred["visit"] = pred["sample_id"]
            job = read_run_json(self.run_dir / "jobs" / combo / f"fold_{k}.json")
            out.setdefault(combo, []).append((pred, job.get("decision")))
            by_fold.setdefault(combo, {})[int(k)] = pred
        for name, tables in late_fusion_tables(by_fold, self.combinations).items():
            for k, pred in sorted(tables.items()):
                atomic_write_csv(self.run_dir / "predictions" / folder_name(name) / f"fold_{k}.csv", pred)
                out.setdefault(name, []).append((pred, None))
                if late_rows is not None:
                    late_rows.append(late_fusion_row(name, k, pred))
            log.info("late-fusion baseline %s: %d fold(s), predictions/%s/", name, len(tables), folder_name(name))
        return out

    def pending(self, k: int, keys: dict | None = None) -> list[str]:
        """Fold k's combinations still to compute: not finished, damaged, or finished from other inputs."""
        todo = []
        for combo in self.combinations:
            why = self.state.problem(combo, k)
            recorded = (self.state.data["jobs"].get(self.state.key(combo, k)) or {}).get("key")
            if why is None and keys and recorded and recorded != keys[job_id("combination", k, combo)]:
                why = "its inputs changed (another content key)"
            if why is None:
                log.info("--- fold %d job %s: finished earlier, outputs verified; skipped", k, combo)
            else:
                if why != "not finished":
                    log.warning("--- fold %d job %s: recorded as finished but %s; redoing it", k, combo, why)
                    self.state.forget(combo, k)
                todo.append(combo)
        return todo

    def split(self, k: int) -> FoldSplit:
        """Fold k's outer training/validation indices and the fitting/selection split of its training part."""
        s, manifest = self.cfg.search, self.manifest
        tr, va = fold_indices(manifest, self.assignment, k)
        if s.selection == "outer":
            return FoldSplit(tr, va, tr, va)
        fit, sel = selection_split(manifest, tr, s.selection_fraction, s.seed + k)
        if set(manifest.labels[fit]) != set(range(len(CLASSES))):
            raise ValueError(f"fold {k}: the fitting part of the inner selection split lacks a class "
                             f"({class_distribution(manifest.labels[fit])}); lower search.selection_fraction or "
                             "--cv_folds, or add patients")
        return FoldSplit(tr, va, fit, sel)

    def _log_split(self, k: int, sp: FoldSplit) -> dict:
        m, cfg = self.manifest, self.cfg
        pats = lambda idx: len(set(m.patients[idx]))  # noqa: E731
        log.info("=== fold %d/%d: train %d samples / %d patients, validation %d samples / %d patients",
                 k + 1, cfg.search.cv_folds, len(sp.train), pats(sp.train), len(sp.val), pats(sp.val))
        log.info("fold %d train classes: %s", k, class_distribution(m.labels[sp.train]))
        log.info("fold %d validation classes: %s", k, class_distribution(m.labels[sp.val]))
        if cfg.search.selection == "inner":
            log.info("fold %d inner split: fitting %d samples / %d patients (%s); selection %d samples / %d patients "
                     "(%s) makes every choice; the validation fold is only scored", k, len(sp.fit), pats(sp.fit),
                     class_distribution(m.labels[sp.fit]), len(sp.sel), pats(sp.sel), class_distribution(m.labels[sp.sel]))
        else:
            log.warning("fold %d: search.selection is 'outer': the validation fold picks epochs, Stage 2, the "
                        "fusion weight and the decision rule (optimistic scores)", k)
        return {"n_train": len(sp.train), "n_val": len(sp.val), "train_patients": pats(sp.train),
                "val_patients": pats(sp.val), "train_class_counts": _counts(m.labels[sp.train]),
                "val_class_counts": _counts(m.labels[sp.val]), "selection": cfg.search.selection,
                "n_fit": len(sp.fit), "n_selection": len(sp.sel),
                "selection_patients": sorted(int(p) for p in set(m.patients[sp.sel]))
                if cfg.search.selection == "inner" else None}

    # ------------------------------------------------------------------ jobs
    def _train(self) -> list:
        """Plan every fold's unfinished jobs and run them on the configured executor; returns the failures."""
        cfg = self.cfg
        ctx = JobContext(cfg, self.manifest, self.crops, self.run_dir, self.cache_dir, self.strategy)
        executor = make_executor(cfg, ctx)
        try:
            self.replicas = executor.replicas()
            self.numerics = executor.numerics()
            with FileLog(self.run_dir / "run.log"):
                self._check_replicas(executor.name)
            folds = {}
            for k in range(cfg.search.cv_folds):
                with FileLog(self.run_dir / f"fold_{k}.log"), FileLog(self.run_dir / "run.log"):
                    sp = self.split(k)
                    info = self._log_split(k, sp)
                    self.oracle_ref.score_fold(k, self.manifest.samples["sample_id"].iloc[sp.val],
                                               self.manifest.labels[sp.val])
                    keys = self.fold_keys(k, sp)
                    todo = self.pending(k, keys)
                    if todo:
                        folds[k] = (sp, info, keys, todo)
            jobs = [self._with_inputs(j, *folds[j.fold][:3]) for j in plan_jobs({k: v[3] for k, v in folds.items()})]
            check_plan(jobs)
            with FileLog(self.run_dir / "run.log"):
                log.info("plan (%s executor): %s", executor.name, describe_plan(jobs).replace("\n", "; "))
            failures = execute(jobs, executor, cfg.runtime.job_retries, self._job_done)
        finally:
            executor.close()
        for f in failures:
            self._ledger({"job": f.job, "status": "failed", "attempts": f.attempts, "error": f.error})
        return failures

    def _ledger(self, row: dict) -> None:
        """jobs.csv: one row per job that ended in this run (kept across resumes; --mode plan reads its times)."""
        path = self.run_dir / LEDGER
        old = read_run_csv(path) if path.is_file() else pd.DataFrame()
        atomic_write_csv(path, pd.concat([old, pd.DataFrame([row])], ignore_index=True), float_format=None)

    def _check_replicas(self, executor: str) -> None:
        """The replica count sets the global batch, so a run continues only with the count it started with."""
        cfg, path = self.cfg, self.run_dir / "runtime.json"
        now = {"replicas": self.replicas, "per_replica_batch": cfg.train.batch_size,
               "global_batch": cfg.train.batch_size * self.replicas}
        if path.is_file():
            saved = read_run_json(path)
            if saved.get("replicas") != self.replicas:
                raise ConfigError(
                    f"cannot resume run {cfg.runtime.run_name!r}: it trained with {saved.get('replicas')} replica(s) "
                    f"(global batch {saved.get('global_batch')}), this search would use {self.replicas} (global batch "
                    f"{now['global_batch']}); the global batch changes the results. Use the run's devices "
                    "(--cpu_replicas, --gpus, --gpus_per_job), --resume_mode fresh, or a new --run_name.")
        else:
            atomic_write_json(path, now)
        log.info("devices: %s; %s executor, %d replica(s) per job: per-replica batch %d, global batch %d",
                 describe(self.strategy) if executor == "inline" else "Ray workers", executor, self.replicas,
                 cfg.train.batch_size, now["global_batch"])

    def fold_keys(self, k: int, sp: FoldSplit) -> dict[str, str]:
        """Content keys of fold k's jobs: a changed input (data, split, setting, version) gives a new key."""
        m, seed = self.manifest, self.cfg.search.seed + k
        ids = lambda idx: m.samples["sample_id"].iloc[idx].tolist()  # noqa: E731
        keys = {job_id("forest", k): content_key({
            "kind": "forest", "medfusion": __version__, "train": ids(sp.train), "val": ids(sp.val),
            "labels": m.labels[sp.train].tolist(), "features": list(m.feature_columns),
            "forest": config_to_dict(self.cfg.forest), "seed": seed})}
        for mod in self.image_modalities:
            keys[job_id("pretrain", k, mod)] = pretrain_key(self, mod, sp.fit, sp.sel, seed, self.replicas, self.numerics)
        settings = {key: v for key, v in flatten(config_to_dict(self.cfg)).items() if not key.startswith("runtime.")}
        for combo in self.combinations:
            deps = [keys[job_id("forest", k)]] * ("metadata" in combo.split("+")) + \
                   [keys[job_id("pretrain", k, mod)] for mod in image_modalities_of(combo)]
            keys[job_id("combination", k, combo)] = content_key({
                "kind": "combination", "medfusion": __version__, "combination": combo, "deps": deps,
                "fit": ids(sp.fit), "sel": ids(sp.sel), "val": ids(sp.val), "labels": m.labels.tolist(),
                "settings": settings, "replicas": self.replicas})
        return keys

    def _with_inputs(self, job: Job, sp: FoldSplit, info: dict, keys: dict) -> Job:
        """The planned job with its content key and what it reads (its fold's indices, seed, split record)."""
        return with_fields(job, key=keys[job.id], extra={"train": sp.train, "val": sp.val, "fit": sp.fit,
                                                        "sel": sp.sel, "seed": self.cfg.search.seed + job.fold,
                                                        "fold_info": info})

    def _job_done(self, job: Job, record: dict) -> None:
        """The driver's side of a finished job: only here are state.json and results.csv written."""
        k = job.fold
        self._ledger({"job": job.id, "status": "done", "attempts": record["attempts"], "kind": job.kind, "fold": k, "name": job.name,
                      "key": job.key, "seconds": record["seconds"], "host": record.get("host", ""),
                      "pid": record["pid"]})
        with FileLog(self.run_dir / f"fold_{k}.log"), FileLog(self.run_dir / "run.log"):
            if job.kind != "combination":
                log.info("job %s finished in %.1fs", job.id, record["seconds"])
                return
            self.state.mark_done(job.name, k, record["files"], key=job.key)
            shutil.rmtree(self.run_dir / "checkpoints" / job.name / f"fold_{k}", ignore_errors=True)
            log.info("--- fold %d job %s done in %.1fs: QWK %.4f, visit QWK %.4f", k, job.name, record["seconds"],
                     record["qwk"], record["visit_qwk"])
            atomic_write_csv(self.run_dir / "results.csv", results_frame(self.result_rows()))
        crash_point("job_done")

    # ------------------------------------------------------------------ outputs
    def record(self, combo, k, va, proba, job) -> list[str]:
        """Predictions and the job record (--resume_mode from_models writes them anew)."""
        return write_job_outputs(self.run_dir, self.manifest, combo, k, va, proba, job)

    def result_rows(self) -> list[dict]:
        """results.csv rows, rebuilt from the finished jobs' records: one row per (combination, fold)."""
        return [row_from_job(read_run_json(self.run_dir / "jobs" / rec["combination"] / f"fold_{rec['fold']}.json"))
                for rec in self.state.done_jobs()]

