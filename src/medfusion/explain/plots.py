"""The explain figures: saliency grids, metadata importance bars, modality contribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES
from medfusion.plotting import _pyplot, _save

TOP_FEATURES = 20


def sample_title(row, proba) -> str:
    """What one grid row shows: sample, true and predicted class, the three probabilities, why it was picked."""
    probs = " ".join(f"p_{c}={p:.2f}" for c, p in zip(CLASSES, proba))
    return (f"{row['sample_id']}  true {CLASSES[int(row['true'])]}  predicted {CLASSES[int(row['predicted'])]}  "
            f"{probs}  ({row['kind']})")


def grid_file_name(fold: int, true_class: int) -> str:
    return f"fold_{fold}_true_{CLASSES[true_class]}.png"


def plot_saliency_grid(path: Path, crops: dict, maps: dict, flags: dict, titles: list, heading: str) -> None:
    """One row per sample; per image modality the crop and the heat map over it (flagged maps say why)."""
    plt = _pyplot()
    mods = list(crops)
    n = len(titles)
    fig, axes = plt.subplots(n, 2 * len(mods), figsize=(2.6 * 2 * len(mods) + 1.0, 2.9 * n + 0.5), squeeze=False,
                             layout="constrained")
    for r, title in enumerate(titles):
        for j, m in enumerate(mods):
            crop = np.asarray(crops[m][r], np.uint8)
            ax_img, ax_map = axes[r, 2 * j], axes[r, 2 * j + 1]
            ax_img.imshow(crop)
            head = title.replace("  p_", "\np_").replace("  (", "\n(").replace("  true", "\ntrue") + "\n" if j == 0 else ""
            ax_img.set_title(f"{head}{m} crop", fontsize=7, loc="left" if j == 0 else "center")
            ax_map.imshow(crop, alpha=0.55)
            im = ax_map.imshow(maps[m][r], cmap="jet", vmin=0.0, vmax=1.0, alpha=0.5)
            flag = flags[m][r]
            ax_map.set_title(f"{m} saliency" + (f"\nFLAT (all zero): {flag.split(':')[0]}" if flag else ""),
                             fontsize=7, color="red" if flag else "black")
            for ax in (ax_img, ax_map):
                ax.set_xticks([])
                ax.set_yticks([])
    fig.colorbar(im, ax=axes, shrink=0.6, label="saliency (each map scaled to its maximum)")
    fig.suptitle(heading, fontsize=9)
    _save(fig, path)


def plot_importance(path: Path, table: pd.DataFrame) -> None:
    """Top features by mean QWK drop, bars with the spread over folds and repeats."""
    plt = _pyplot()
    top = table.head(TOP_FEATURES).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(top) + 1.4))
    ax.barh(np.arange(len(top)), top["qwk_drop_mean"], xerr=top["qwk_drop_std"], color="tab:blue", alpha=0.7,
            error_kw={"capsize": 3, "elinewidth": 1})
    ax.set_yticks(np.arange(len(top)), [str(f)[:45] for f in top["feature"]], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("validation QWK drop when the feature is permuted between patients\n"
                  "(bar: mean over folds x repeats; whisker: std)", fontsize=8)
    ax.set_title(f"Metadata forest: permutation importance (top {len(top)} of {len(table)})", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_contribution(path: Path, table: pd.DataFrame) -> bool:
    """Per combination: QWK drop when each branch's input is set to its training mean (bars: mean, dots: folds)."""
    combos = [c for c in dict.fromkeys(table["combination"])]
    if not combos:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(combos), figsize=(max(6.5, 3.4 * len(combos) + 0.6), 3.8), squeeze=False, sharey=True)
    for ax, combo in zip(axes[0], combos):
        t = table[table["combination"] == combo]
        branches = list(dict.fromkeys(t["branch"]))
        for i, b in enumerate(branches):
            d = t[t["branch"] == b]["qwk_drop"].to_numpy(float)
            ax.bar(i, np.nanmean(d), color="tab:orange" if b == "metadata" else "tab:green", alpha=0.7)
            ax.scatter(np.full(len(d), i), d, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(branches)), branches, fontsize=7, rotation=20)
        w = t["forest_weight"].dropna().drop_duplicates()
        ax.set_title(combo.replace("+", " + ") + (f"\nforest weight {w.mean():.2f} (folds {w.min():.2f}-"
                                                  f"{w.max():.2f})" if len(w) else ""), fontsize=8)
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("validation QWK drop (per view)", fontsize=8)
    fig.suptitle("Modality contribution: validation QWK lost when one branch's input is replaced by its\n"
                 "training-set mean (bars: mean over folds, dots: folds)", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True
