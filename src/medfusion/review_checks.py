"""The review's thresholds, its Finding record and the per-job training-health checks.

Each check turns one failure pattern of the reference study (see review.py) into findings with
the numbers as evidence. Run-level checks (completeness, protocol, fusion gain, class shift) and
the entry point are in review.py, which re-exports everything public here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from medfusion.constants import CLASSES
from medfusion.records import (SEVERITIES, RunRecords, class_counts, fmt_num, job_qwk, pred_counts, stage_history,
                               stage_records, to_float)

# ----------------------------------------------------------------------------- thresholds
# Degenerate predictions. With three classes and the DFU prior (about 25 / 60 / 15 %) a model
# that learned anything spreads its predictions; 90 % or more in one class is the "every
# prediction is the rare class" failure (or its mirror, the majority class).
DEGENERATE_SHARE = 0.90
# |QWK| below this is indistinguishable from chance for the fold sizes of the study (tens of
# patients); a one-class predictor scores exactly 0. Fixed rather than derived from n_val: a
# 1/sqrt(n_val) bound (0.14 at n_val = 52) would flag weak but real single-modality scores.
QWK_NOISE = 0.05
# No learning: a stage whose best validation QWK does not exceed its start by more than the
# early-stopping min_delta (BestOnMetric, 1e-4) gained nothing over the weights it started from.
MIN_QWK_GAIN = 1e-4
# Frozen too much: pre-training and Stage 2 are meant to train the backbone; below 1 % of the
# model's parameters trainable only a head is training (the reference study's 195-parameter branch).
MIN_TRAINABLE_FRACTION = 0.01
# Stage 2 backbone movement (relative L2 change of backbone kernels/biases): below 1e-6 the
# weights are bit-for-bit (or float-rounding) identical; below 1e-4 they barely moved (Stage 2
# at LR 1e-6 in the reference study). A healthy Stage 2 at 1e-5 .. 1e-4 moves them 1e-3 or more.
BACKBONE_CHANGE_ERROR = 1e-6
BACKBONE_CHANGE_WARNING = 1e-4
# LR too low: over a stage of at least 2 epochs the training loss changed by less than 1 %
# (relative, first to last epoch) AND validation QWK (start included) stayed within 0.01.
LOSS_FLAT_REL = 0.01
QWK_FLAT = 0.01
# LR too high: training loss NaN/inf (error), or rising steadily: at least 3 epochs, at least
# 60 % of the epoch-to-epoch steps going up and the last epoch 10 % above the first (warning).
DIVERGE_MIN_EPOCHS = 3
DIVERGE_UP_FRACTION = 0.6
DIVERGE_RISE_REL = 0.10
# Focal alpha max/min: above 3 with the cap disabled (an uncapped 7x alpha drove every
# prediction to the rare class); above the configured cap (plus float tolerance) is a bug.
ALPHA_RATIO_UNCAPPED = 3.0
ALPHA_RATIO_TOL = 1e-6
# Train/validation shift: total variation distance between the class distributions of a
# fold's two parts. Stratified patient-level folds of tens of patients stay below ~0.1.
SHIFT_TVD = 0.15
# Fusion versus its best member: any deficit counts (scores are already noisy per fold; the
# summary finding reports how often and by how much, so a person can judge).
FUSION_TOLERANCE = 0.0

THRESHOLDS = {name: value for name, value in globals().items()
              if name.isupper() and isinstance(value, (int, float)) and not isinstance(value, bool)}

SUGGESTIONS = {
    "job_failed": "read the job's traceback in fold_<k>.log, fix the cause, and run the same command again",
    "job_retried": "read the first attempt's traceback in fold_<k>.log: an error that a retry passes may be a bug",
    "degenerate_predictions": "check the focal alpha cap (train.max_alpha_ratio), the LR and this job's learning curves",
    "no_learning": "raise the stage's LR or epochs; check its trainable params and learning curves",
    "stage2_never_helps": "set train.stage2.epochs: 0, or change train.stage2.lr (backbone_change in the key figures "
                          "shows whether it moved the backbone at all)",
    "frozen_too_much": "check train.unfreeze / set_backbones_trainable: this stage should train the backbone",
    "backbone_unchanged": "raise train.stage2.lr (1e-5 EfficientNet, 1e-4 tiny) or check train.unfreeze",
    "lr_too_low": "raise this stage's learning rate (train.<stage>.lr), e.g. 10x",
    "lr_too_high": "lower this stage's learning rate (train.<stage>.lr), e.g. 10x; check inputs for NaN",
    "fusion_not_helping": "look at the fusion weight curve and the members' learning curves before claiming a gain",
    "extreme_alpha": "keep train.max_alpha_ratio at 3 (0 disables the cap)",
    "steps_mismatch": "steps_per_epoch must be ceil(n_train / batch) of the stage's own dataset (plan_batches)",
    "transfer_incomplete": "check training.transfer's report: each image branch must start from its pre-trained weights",
    "class_shift": "too few patients per class for this many folds: use fewer folds (--cv_folds) or check folds.json",
    "incomplete_run": "rerun the missing jobs; means over fewer folds are not comparable",
    "unreadable_record": "the job record is corrupt or from another version: rerun the job",
    "stage2_skipped": "set train.stage2.epochs > 0 to fine-tune the backbones",
    "selection_on_reported_fold": "rerun with search.selection: inner (the default) for scores a paper can report",
}


@dataclass
class Finding:
    check: str
    severity: str  # error | warning | info
    combination: str | None
    fold: int | None
    stage: str | None
    message: str  # one line that names the numbers
    evidence: dict = field(default_factory=dict)  # the numbers themselves
    suggestion: str = ""

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not self.suggestion:
            self.suggestion = SUGGESTIONS.get(self.check, "")

    def where(self) -> str:
        parts = [self.combination or "run"]
        if self.fold is not None:
            parts.append(f"fold {self.fold}")
        if self.stage:
            parts.append(f"[{self.stage}]")
        return " ".join(parts)

    def line(self) -> str:
        return f"[{self.severity.upper()}] {self.check} {self.where()}: {self.message} -> {self.suggestion}"

    def to_dict(self) -> dict:
        return asdict(self)


def _image_modalities(combination: str) -> list[str]:
    return [m for m in combination.split("+") if m != "metadata"]


# ----------------------------------------------------------------------------- checks
def check_degenerate(run: RunRecords) -> list[Finding]:
    out = []
    for job in run.jobs:
        combo, fold = job["combination"], int(job["fold"])
        counts = pred_counts(job, run.run_dir)
        qwk = job_qwk(job)
        if counts is not None and counts.sum() > 0:
            share = counts.max() / counts.sum()
            if share >= DEGENERATE_SHARE:
                cls = CLASSES[int(counts.argmax())]
                train = class_counts(job.get("train_class_counts"))
                rare = CLASSES[int(train.argmin())] if train is not None and train.sum() else None
                val = class_counts(job.get("val_class_counts"))
                true_share = float(val[int(counts.argmax())] / val.sum()) if val is not None and val.sum() else None
                note = " (the rarest training class)" if cls == rare else ""
                out.append(Finding(
                    "degenerate_predictions", "error", combo, fold, None,
                    f"{share:.0%} of validation predictions are class {cls}{note} "
                    f"({int(counts.max())}/{int(counts.sum())}; threshold {DEGENERATE_SHARE:.0%}); "
                    f"true share of {cls} {'n/a' if true_share is None else f'{true_share:.0%}'}; QWK {fmt_num(qwk)}",
                    {"predicted_counts": dict(zip(CLASSES, counts.tolist())), "dominant_class": cls,
                     "dominant_share": round(float(share), 4), "true_share": true_share, "qwk": qwk,
                     "threshold": DEGENERATE_SHARE}))
                continue
        if qwk is not None and (math.isnan(qwk) or abs(qwk) < QWK_NOISE):
            out.append(Finding(
                "degenerate_predictions", "warning", combo, fold, None,
                f"validation QWK {qwk:.4f} is within noise of 0 (|QWK| < {QWK_NOISE}); predicted counts "
                f"{'n/a' if counts is None else dict(zip(CLASSES, counts.tolist()))}",
                {"qwk": qwk, "threshold": QWK_NOISE,
                 "predicted_counts": None if counts is None else dict(zip(CLASSES, counts.tolist()))}))
    return out


def check_no_learning(run: RunRecords) -> list[Finding]:
    """A stage whose selection QWK never rose, or that restored its first epoch.

    Stage 2 is judged differently: it starts from Stage 1's best and is kept only if it beats it,
    so a Stage 2 that did not improve was reverted by design (see check_stage2_never_helps; a
    backbone Stage 2 did not move is backbone_unchanged).
    """
    out = []
    for combo, fold, stage, sr in stage_records(run.jobs):
        if stage == "stage2":
            continue
        best_epoch, run_epochs = sr.get("best_epoch"), sr.get("epochs_run")
        best, start = to_float(sr.get("best_val_qwk")), to_float(sr.get("start_val_qwk"))
        reasons = []
        if best_epoch == 1 and (run_epochs or 0) > 1:
            reasons.append(f"best epoch is 1 of {run_epochs} (weights restored from the first epoch)")
        if best is not None and start is not None and not best > start + MIN_QWK_GAIN:
            reasons.append(f"best validation QWK {best:.4f} never rose above its start {start:.4f}")
        if reasons:
            out.append(Finding("no_learning", "warning", combo, fold, stage, "; ".join(reasons),
                               {"best_epoch": best_epoch, "epochs_run": run_epochs, "best_val_qwk": best,
                                "start_val_qwk": start, "min_gain": MIN_QWK_GAIN}))
    return out


def check_stage2_never_helps(run: RunRecords) -> list[Finding]:
    """Stage 2 reverted in every job that ran it: the fine-tuning costs time and buys nothing."""
    ran = [j for j in run.jobs if isinstance((j.get("stages") or {}).get("stage2"), dict) and "stage2_kept" in j]
    if len(ran) < 2 or any(j["stage2_kept"] for j in ran):
        return []
    return [Finding("stage2_never_helps", "warning", None, None, "stage2",
                    f"Stage 2 never beat Stage 1 on the selection patients: reverted in all {len(ran)} jobs that ran it",
                    {"jobs_with_stage2": len(ran), "kept": 0})]


def check_frozen(run: RunRecords) -> list[Finding]:
    out = []
    for combo, fold, stage, sr in stage_records(run.jobs):
        name = stage.split()[0]
        if name not in ("pretrain", "stage2"):
            continue  # Stage 1 freezes the backbones on purpose
        trainable, total = sr.get("trainable_params"), sr.get("total_params")
        if trainable is not None and total:
            frac = trainable / total
            if frac < MIN_TRAINABLE_FRACTION:
                out.append(Finding("frozen_too_much", "error", combo, fold, stage,
                                   f"only {trainable} of {total} parameters trainable ({frac:.2%} < "
                                   f"{MIN_TRAINABLE_FRACTION:.0%}) in a stage that should train the backbone",
                                   {"trainable_params": trainable, "total_params": total,
                                    "fraction": round(frac, 6), "threshold": MIN_TRAINABLE_FRACTION}))
    for job in run.jobs:
        sr = (job.get("stages") or {}).get("stage2")
        if not isinstance(sr, dict):
            continue
        change = to_float(sr.get("backbone_change"))
        combo, fold = job["combination"], int(job["fold"])
        ev = {"backbone_change": change, "lr": sr.get("lr"), "error_below": BACKBONE_CHANGE_ERROR,
              "warning_below": BACKBONE_CHANGE_WARNING}
        if change is None or math.isnan(change):
            out.append(Finding("backbone_unchanged", "warning", combo, fold, "stage2",
                               f"Stage 2 backbone change was not measured (backbone_change {change})", ev))
        elif change < BACKBONE_CHANGE_ERROR:
            out.append(Finding("backbone_unchanged", "error", combo, fold, "stage2",
                               f"Stage 2 left the backbone weights unchanged: relative change {change:.3e} < "
                               f"{BACKBONE_CHANGE_ERROR:.0e} (lr {sr.get('lr')})", ev))
        elif change < BACKBONE_CHANGE_WARNING:
            out.append(Finding("backbone_unchanged", "warning", combo, fold, "stage2",
                               f"Stage 2 barely moved the backbone: relative change {change:.3e} < "
                               f"{BACKBONE_CHANGE_WARNING:.0e} (lr {sr.get('lr')})", ev))
    return out


def check_learning_rate(run: RunRecords) -> list[Finding]:
    out = []
    for combo, fold, stage, sr in stage_records(run.jobs):
        loss = stage_history(sr, "loss")
        val_loss = stage_history(sr, "val_loss")
        lr = sr.get("lr")
        bad = [v for v in loss + val_loss if not math.isfinite(v)]
        if bad:
            first = next(i for i, v in enumerate(loss + val_loss) if not math.isfinite(v))
            which = "loss" if first < len(loss) else "val_loss"
            epoch = (first if first < len(loss) else first - len(loss)) + 1
            out.append(Finding("lr_too_high", "error", combo, fold, stage,
                               f"{which} is {bad[0]} from epoch {epoch} (lr {lr})",
                               {"lr": lr, "first_bad_epoch": epoch, "metric": which, "value": str(bad[0])}))
            continue
        if len(loss) >= DIVERGE_MIN_EPOCHS:
            steps = np.diff(loss)
            up = float(np.mean(steps > 0))
            rise = (loss[-1] - loss[0]) / max(abs(loss[0]), 1e-12)
            if up >= DIVERGE_UP_FRACTION and rise > DIVERGE_RISE_REL:
                out.append(Finding("lr_too_high", "warning", combo, fold, stage,
                                   f"training loss rose {rise:.0%} over {len(loss)} epochs ({loss[0]:.4g} -> "
                                   f"{loss[-1]:.4g}; {up:.0%} of epochs went up) at lr {lr}",
                                   {"lr": lr, "loss_first": loss[0], "loss_last": loss[-1],
                                    "relative_rise": round(rise, 4), "up_fraction": round(up, 3),
                                    "threshold_rise": DIVERGE_RISE_REL, "threshold_up_fraction": DIVERGE_UP_FRACTION}))
                continue
        if len(loss) >= 2:
            rel = abs(loss[-1] - loss[0]) / max(abs(loss[0]), 1e-12)
            qwks = [q for q in [to_float(sr.get("start_val_qwk"))] + stage_history(sr, "val_qwk") if q is not None]
            qrange = (max(qwks) - min(qwks)) if qwks else 0.0
            if rel < LOSS_FLAT_REL and qrange < QWK_FLAT:
                out.append(Finding("lr_too_low", "warning", combo, fold, stage,
                                   f"no movement at lr {lr}: training loss changed {rel:.2%} over {len(loss)} epochs "
                                   f"({loss[0]:.4g} -> {loss[-1]:.4g}) and validation QWK stayed within {qrange:.4f}",
                                   {"lr": lr, "loss_first": loss[0], "loss_last": loss[-1],
                                    "relative_loss_change": round(rel, 6), "val_qwk_range": round(qrange, 6),
                                    "threshold_loss": LOSS_FLAT_REL, "threshold_qwk": QWK_FLAT}))
    return out


def check_alpha(run: RunRecords) -> list[Finding]:
    out = []
    for job in run.jobs:
        alpha = job.get("alpha")
        if not alpha:
            continue
        a = np.asarray(alpha, dtype=float)
        if a.min() <= 0:
            ratio = float("inf")
        else:
            ratio = float(a.max() / a.min())
        cap = to_float(job.get("max_alpha_ratio"))
        combo, fold = job["combination"], int(job["fold"])
        ev = {"alpha": [round(x, 4) for x in a.tolist()], "ratio": round(ratio, 3), "max_alpha_ratio": cap}
        if cap and cap > 0:
            if ratio > cap * (1 + ALPHA_RATIO_TOL):
                out.append(Finding("extreme_alpha", "error", combo, fold, None,
                                   f"focal alpha max/min ratio {ratio:.2f} exceeds the configured cap {cap:g}",
                                   ev))
        elif ratio > ALPHA_RATIO_UNCAPPED:
            out.append(Finding("extreme_alpha", "warning", combo, fold, None,
                               f"focal alpha max/min ratio {ratio:.2f} > {ALPHA_RATIO_UNCAPPED:g} with the cap "
                               "disabled (max_alpha_ratio 0)", {**ev, "threshold": ALPHA_RATIO_UNCAPPED}))
    return out


def check_steps(run: RunRecords) -> list[Finding]:
    out = []
    # stages train on the fitting part of the fold's training patients (all of them with selection: outer)
    n_train_of = {(j["combination"], int(j["fold"])): j.get("n_fit", j.get("n_train")) for j in run.jobs}
    for combo, fold, stage, sr in stage_records(run.jobs):
        steps, batch, n = sr.get("steps_per_epoch"), sr.get("batch"), sr.get("n_train")
        if not steps or not batch or not n:
            continue
        covered = steps * batch
        ev = {"steps_per_epoch": steps, "batch": batch, "n_train": n, "samples_per_epoch": covered}
        if covered < n:
            out.append(Finding("steps_mismatch", "error", combo, fold, stage,
                               f"steps_per_epoch {steps} x batch {batch} = {covered} < n_train {n}: "
                               f"{n - covered} training samples are not seen each epoch", ev))
        elif covered >= n + batch:
            out.append(Finding("steps_mismatch", "warning", combo, fold, stage,
                               f"steps_per_epoch {steps} x batch {batch} = {covered} >= n_train {n} + batch: "
                               "the epoch repeats data (steps computed for another dataset?)", ev))
        fold_n = n_train_of.get((combo, fold))
        if fold_n and fold_n != n:
            out.append(Finding("steps_mismatch", "error", combo, fold, stage,
                               f"the stage trained on n_train {n} but the fold's training part has {fold_n} samples",
                               {**ev, "fold_n_train": fold_n}))
    return out


def check_transfer(run: RunRecords) -> list[Finding]:
    out = []
    for job in run.jobs:
        combo, fold = job["combination"], int(job["fold"])
        mods = _image_modalities(combo)
        if not mods:
            continue
        reports = [r for r in (job.get("transfer") or []) if isinstance(r, dict)]
        for m in mods:
            mine = [r for r in reports if str(r.get("source", "")) in (m, f"pretrain_{m}")
                    or str(r.get("source", "")).endswith("_" + m)]
            if not mine:
                out.append(Finding("transfer_incomplete", "error", combo, fold, None,
                                   f"no transfer report for {m}: the {m} branch did not start from its pre-trained "
                                   f"weights ({len(reports)} report(s) for {len(mods)} image modalities)",
                                   {"modality": m, "n_reports": len(reports), "n_image_modalities": len(mods)}))
                continue
            for r in mine:
                missing, mismatch = list(r.get("missing") or []), list(r.get("shape_mismatch") or [])
                tensors = r.get("matched_tensors")
                problems = []
                if not r.get("verified"):
                    problems.append("values not verified after loading")
                if missing:
                    problems.append(f"{len(missing)} missing layer(s) {missing[:3]}")
                if mismatch:
                    problems.append(f"{len(mismatch)} shape mismatch(es)")
                if not tensors:
                    problems.append(f"matched_tensors {tensors}")
                if problems:
                    out.append(Finding("transfer_incomplete", "error", combo, fold, None,
                                       f"transfer {r.get('source')} -> {r.get('target')}: " + "; ".join(problems),
                                       {"modality": m, "verified": bool(r.get("verified")),
                                        "matched_tensors": tensors, "missing": len(missing),
                                        "shape_mismatch": len(mismatch)}))
    return out
