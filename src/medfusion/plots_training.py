"""Training plots of a review: learning curves per combination and the fusion weight over epochs.

- ``curves_<combination>.png``: per fold, training/validation loss and QWK on one epoch
  axis per job: pre-training | Stage 1 | Stage 2, boundaries marked, each stage's start
  QWK and best epoch shown.
- ``fusion_weight.png``: the forest weight s(k w) of the fusion layer over Stage 1 and
  Stage 2 epochs, per fusion combination and fold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfusion.plotting import _float, _pyplot, _qwk, _save

TRAIN_COLOR, VAL_COLOR = "tab:blue", "tab:orange"
PRETRAIN_STYLES = ("-", "--", ":", "-.")


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
