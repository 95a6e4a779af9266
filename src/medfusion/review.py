"""Review of a finished (or partial) run folder: key figures per job and training-health findings.

Every failure of the reference study was found by a person reading fold logs for days: a
validation kappa stuck at 0 because every prediction was the rare class, "best epoch 1"
in every stage, a frozen branch with a few hundred trainable parameters, a Stage 2 learning
rate too low to move anything, encoder weights unchanged after "fine-tuning", fusion worse
than its own metadata branch, steps_per_epoch that did not match the data. This module reads
the machine-readable job records a search writes (``jobs/<combination>/fold_<k>.json``) and
turns each of those patterns into a finding with its evidence and a one-line suggestion.

Layout: :mod:`medfusion.records` reads the run folder (shared with the report),
:mod:`medfusion.review_checks` holds the thresholds, :class:`Finding` and the per-job checks;
this module holds the run-level checks and the entry point, and re-exports the public names.

Entry point: :func:`run_review` (called at the end of a search and by ``--mode review``).
It prints the findings (WARNING, so they show at verbosity 0) and the per-job key figures
(INFO), writes ``review.json`` and, through :mod:`medfusion.report`, the plots and
``report.md``, and returns the exit code (1 with ``strict`` when an error-severity finding
exists, else 0). Nothing here imports TensorFlow: reviewing a run takes seconds.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from medfusion.constants import CLASSES
from medfusion.records import (SEVERITIES, RunRecords, class_counts, combination_order, fmt_num,  # noqa: F401
                               format_stage, job_qwk, key_figures, load_run, pred_counts, stage_records,
                               summary_from_jobs, to_float)
# thresholds, Finding and the per-job checks live in review_checks; re-exported here, where tests and users import them
from medfusion.review_checks import (ALPHA_RATIO_TOL, ALPHA_RATIO_UNCAPPED, BACKBONE_CHANGE_ERROR,  # noqa: F401
                                     BACKBONE_CHANGE_WARNING, DEGENERATE_SHARE, DIVERGE_MIN_EPOCHS, DIVERGE_RISE_REL,
                                     DIVERGE_UP_FRACTION, FUSION_TOLERANCE, LOSS_FLAT_REL, MIN_QWK_GAIN,
                                     MIN_TRAINABLE_FRACTION, QWK_FLAT, QWK_NOISE, SHIFT_TVD, SUGGESTIONS, THRESHOLDS,
                                     Finding, check_alpha, check_degenerate, check_frozen, check_learning_rate,
                                     check_no_learning, check_stage2_never_helps, check_steps, check_transfer)
from medfusion.report import write_report
from medfusion.runs import atomic_write_json


# ----------------------------------------------------------------------------- run-level checks
def check_fusion(run: RunRecords) -> list[Finding]:
    """Fusion vs its best member: from comparisons.csv's paired interval when the run has one."""
    if run.comparisons is not None and len(run.comparisons):
        return check_fusion_interval(run)
    out = []
    for combo in run.combinations:
        members = combo.split("+")
        if len(members) < 2:
            continue
        per_fold = []
        for fold in run.folds:
            job = run.job(combo, fold)
            if job is None or job_qwk(job) is None:
                continue
            scores = {m: job_qwk(run.job(m, fold)) for m in members if run.job(m, fold) is not None}
            scores = {m: q for m, q in scores.items() if q is not None and not math.isnan(q)}
            if not scores:
                continue
            best = max(scores, key=scores.get)
            per_fold.append({"fold": fold, "qwk": round(job_qwk(job), 4), "best_member": best,
                             "best_member_qwk": round(scores[best], 4),
                             "below": bool(job_qwk(job) < scores[best] - FUSION_TOLERANCE)})
        if not per_fold:
            out.append(Finding("fusion_not_helping", "info", combo, None, None,
                               "no single-modality baseline of its members in the same folds; fusion gain unknown",
                               {"members": members}))
            continue
        below = [p for p in per_fold if p["below"]]
        if not below:
            continue
        deficits = [p["best_member_qwk"] - p["qwk"] for p in below]
        mean_gain = float(np.mean([p["qwk"] - p["best_member_qwk"] for p in per_fold]))
        severity = "warning" if 2 * len(below) >= len(per_fold) else "info"
        detail = ", ".join(f"fold {p['fold']} {p['qwk']:.4f} < {p['best_member']} {p['best_member_qwk']:.4f}"
                           for p in below)
        out.append(Finding("fusion_not_helping", severity, combo, None, None,
                           f"below its best member in {len(below)} of {len(per_fold)} folds ({detail}); "
                           f"mean QWK difference to the best member {mean_gain:+.4f}",
                           {"folds_below": len(below), "n_folds": len(per_fold),
                            "max_deficit": round(max(deficits), 4), "mean_difference": round(mean_gain, 4),
                            "per_fold": per_fold}))
    return out


def check_fusion_interval(run: RunRecords) -> list[Finding]:
    """Worse with a paired interval below 0 is a warning; an interval that includes 0 is no evidence of a gain."""
    from medfusion.evaluation.late_fusion import is_late_fusion

    out = []
    for r in run.comparisons.itertuples():
        if is_late_fusion(str(r.combination)):
            continue  # a baseline (a mean of member probabilities): nothing was trained that could be fixed
        ev = {"best_member": r.best_member, "delta_visit_qwk": round(float(r.delta_visit_qwk), 4),
              "ci_low": round(float(r.ci_low), 4), "ci_high": round(float(r.ci_high), 4),
              "folds_won": int(r.folds_won), "n_folds": int(r.n_folds)}
        what = (f"pooled visit QWK {r.delta_visit_qwk:+.4f} vs its best member {r.best_member} "
                f"(95% paired patient-bootstrap interval [{r.ci_low:+.3f}, {r.ci_high:+.3f}]; "
                f"better in {r.folds_won} of {r.n_folds} folds)")
        if r.ci_high < 0:
            out.append(Finding("fusion_not_helping", "warning", r.combination, None, None,
                               f"worse than its best member: {what}", ev))
        elif r.ci_low <= 0:
            out.append(Finding("fusion_not_helping", "info", r.combination, None, None,
                               f"no evidence of a gain: {what}", ev))
    return out


def check_protocol(run: RunRecords) -> list[Finding]:
    """A run whose reported folds also made the choices reports optimistic scores."""
    selection = (run.config.get("search") or {}).get("selection", "outer")
    if selection != "outer":
        return []
    return [Finding("selection_on_reported_fold", "warning", None, None, None,
                    "search.selection is 'outer' (or the run predates the inner selection split): best epochs, "
                    "Stage 2 keep/revert, the fusion weight and the decision rule were chosen on the very folds "
                    "whose scores are reported, so every score is optimistic", {"selection": selection})]


def check_job_attempts(run: RunRecords) -> list[Finding]:
    """jobs.csv: a job that failed for good is an error; one that needed a retry may hide a bug that recurs."""
    import pandas as pd

    path = run.run_dir / "jobs.csv"
    if not path.is_file():
        return []
    ledger = pd.read_csv(path)
    out = []
    for job, rows in ledger.groupby("job", sort=True):
        last = rows.iloc[-1]
        if last["status"] == "failed":
            out.append(Finding("job_failed", "error", None, None, None,
                               f"job {job} failed after {int(last['attempts'])} attempt(s): {last.get('error', '')}",
                               {"job": job}))
        elif int(rows["attempts"].max()) > 1:
            out.append(Finding("job_retried", "warning", None, None, None,
                               f"job {job} finished only on attempt {int(rows['attempts'].max())}; the first attempt's "
                               f"traceback is in its fold log", {"job": job}))
    return out


def tvd(a: np.ndarray, b: np.ndarray) -> float:
    """Total variation distance between two count vectors' distributions."""
    pa, pb = a / max(a.sum(), 1), b / max(b.sum(), 1)
    return float(0.5 * np.abs(pa - pb).sum())


def check_shift(run: RunRecords) -> list[Finding]:
    out, seen = [], set()
    for job in run.jobs:
        fold = int(job["fold"])
        if fold in seen:
            continue
        tr, va = class_counts(job.get("train_class_counts")), class_counts(job.get("val_class_counts"))
        if tr is None or va is None or not tr.sum() or not va.sum():
            continue
        seen.add(fold)
        d = tvd(tr, va)
        absent = [c for c, n in zip(CLASSES, va.tolist()) if n == 0]
        if d > SHIFT_TVD or absent:
            fmt = lambda c: ", ".join(f"{k} {n / c.sum():.0%}" for k, n in zip(CLASSES, c.tolist()))  # noqa: E731
            msg = f"train/validation class distributions differ: TVD {d:.3f} (threshold {SHIFT_TVD}); " \
                  f"train {fmt(tr)}, validation {fmt(va)}"
            if absent:
                msg += f"; class {', '.join(absent)} absent from validation"
            out.append(Finding("class_shift", "warning", None, fold, None, msg,
                               {"tvd": round(d, 4), "threshold": SHIFT_TVD,
                                "train_class_counts": dict(zip(CLASSES, tr.tolist())),
                                "val_class_counts": dict(zip(CLASSES, va.tolist())), "absent_in_val": absent}))
    return out


def check_completeness(run: RunRecords) -> list[Finding]:
    out = [Finding("unreadable_record", "error", None, None, None, f"{path}: {err}", {"file": path})
           for path, err in run.unreadable]
    n_folds = to_float(((run.config.get("search") or {}).get("cv_folds")))
    folds = list(range(int(n_folds))) if n_folds else run.folds
    for combo in run.combinations:
        have = {int(j["fold"]) for j in run.jobs if j["combination"] == combo}
        missing = [k for k in folds if k not in have]
        if missing:
            out.append(Finding("incomplete_run", "warning", combo, None, None,
                               f"job records for {len(have)} of {len(folds)} folds; missing fold(s) {missing}",
                               {"n_folds_found": len(have), "n_folds_expected": len(folds), "missing_folds": missing}))
    # Skipping Stage 2 matters for pretrained backbones: they would never adapt to the data. A from-scratch
    # backbone (weights: none) was trained whole in pre-training, so skipping it is a choice, not a finding.
    weights = str((run.config.get("model") or {}).get("weights", "none")).strip().lower()
    if weights not in ("none", "", "null"):
        for job in run.jobs:
            if job.get("stage2_skipped"):
                out.append(Finding("stage2_skipped", "info", job["combination"], int(job["fold"]), "stage2",
                                   "Stage 2 was skipped (train.stage2.epochs 0): the pretrained backbones were never "
                                   "fine-tuned on this data", {"stage2_epochs": 0, "weights": weights}))
    return out


CHECKS = (check_protocol, check_job_attempts, check_completeness, check_degenerate, check_no_learning, check_stage2_never_helps,
          check_frozen, check_learning_rate, check_fusion, check_alpha, check_steps, check_transfer, check_shift)


def review_findings(run: RunRecords) -> list[Finding]:
    findings = [f for check in CHECKS for f in check(run)]
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (rank[f.severity], combination_order(f.combination or ""),
                                           -1 if f.fold is None else f.fold, f.check))


# ----------------------------------------------------------------------------- key figures
def format_key_figures(kf: dict) -> str:
    parts = [f"{kf['combination']} fold {kf['fold']}: QWK {fmt_num(kf['qwk'])}"]
    stages = [format_stage(f"pretrain {m}", s) for m, s in kf["pretrain"].items()]
    stages.append(format_stage("stage1", kf["stage1"]))
    s2 = format_stage("stage2", kf["stage2"])
    if isinstance(kf["stage2"], dict):
        bc = kf["stage2"]["backbone_change"]
        s2 += f" ({'kept' if kf['stage2_kept'] else 'reverted'}, backbone change {'n/a' if bc is None else f'{bc:.2e}'})"
    stages.append(s2)
    stages = [s for s in stages if s]
    if stages:
        parts.append("; ".join(stages))
    w = kf.get("fusion_rf_weight")
    if isinstance(w, dict):
        parts.append(f"forest weight {fmt_num(w.get('start'), 3)}->{fmt_num(w.get('end'), 3)}")
    pc, vc = kf.get("val_pred_counts"), kf.get("val_class_counts")
    if pc:
        true = "/".join(str(vc.get(c, 0)) for c in CLASSES) if isinstance(vc, dict) else "n/a"
        parts.append(f"predicted I/P/R {'/'.join(str(pc[c]) for c in CLASSES)} (true {true})")
    return " | ".join(parts)


def json_safe(obj):
    """NaN / inf (a diverged loss, an undefined QWK) become strings, so review.json stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else str(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ----------------------------------------------------------------------------- entry point
def run_review(run_dir: Path, strict: bool = False, log: logging.Logger | None = None) -> int:
    """Review logs/<run>/: print key figures and findings, write review.json, plots and report.md.

    Returns 1 when ``strict`` and any finding has severity "error", else 0. Raises
    FileNotFoundError when the folder is missing or holds no job records.
    """
    log = log or logging.getLogger("medfusion")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    findings = review_findings(run)
    figures = [key_figures(j, run_dir) for j in run.jobs]
    log.info("review of %s: %d job records, %d combinations x %d folds", run_dir, len(run.jobs),
             len(run.combinations), len(run.folds))
    for kf in figures:
        log.info("  %s", format_key_figures(kf))
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    for f in findings:
        log.warning("%s", f.line())
    atomic_write_json(run_dir / "review.json", json_safe({
        "run_dir": str(run_dir), "n_jobs": len(run.jobs), "combinations": run.combinations, "folds": run.folds,
        "counts": counts, "strict": strict, "thresholds": THRESHOLDS,
        "findings": [f.to_dict() for f in findings], "key_figures": figures}))
    report = write_report(run, findings, figures, log)
    log.warning("review: %d error(s), %d warning(s), %d info; %s, %s", counts["error"], counts["warning"],
                counts["info"], run_dir / "review.json", report)
    if strict and counts["error"]:
        log.warning("review --strict: %d error finding(s) -> exit status 1", counts["error"])
        return 1
    return 0
