"""Review of a finished (or partial) run folder: key figures per job and training-health findings.

Every failure of the reference study was found by a person reading fold logs for days: a
validation kappa stuck at 0 because every prediction was the rare class, "best epoch 1"
in every stage, a frozen branch with a few hundred trainable parameters, a Stage 2 learning
rate too low to move anything, encoder weights unchanged after "fine-tuning", fusion worse
than its own metadata branch, steps_per_epoch that did not match the data. This module reads
the machine-readable job records a search writes (``jobs/<combination>/fold_<k>.json``) and
turns each of those patterns into a finding with its evidence and a one-line suggestion.

Entry point: :func:`run_review` (called at the end of a search and by ``--mode review``).
It prints the findings (WARNING, so they show at verbosity 0) and the per-job key figures
(INFO), writes ``review.json`` and, through :mod:`medfusion.report`, the plots and
``report.md``, and returns the exit code (1 with ``strict`` when an error-severity finding
exists, else 0). Nothing here imports TensorFlow: reviewing a run takes seconds.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES, MODALITIES, all_combinations
from medfusion.runs import atomic_write_json

SEVERITIES = ("error", "warning", "info")

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
    "degenerate_predictions": "check the focal alpha cap (train.max_alpha_ratio), the LR and this job's learning curves",
    "no_learning": "raise the stage's LR or epochs; check its trainable params and learning curves",
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


# ----------------------------------------------------------------------------- loading
@dataclass
class RunRecords:
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
    return (_ORDER.index(name), name) if name in _ORDER else (len(_ORDER), name)


def _read_csv(path: Path) -> pd.DataFrame | None:
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
    return RunRecords(run_dir, jobs, _read_csv(run_dir / "results.csv"), _read_csv(run_dir / "summary.csv"),
                      config if isinstance(config, dict) else {}, _read_csv(run_dir / "oracle_reference.csv"),
                      unreadable, _read_csv(run_dir / "comparisons.csv"))


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


# ----------------------------------------------------------------------------- helpers
def _f(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def _qwk(job: dict) -> float | None:
    return _f((job.get("metrics") or {}).get("qwk"))


def _counts(d, n=len(CLASSES)) -> np.ndarray | None:
    if not isinstance(d, dict):
        return None
    return np.array([int(d.get(c, 0) or 0) for c in CLASSES[:n]], dtype=np.int64)


def pred_counts(job: dict, run_dir: Path | None = None) -> np.ndarray | None:
    """Predicted class counts on the validation fold: the record's val_pred_counts, else the predictions CSV."""
    counts = _counts(job.get("val_pred_counts"))
    if counts is not None:
        return counts
    if run_dir is not None and job.get("predictions_file"):
        pred = _read_csv(Path(run_dir) / job["predictions_file"])
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


def _history(sr: dict, key: str) -> list[float]:
    values = (sr.get("history") or {}).get(key) or []
    out = []
    for v in values:
        f = _f(v)
        out.append(float("nan") if f is None else f)
    return out


def _fmt(x, digits=4) -> str:
    f = _f(x)
    return "n/a" if f is None else f"{f:.{digits}f}"


def _image_modalities(combination: str) -> list[str]:
    return [m for m in combination.split("+") if m != "metadata"]


# ----------------------------------------------------------------------------- checks
def check_degenerate(run: RunRecords) -> list[Finding]:
    out = []
    for job in run.jobs:
        combo, fold = job["combination"], int(job["fold"])
        counts = pred_counts(job, run.run_dir)
        qwk = _qwk(job)
        if counts is not None and counts.sum() > 0:
            share = counts.max() / counts.sum()
            if share >= DEGENERATE_SHARE:
                cls = CLASSES[int(counts.argmax())]
                train = _counts(job.get("train_class_counts"))
                rare = CLASSES[int(train.argmin())] if train is not None and train.sum() else None
                val = _counts(job.get("val_class_counts"))
                true_share = float(val[int(counts.argmax())] / val.sum()) if val is not None and val.sum() else None
                note = " (the rarest training class)" if cls == rare else ""
                out.append(Finding(
                    "degenerate_predictions", "error", combo, fold, None,
                    f"{share:.0%} of validation predictions are class {cls}{note} "
                    f"({int(counts.max())}/{int(counts.sum())}; threshold {DEGENERATE_SHARE:.0%}); "
                    f"true share of {cls} {'n/a' if true_share is None else f'{true_share:.0%}'}; QWK {_fmt(qwk)}",
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
    out = []
    for combo, fold, stage, sr in stage_records(run.jobs):
        best_epoch, run_epochs = sr.get("best_epoch"), sr.get("epochs_run")
        best, start = _f(sr.get("best_val_qwk")), _f(sr.get("start_val_qwk"))
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
        change = _f(sr.get("backbone_change"))
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
        loss = _history(sr, "loss")
        val_loss = _history(sr, "val_loss")
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
            qwks = [q for q in [_f(sr.get("start_val_qwk"))] + _history(sr, "val_qwk") if q is not None]
            qrange = (max(qwks) - min(qwks)) if qwks else 0.0
            if rel < LOSS_FLAT_REL and qrange < QWK_FLAT:
                out.append(Finding("lr_too_low", "warning", combo, fold, stage,
                                   f"no movement at lr {lr}: training loss changed {rel:.2%} over {len(loss)} epochs "
                                   f"({loss[0]:.4g} -> {loss[-1]:.4g}) and validation QWK stayed within {qrange:.4f}",
                                   {"lr": lr, "loss_first": loss[0], "loss_last": loss[-1],
                                    "relative_loss_change": round(rel, 6), "val_qwk_range": round(qrange, 6),
                                    "threshold_loss": LOSS_FLAT_REL, "threshold_qwk": QWK_FLAT}))
    return out


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
            if job is None or _qwk(job) is None:
                continue
            scores = {m: _qwk(run.job(m, fold)) for m in members if run.job(m, fold) is not None}
            scores = {m: q for m, q in scores.items() if q is not None and not math.isnan(q)}
            if not scores:
                continue
            best = max(scores, key=scores.get)
            per_fold.append({"fold": fold, "qwk": round(_qwk(job), 4), "best_member": best,
                             "best_member_qwk": round(scores[best], 4),
                             "below": bool(_qwk(job) < scores[best] - FUSION_TOLERANCE)})
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
        cap = _f(job.get("max_alpha_ratio"))
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
        tr, va = _counts(job.get("train_class_counts")), _counts(job.get("val_class_counts"))
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
    n_folds = _f(((run.config.get("search") or {}).get("cv_folds")))
    folds = list(range(int(n_folds))) if n_folds else run.folds
    for combo in run.combinations:
        have = {int(j["fold"]) for j in run.jobs if j["combination"] == combo}
        missing = [k for k in folds if k not in have]
        if missing:
            out.append(Finding("incomplete_run", "warning", combo, None, None,
                               f"job records for {len(have)} of {len(folds)} folds; missing fold(s) {missing}",
                               {"n_folds_found": len(have), "n_folds_expected": len(folds), "missing_folds": missing}))
    for job in run.jobs:
        if job.get("stage2_skipped"):
            out.append(Finding("stage2_skipped", "info", job["combination"], int(job["fold"]), "stage2",
                               "Stage 2 was skipped (train.stage2.epochs 0): the backbones were never fine-tuned",
                               {"stage2_epochs": 0}))
    return out


CHECKS = (check_protocol, check_completeness, check_degenerate, check_no_learning, check_frozen, check_learning_rate, check_fusion,
          check_alpha, check_steps, check_transfer, check_shift)


def review_findings(run: RunRecords) -> list[Finding]:
    findings = [f for check in CHECKS for f in check(run)]
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (rank[f.severity], combination_order(f.combination or ""),
                                           -1 if f.fold is None else f.fold, f.check))


# ----------------------------------------------------------------------------- key figures
def _stage_figures(sr: dict | None) -> dict | None:
    if not isinstance(sr, dict):
        return None
    return {"best_epoch": sr.get("best_epoch"), "epochs_run": sr.get("epochs_run"),
            "start_val_qwk": _f(sr.get("start_val_qwk")), "best_val_qwk": _f(sr.get("best_val_qwk")),
            "lr": sr.get("lr"), "trainable_params": sr.get("trainable_params"), "total_params": sr.get("total_params"),
            "backbone_change": _f(sr.get("backbone_change"))}


def key_figures(job: dict, run_dir: Path | None = None) -> dict:
    counts = pred_counts(job, run_dir)
    stages = job.get("stages") or {}
    return {
        "combination": job["combination"], "fold": int(job["fold"]), "n_val": job.get("n_val"), "qwk": _qwk(job),
        "pretrain": {m: _stage_figures(sr) for m, sr in sorted((job.get("pretrain") or {}).items())},
        "stage1": _stage_figures(stages.get("stage1")),
        "stage2": "skipped" if job.get("stage2_skipped") else _stage_figures(stages.get("stage2")),
        "stage2_kept": job.get("stage2_kept"),
        "fusion_rf_weight": job.get("fusion_rf_weight"),
        "val_pred_counts": None if counts is None else dict(zip(CLASSES, counts.tolist())),
        "val_class_counts": job.get("val_class_counts"),
    }


def format_stage(name: str, s: dict | str | None) -> str:
    if s is None:
        return ""
    if s == "skipped":
        return f"{name} skipped"
    return (f"{name} ep {s['best_epoch']}/{s['epochs_run']} QWK {_fmt(s['start_val_qwk'], 3)}->"
            f"{_fmt(s['best_val_qwk'], 3)}")


def format_key_figures(kf: dict) -> str:
    parts = [f"{kf['combination']} fold {kf['fold']}: QWK {_fmt(kf['qwk'])}"]
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
        parts.append(f"forest weight {_fmt(w.get('start'), 3)}->{_fmt(w.get('end'), 3)}")
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
    from medfusion.report import write_report

    report = write_report(run, findings, figures, log)
    log.warning("review: %d error(s), %d warning(s), %d info; %s, %s", counts["error"], counts["warning"],
                counts["info"], run_dir / "review.json", report)
    if strict and counts["error"]:
        log.warning("review --strict: %d error finding(s) -> exit status 1", counts["error"])
        return 1
    return 0
