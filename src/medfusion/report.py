"""Plots under logs/<run>/plots/ and the one-page logs/<run>/report.md.

Reads the run through :mod:`medfusion.records` (never through review.py, which calls
:func:`write_report`), so the two modules do not import each other.

- ``summary_qwk.png``: QWK mean +- sample std per combination, with each fold's score.
- ``confusion.png``: confusion matrix per combination, summed over folds (from the
  validation predictions: y_true and the argmax of p_I, p_P, p_R).
- ``curves_<combination>.png``: per fold, training/validation loss and QWK on one epoch
  axis per job: pre-training | Stage 1 | Stage 2, boundaries marked, each stage's start
  QWK and best epoch shown.
- ``fusion_weight.png``: the forest weight s(k w) of the fusion layer over Stage 1 and
  Stage 2 epochs, per fusion combination and fold.

Matplotlib runs on the Agg backend (no display). A plot that fails is reported in the
log and in report.md; it does not stop the review.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES
from medfusion.records import SEVERITIES, format_stage, summary_from_jobs
from medfusion.runs import atomic_write_bytes, atomic_write_text

PLOTS_DIR = "plots"
TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"
PRETRAIN_STYLES = ("-", "--", ":", "-.")
SEVERITY_MARK = {"error": "**error**", "warning": "warning", "info": "info"}


def plot_reliability(run, path: Path, pyplot, save) -> bool:
    from medfusion.plots_calibration import plot_reliability as plot

    return plot(run, path, pyplot, save)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Render to memory, then write atomically (temporary sibling + rename)."""
    buf = io.BytesIO()
    constrained = fig.get_layout_engine() is not None  # already laid out; "tight" would draw it twice
    fig.savefig(buf, format="png", dpi=110, bbox_inches=None if constrained else "tight")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _float(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _qwk(job) -> float:
    return _float((job.get("metrics") or {}).get("qwk"))


def _summary(run) -> pd.DataFrame:
    """summary.csv when it has the QWK columns, else recomputed from the job records."""
    s = run.summary
    if s is not None and {"combination", "qwk_mean", "qwk_std"} <= set(s.columns) and len(s):
        return s
    return summary_from_jobs(run)


def _fold_qwks(run, combination: str) -> list[float]:
    """Per-fold view QWKs: from the job records, else (late-fusion baselines have none) from results.csv."""
    folds = [_qwk(j) for j in run.jobs if j["combination"] == combination]
    res = run.results
    if not folds and res is not None and {"combination", "qwk"} <= set(res.columns):
        folds = [_float(q) for q in res.loc[res["combination"] == combination, "qwk"]]
    return folds


# ----------------------------------------------------------------------------- plots
def plot_summary(run, path: Path) -> bool:
    plt = _pyplot()
    summary = _summary(run).sort_values("qwk_mean", ascending=True, kind="stable")
    combos = summary["combination"].tolist()
    fig, ax = plt.subplots(figsize=(8, 0.55 * len(combos) + 1.6))
    y = np.arange(len(combos))
    colors = ["tab:blue" if ":" in c else "tab:green" if "+" in c else "tab:gray" for c in combos]
    ax.barh(y, summary["qwk_mean"], xerr=summary["qwk_std"].fillna(0), color=colors, alpha=0.6,
            error_kw={"capsize": 4, "elinewidth": 1.2}, height=0.6)
    for i, combo in enumerate(combos):
        folds = _fold_qwks(run, combo)
        ax.scatter(folds, np.full(len(folds), i), color="black", s=14, zorder=3,
                   label="one fold" if i == 0 else None)
        m, s = summary.iloc[i]["qwk_mean"], summary.iloc[i]["qwk_std"]
        ax.text(1.02, i, f"{m:.3f} ± {0 if pd.isna(s) else s:.3f}", va="center", fontsize=9,
                transform=ax.get_yaxis_transform())
    if run.oracle is not None and {"reference", "qwk"} <= set(run.oracle.columns):
        ref = run.oracle[run.oracle["reference"] == "oracle:all"]["qwk"]
        if len(ref):
            ax.axvline(ref.mean(), color="tab:red", ls="--", lw=1, label=f"Bayes oracle (all) {ref.mean():.3f}")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, combos, fontsize=9)
    lo = min(0.0, np.nanmin([_qwk(j) for j in run.jobs] + [0.0]) - 0.05)
    ax.set_xlim(lo, 1.0)
    ax.set_xlabel("validation QWK per view (bar: mean ± sample std over folds; dots: folds)")
    ax.set_title("QWK per combination (green: learned fusion, blue: late-fusion baseline, grey: single modality)",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)
    return True


def confusion_counts(run, combination: str) -> tuple[np.ndarray, int]:
    """Confusion matrix (rows true, columns predicted) summed over the combination's folds; also the fold count."""
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    n = 0
    for job in run.jobs:
        if job["combination"] != combination:
            continue
        rel = job.get("predictions_file") or f"predictions/{combination}/fold_{job['fold']}.csv"
        path = Path(run.run_dir) / rel
        if not path.is_file():
            continue
        pred = pd.read_csv(path)
        y = pred["y_true"].to_numpy(dtype=int)
        p = pred[[f"p_{c}" for c in CLASSES]].to_numpy().argmax(axis=1)
        np.add.at(cm, (y, p), 1)
        n += 1
    return cm, n


def plot_confusion(run, path: Path) -> bool:
    plt = _pyplot()
    mats = [(c, *confusion_counts(run, c)) for c in run.combinations]
    mats = [m for m in mats if m[2] > 0]
    if not mats:
        return False
    ncols = min(3, len(mats))
    nrows = int(np.ceil(len(mats) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.ravel()[len(mats):]:
        ax.axis("off")
    for ax, (combo, cm, n) in zip(axes.ravel(), mats):
        rows = cm.sum(axis=1, keepdims=True)
        frac = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=9,
                        color="white" if frac[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(CLASSES)), CLASSES)
        ax.set_yticks(range(len(CLASSES)), CLASSES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{combo.replace('+', ' + ')}\n{n} fold(s), {cm.sum()} samples", fontsize=9)
    fig.suptitle("Validation confusion matrices summed over folds (colour: share of the true class)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def _segments(job: dict) -> list[tuple[str, list[tuple[str, dict]]]]:
    """[(segment label, [(series label, StageResult)])] in time order: pre-training, stage1, stage2."""
    segs = []
    pre = [(m, sr) for m, sr in sorted((job.get("pretrain") or {}).items()) if isinstance(sr, dict)]
    if pre:
        segs.append(("pretrain" if len(pre) > 1 else f"pretrain {pre[0][0]}", pre))
    stages = job.get("stages") or {}
    for name in ("stage1", "stage2"):
        if isinstance(stages.get(name), dict):
            label = name
            if name == "stage2" and "stage2_kept" in job:
                label += " (kept)" if job["stage2_kept"] else " (reverted)"
            segs.append((label, [(name, stages[name])]))
    return segs


def _hist(sr, key):
    return [_float(v) for v in ((sr.get("history") or {}).get(key) or [])]


def plot_curves(run, combination: str, path: Path) -> bool:
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    jobs = [j for j in run.jobs if j["combination"] == combination and _segments(j)]
    if not jobs:
        return False
    fig, axes = plt.subplots(len(jobs), 2, figsize=(12, 2.9 * len(jobs) + 1.0), squeeze=False, layout="constrained")
    multi_pre = False
    for row, job in zip(axes, jobs):
        ax_loss, ax_qwk = row
        offset = 0
        for seg_i, (label, series) in enumerate(_segments(job)):
            length = max(len(_hist(sr, "loss")) for _, sr in series)
            multi_pre |= label == "pretrain" and len(series) > 1
            for k, (name, sr) in enumerate(series):
                ls = PRETRAIN_STYLES[k % len(PRETRAIN_STYLES)] if label == "pretrain" else "-"
                x = offset + np.arange(1, len(_hist(sr, "loss")) + 1)
                for ax, key in ((ax_loss, "loss"), (ax_qwk, "qwk")):
                    tr, va = _hist(sr, key), _hist(sr, f"val_{key}")
                    ax.plot(x[:len(tr)], tr, ls=ls, color=TRAIN_COLOR, marker=".", ms=4)
                    ax.plot(x[:len(va)], va, ls=ls, color=VAL_COLOR, marker=".", ms=4)
                start = _float(sr.get("start_val_qwk"))
                if not np.isnan(start):
                    ax_qwk.plot([offset + 0.5], [start], "o", mfc="none", color=VAL_COLOR, ms=6)
                best = sr.get("best_epoch")
                va = _hist(sr, "val_qwk")
                if best and 1 <= best <= len(va):
                    ax_qwk.plot([offset + best], [va[best - 1]], "*", color="tab:red", ms=11, zorder=4)
            for ax in (ax_loss, ax_qwk):
                if seg_i > 0:
                    ax.axvline(offset + 0.5, color="gray", ls="--", lw=1)
                ax.text(offset + 0.5 + length / 2, 1.01, label, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=8, color="dimgray")
            offset += length
        for ax in (ax_loss, ax_qwk):
            ax.set_xlim(0, offset + 1)
            ax.grid(alpha=0.3)
            ax.set_xlabel("epoch (pretrain | stage1 | stage2 on one axis)", fontsize=8)
        ax_loss.set_ylabel(f"fold {job['fold']}\nfocal loss", fontsize=9)
        ax_qwk.set_ylabel(f"QWK (fold {job['fold']} final {_qwk(job):.3f})", fontsize=9)
        ax_qwk.axhline(0, color="black", lw=0.6)
        for ax in (ax_loss, ax_qwk):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = [Line2D([], [], color=TRAIN_COLOR, marker=".", label="train"),
               Line2D([], [], color=VAL_COLOR, marker=".", label="validation"),
               Line2D([], [], color=VAL_COLOR, marker="o", mfc="none", ls="none", label="val QWK at stage start"),
               Line2D([], [], color="tab:red", marker="*", ls="none", ms=10, label="best epoch (restored)")]
    if multi_pre:
        mods = sorted({m for j in jobs for m in (j.get("pretrain") or {})})
        handles += [Line2D([], [], color="gray", ls=PRETRAIN_STYLES[i % len(PRETRAIN_STYLES)],
                           label=f"pretrain {m}") for i, m in enumerate(mods)]
    fig.suptitle(f"Learning curves: {combination}", fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    _save(fig, path)
    return True


def plot_fusion_weight(run, path: Path) -> bool:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    combos = [c for c in run.combinations if "metadata" in c.split("+") and "+" in c]
    combos = [c for c in combos if any(j["combination"] == c and _hist((j.get("stages") or {}).get("stage1") or {},
                                                                         "fusion_rf_weight") for j in run.jobs)]
    if not combos:
        return False
    fig, axes = plt.subplots(1, len(combos), figsize=(max(5.5, 4.8 * len(combos)), 3.6), squeeze=False, sharey=True)
    for ax, combo in zip(axes[0], combos):
        for i, job in enumerate(j for j in run.jobs if j["combination"] == combo):
            color = f"C{i % 10}"
            stages = job.get("stages") or {}
            s1, s2 = stages.get("stage1") or {}, stages.get("stage2") or {}
            w1 = _hist(s1, "fusion_rf_weight")
            start = _float(s1.get("fusion_rf_weight_start"))
            x1 = list(range(0 if not np.isnan(start) else 1, len(w1) + 1))
            y1 = ([start] if not np.isnan(start) else []) + w1
            ax.plot(x1, y1, color=color, marker=".", ms=4, label=f"fold {job['fold']}")
            b1 = s1.get("best_epoch")
            if b1 and 1 <= b1 <= len(w1):
                ax.plot([b1], [w1[b1 - 1]], "*", color=color, ms=10, mec="black", mew=0.5)
            w2 = _hist(s2, "fusion_rf_weight")
            if w2:
                x2 = list(range(len(w1), len(w1) + len(w2) + 1))
                s2_start = _float(s2.get("fusion_rf_weight_start"))  # the restored best Stage 1 epoch
                s2_start = y1[-1] if np.isnan(s2_start) else s2_start
                ax.plot(x2, [s2_start] + w2, color=color, ls="--", marker=".", ms=4)
                ax.plot([len(w1)], [s2_start], "|", color=color, ms=14)
                b2 = s2.get("best_epoch")
                if job.get("stage2_kept") and b2 and 1 <= b2 <= len(w2):
                    ax.plot([len(w1) + b2], [w2[b2 - 1]], "*", color=color, ms=10, mec="black", mew=0.5)
            fitted = job.get("fusion_rf_weight") or {}
            if fitted.get("method") == "selection_log_loss":  # the value the model keeps, fit after training
                end = len(w1) + len(w2) + 1
                ax.plot([end], [_float(fitted.get("end"))], "D", color=color, ms=7, mec="black", mew=0.6)
        ax.set_title(combo.replace("+", " + "), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("forest weight s(k w)")
    fig.suptitle("Fusion layer: weight of the metadata forest over epochs\n(0 = start; solid stage1, dashed stage2, "
                 "| stage2 starts, * weights kept; diamond: the value fit on the selection patients, which the "
                 "model keeps)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


# ----------------------------------------------------------------------------- report.md
def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(x, digits=4) -> str:
    f = _float(x)
    return "" if np.isnan(f) else f"{f:.{digits}f}"


def plot_name(combination: str) -> str:
    return f"curves_{combination}.png"


def write_plots(run, log: logging.Logger) -> tuple[list[tuple[str, str]], list[str]]:
    """Write every plot; returns ([(title, file name)], [failure messages])."""
    plots_dir = Path(run.run_dir) / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    tasks = [("QWK per combination", "summary_qwk.png", lambda p: plot_summary(run, p)),
             ("Confusion matrices (summed over folds)", "confusion.png", lambda p: plot_confusion(run, p)),
             ("Fusion weight over epochs", "fusion_weight.png", lambda p: plot_fusion_weight(run, p)),
             ("Reliability (calibration)", "reliability.png", lambda p: plot_reliability(run, p, _pyplot, _save))]
    for combo in run.combinations:
        if combo != "metadata":
            tasks.append((f"Learning curves: {combo}", plot_name(combo), lambda p, c=combo: plot_curves(run, c, p)))
    written, failed = [], []
    for title, name, fn in tasks:
        try:
            if fn(plots_dir / name):
                written.append((title, name))
        except Exception as exc:  # a broken plot must not hide the findings
            _pyplot().close("all")
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            log.warning("review: plot %s failed: %s: %s", name, type(exc).__name__, exc)
    return written, failed


def _header(run) -> list[str]:
    name = Path(run.run_dir).name
    cfg = run.config or {}
    model, train, search = cfg.get("model") or {}, cfg.get("train") or {}, cfg.get("search") or {}
    facts = [f"{len(run.jobs)} job records", f"{len(run.combinations)} combinations", f"{len(run.folds)} folds"]
    if model:
        facts.append(f"backbone `{model.get('backbone')}` (weights `{model.get('weights')}`)")
    if train:
        lrs = ", ".join(f"{s} lr {(train.get(s) or {}).get('lr')} x{(train.get(s) or {}).get('epochs')} epochs"
                        for s in ("pretrain", "stage1", "stage2") if isinstance(train.get(s), dict))
        facts.append(f"{lrs}; batch {train.get('batch_size')}; max alpha ratio {train.get('max_alpha_ratio')}")
    if search.get("seed") is not None:
        facts.append(f"seed {search.get('seed')}")
    return [f"# Review of run `{name}`", "", "; ".join(facts) + "."]


def _summary_section(run) -> list[str]:
    """The summary table, the oracle reference and each fusion against its best member."""
    from medfusion.evaluation.late_fusion import is_late_fusion

    lines = ["", "## Summary", "",
             "Outer validation scores (predicted once, after every choice was made on the inner selection "
             "patients), best first: visit QWK mean over folds with a 95% patient-bootstrap interval of the "
             "pooled out-of-fold visits, then per-view scores (mean and sample std over folds).", ""]
    summary = _summary(run)
    if summary["combination"].map(lambda c: is_late_fusion(str(c))).any():
        lines += ["Rows `late_mean:<combination>` (the mean of the combination's single-modality members' "
                  "probabilities) and `ensemble:metadata` (the mean of every combination containing metadata) "
                  "are late-fusion baselines: nothing is trained for them, so they have no job record.", ""]
    cols = [c for c in ("n_folds", "visit_qwk_mean", "visit_qwk_ci_low", "visit_qwk_ci_high", "qwk_mean", "qwk_std",
                        "kappa_mean", "accuracy_mean", "f1_macro_mean") if c in summary.columns]
    lines.append("| combination | " + " | ".join(cols) + " |")
    lines.append("| --- |" + " ---: |" * len(cols))
    for _, r in summary.iterrows():
        lines.append(f"| {r['combination']} | " + " | ".join(
            str(int(r[c])) if c == "n_folds" else _num(r[c]) for c in cols) + " |")
    if run.oracle is not None and {"reference", "qwk"} <= set(run.oracle.columns):
        ref = run.oracle.groupby("reference")["qwk"].mean()
        lines += ["", "Reference (the Bayes oracle shipped with the dataset, same validation samples): " +
                  ", ".join(f"{k} {v:.4f}" for k, v in ref.items()) + "."]
    comp = getattr(run, "comparisons", None)
    if comp is not None and len(comp):
        lines += ["", "Each fusion against its best single-modality member (pooled visit QWK difference, 95% paired "
                  "patient-bootstrap interval, folds won):", "",
                  "| combination | best member | difference | interval | folds won |", "| --- | --- | ---: | --- | ---: |"]
        lines += [f"| {r.combination} | {r.best_member} | {r.delta_visit_qwk:+.4f} | [{r.ci_low:+.3f}, {r.ci_high:+.3f}] "
                  f"| {r.folds_won} of {r.n_folds} |" for r in comp.itertuples()]
    return lines


def _findings_section(findings) -> list[str]:
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    lines = ["", "## Findings", "",
             f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info. "
             "`python main.py --mode review --run_name NAME --strict` exits non-zero when there is an error. "
             "The same list as data: `review.json`.", ""]
    if not findings:
        return lines + ["No findings."]
    lines.append("| severity | check | combination | fold | stage | evidence | suggestion |")
    lines.append("| --- | --- | --- | ---: | --- | --- | --- |")
    for f in findings:
        lines.append(f"| {SEVERITY_MARK[f.severity]} | `{f.check}` | {_md_escape(f.combination or '')} | "
                     f"{'' if f.fold is None else f.fold} | {_md_escape(f.stage or '')} | "
                     f"{_md_escape(f.message)} | {_md_escape(f.suggestion)} |")
    return lines


def _figures_section(figures) -> list[str]:
    lines = ["", "## Key figures per job", "",
             "Stage columns: best epoch / epochs run, validation QWK at the stage start -> best.", "",
             "| combination | fold | QWK | pre-training | stage1 | stage2 | forest weight | predicted I/P/R | true I/P/R |",
             "| --- | ---: | ---: | --- | --- | --- | --- | --- | --- |"]
    for kf in figures:
        pre = "<br>".join(format_stage(m, s) for m, s in kf["pretrain"].items())
        s2 = kf["stage2"]
        s2_text = format_stage("", s2).strip()
        if isinstance(s2, dict):
            bc = s2.get("backbone_change")
            s2_text += f" ({'kept' if kf['stage2_kept'] else 'reverted'}; backbone change " \
                       f"{'n/a' if bc is None else f'{bc:.2e}'})"
        w = kf.get("fusion_rf_weight")
        w_text = f"{_num(w.get('start'), 3)} -> {_num(w.get('end'), 3)}" if isinstance(w, dict) else ""
        pc, vc = kf.get("val_pred_counts") or {}, kf.get("val_class_counts") or {}
        lines.append(f"| {kf['combination']} | {kf['fold']} | {_num(kf['qwk'])} | {pre} | "
                     f"{format_stage('', kf['stage1']).strip()} | {s2_text} | {w_text} | "
                     f"{'/'.join(str(pc.get(c, '')) for c in CLASSES) if pc else ''} | "
                     f"{'/'.join(str(vc.get(c, '')) for c in CLASSES) if vc else ''} |")
    return lines


def _plots_section(run, plots, failed) -> list[str]:
    lines = ["", "## Plots", ""]
    for title, fname in plots:
        lines += [f"### {title}", "", f"![{title}]({PLOTS_DIR}/{fname})", ""]
    linked = {fname for _, fname in plots}
    others = sorted(p.name for p in (Path(run.run_dir) / PLOTS_DIR).glob("*.png") if p.name not in linked)
    if others:
        lines += ["### Other plots in this folder (from an earlier review)", ""]
        lines += [f"- [{n}]({PLOTS_DIR}/{n})" for n in others] + [""]
    if failed:
        lines += ["### Plots that failed", ""] + [f"- {_md_escape(m)}" for m in failed] + [""]
    return lines


def render_markdown(run, findings, figures, plots, failed) -> str:
    """report.md: header, summary, findings, key figures per job, plots."""
    lines = (_header(run) + _summary_section(run) + _findings_section(findings) + _figures_section(figures)
             + _plots_section(run, plots, failed))
    return "\n".join(lines).rstrip() + "\n"


def write_report(run, findings, figures, log: logging.Logger | None = None) -> Path:
    """Write the plots and report.md into the run folder; returns the report's path."""
    log = log or logging.getLogger("medfusion")
    plots, failed = write_plots(run, log)
    path = Path(run.run_dir) / "report.md"
    atomic_write_text(path, render_markdown(run, findings, figures, plots, failed))
    return path
