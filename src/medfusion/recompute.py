"""--resume_mode from_models and from_predictions: outputs recomputed without training."""

from __future__ import annotations

import logging

from medfusion.bundles import bundle_dir, load_bundle
from medfusion.constants import image_modalities_of
from medfusion.data.folds import fold_indices
from medfusion.jobs import fold_inputs
from medfusion.evaluation.scoring import job_scores
from medfusion.runs import RunFolderError, atomic_write_json, read_run_arrays, read_run_csv, read_run_json
from medfusion.training.checkpoint import load_arrays
from medfusion.training.stages import predict

log = logging.getLogger("medfusion")


def predict_fold(ctx, k: int) -> None:
    """--resume_mode from_models: new predictions from each finished job's bundle, without training."""
    cfg = ctx.cfg
    tr, va = fold_indices(ctx.manifest, ctx.assignment, k)
    for combo in ctx.combinations:
        job_path = ctx.run_dir / "jobs" / combo / f"fold_{k}.json"
        why = ctx.state.problem(combo, k, only=("bundles/", "forest/"))
        if why is not None or not job_path.is_file():
            log.warning("fold %d job %s: %s; nothing to recompute from (continue the run with "
                        "--resume_mode auto)", k, combo, why or "no job record")
            continue
        job = read_run_json(job_path)
        bundle = load_bundle(bundle_dir(ctx.run_dir, combo, k), cfg)
        has_meta = "metadata" in combo.split("+")
        p_va = read_run_arrays(ctx.run_dir / "forest" / f"fold_{k}.npz", load_arrays)["val"][0] if has_meta else None
        if combo == "metadata":
            proba = p_va
        else:
            proba = predict(bundle.model, fold_inputs(ctx.crops, va, image_modalities_of(combo), p_va),
                            max(cfg.train.batch_size, 32), ctx.strategy.num_replicas_in_sync)
        files = [f for f in ctx.state.files(combo, k) if f.startswith(("bundles/", "forest/"))]
        files += ctx.record(combo, k, va, proba, job)
        ctx.state.mark_done(combo, k, files)
        log.info("fold %d job %s: predictions recomputed from its bundle, QWK %.4f", k, combo,
                 job["metrics"]["qwk"])


def rescore_from_predictions(ctx) -> None:
    """--resume_mode from_predictions: metrics recomputed from the prediction files alone."""
    for rec in ctx.state.done_jobs():
        combo, k = rec["combination"], rec["fold"]
        why = ctx.state.problem(combo, k, only=("predictions/", "jobs/"))
        if why is not None:
            raise RunFolderError(f"cannot rescore job {combo} fold {k} from its files: {why}. Continue the run "
                                 "with --resume_mode auto (the job is redone), or use --resume_mode fresh or a "
                                 "new --run_name.")
        job_path = ctx.run_dir / "jobs" / combo / f"fold_{k}.json"
        pred = read_run_csv(ctx.run_dir / "predictions" / combo / f"fold_{k}.csv")
        if "visit" not in pred.columns:
            pred["visit"] = pred["sample_id"]
        job = read_run_json(job_path)
        job.update(job_scores(pred, job.get("decision")))
        atomic_write_json(job_path, job)
        files = [f for f in rec["files"] if not f.startswith("jobs/")] + [f"jobs/{combo}/fold_{k}.json"]
        ctx.state.mark_done(combo, k, files)
    log.info("from_predictions: %d jobs rescored from their prediction files", len(ctx.state.done_jobs()))
