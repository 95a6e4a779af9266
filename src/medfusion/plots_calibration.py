"""Reliability diagrams: pooled out-of-fold predictions of each combination, per view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.evaluation.calibration import expected_calibration_error, reliability
from medfusion.evaluation.late_fusion import name_of_folder
from medfusion.evaluation.visits import PROBA_COLUMNS


def pooled_predictions(run_dir: Path) -> dict[str, pd.DataFrame]:
    """combination -> every fold's prediction rows (learned combinations and late-fusion baselines)."""
    out = {}
    for folder in sorted((Path(run_dir) / "predictions").glob("*")):
        frames = [pd.read_csv(p) for p in sorted(folder.glob("fold_*.csv"))]
        frames = [f for f in frames if set(PROBA_COLUMNS + ["y_true"]) <= set(f.columns)]
        if frames:
            out[name_of_folder(folder.name)] = pd.concat(frames, ignore_index=True)
    return out


def plot_reliability(run, path: Path, pyplot, save) -> bool:
    pooled = pooled_predictions(run.run_dir)
    if not pooled:
        return False
    plt = pyplot()
    ncols = min(4, len(pooled))
    nrows = int(np.ceil(len(pooled) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat[len(pooled):]:
        ax.axis("off")
    for ax, (combo, pred) in zip(axes.flat, pooled.items()):
        y, proba = pred["y_true"].to_numpy(), pred[PROBA_COLUMNS].to_numpy()
        table = reliability(y, proba)
        used = table[table["count"] > 0]
        ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
        ax.bar((used["lo"] + used["hi"]) / 2, used["accuracy"], width=0.09, alpha=0.6, color="tab:blue")
        ax.plot(used["confidence"], used["accuracy"], "o", color="black", ms=3)
        ax.set_title(f"{combo}\nECE {expected_calibration_error(y, proba):.3f} (n={len(y)} views)", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    fig.supxlabel("confidence (predicted class probability)", fontsize=9)
    fig.supylabel("accuracy", fontsize=9)
    fig.suptitle("Reliability, pooled out-of-fold predictions (diagonal: perfectly calibrated)", fontsize=10)
    fig.tight_layout()
    save(fig, path)
    return True
