"""Plots under logs/<run>/plots/ and the one-page logs/<run>/report.md.

Reads the run through :mod:`medfusion.records` (never through review.py, which calls
:func:`write_report`), so the two modules do not import each other.

- ``summary_qwk.png``: QWK mean +- sample std per combination, with each fold's score.
- ``confusion.png``: confusion matrix per combination, summed over folds (from the
  validation predictions: y_true and the argmax of p_I, p_P, p_R).
- ``curves_<combination>.png`` and ``fusion_weight.png``: see :mod:`medfusion.plots_training`.
- ``reliability.png``: see :mod:`medfusion.plots_calibration`.

Matplotlib runs on the Agg backend (no display). A plot that fails is reported in the
log and in report.md; it does not stop the review.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES
from medfusion.plots_training import plot_curves, plot_fusion_weight
from medfusion.plotting import _float, _pyplot, _qwk, _save
from medfusion.records import SEVERITIES, format_stage, summary_from_jobs
from medfusion.runs import atomic_write_text

PLOTS_DIR = "plots"
SEVERITY_MARK = {"error": "**error**", "warning": "warning", "info": "info"}


def plot_reliability(run, path: Path, pyplot, save) -> bool:
    from medfusion.plots_calibration import plot_reliability as plot

    return plot(run, path, pyplot, save)


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
    """report.md: header, summary, findings, key figures per job, plots, explanations (once explained)."""
    from medfusion.report_explain import explanations_section

    lines = (_header(run) + _summary_section(run) + _findings_section(findings) + _figures_section(figures)
             + _plots_section(run, plots, failed) + explanations_section(run.run_dir))
    return "\n".join(lines).rstrip() + "\n"


def write_report(run, findings, figures, log: logging.Logger | None = None) -> Path:
    """Write the plots and report.md into the run folder; returns the report's path."""
    log = log or logging.getLogger("medfusion")
    plots, failed = write_plots(run, log)
    path = Path(run.run_dir) / "report.md"
    atomic_write_text(path, render_markdown(run, findings, figures, plots, failed))
    return path
