"""report.md's "Explanations" section: links to what `--mode explain` wrote under logs/<run>/explain/.

Written only when that folder exists (explain runs after the search, on demand); how to read each
figure is in medfusion's docs/explain.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medfusion.explain.run import EXPLAIN_DIR
TOP_IN_REPORT = 5


def _csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def _importance_lines(folder: Path) -> list[str]:
    lines = []
    if (folder / "metadata_importance.png").is_file():
        lines += ["### Metadata importance", "", f"![Metadata importance]({EXPLAIN_DIR}/metadata_importance.png)", ""]
    imp = _csv(folder / "metadata_importance.csv")
    if imp is not None and len(imp):
        lines += [f"Top {min(TOP_IN_REPORT, len(imp))} of {len(imp)} features by validation QWK drop when permuted "
                  f"between patients ([all]({EXPLAIN_DIR}/metadata_importance.csv)):", "",
                  "| feature | QWK drop (mean) | std | fold means |", "| --- | ---: | ---: | --- |"]
        lines += [f"| {r.feature} | {r.qwk_drop_mean:.4f} | {r.qwk_drop_std:.4f} | "
                  f"{r.qwk_drop_fold_min:.3f} to {r.qwk_drop_fold_max:.3f} |" for r in imp.head(TOP_IN_REPORT).itertuples()]
        lines.append("")
    return lines


def _contribution_lines(folder: Path) -> list[str]:
    lines = []
    if (folder / "modality_contribution.png").is_file():
        lines += ["### Modality contribution", "", f"![Modality contribution]({EXPLAIN_DIR}/modality_contribution.png)",
                  ""]
    con = _csv(folder / "modality_contribution.csv")
    if con is not None and len(con):
        g = con.groupby(["combination", "branch"], sort=False).agg(
            drop=("qwk_drop", "mean"), weight=("forest_weight", "mean"), folds=("fold", "nunique")).reset_index()
        lines += ["Validation QWK lost when one branch's input is replaced by its training-set mean, mean over "
                  f"folds ([per fold]({EXPLAIN_DIR}/modality_contribution.csv)):", "",
                  "| combination | branch | QWK drop | forest weight | folds |", "| --- | --- | ---: | ---: | ---: |"]
        lines += [f"| {r.combination} | {r.branch} | {r.drop:+.4f} | "
                  f"{'' if pd.isna(r.weight) else f'{r.weight:.3f}'} | {r.folds} |" for r in g.itertuples()]
        lines.append("")
    return lines


def _saliency_lines(folder: Path) -> list[str]:
    lines = []
    for combo_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        grids = sorted(combo_dir.glob("fold_*.png"))
        if not grids:
            continue
        rel = f"{EXPLAIN_DIR}/{combo_dir.name}"
        lines += [f"### Saliency: {combo_dir.name}", "",
                  f"One grid per fold and true class ([what each row shows]({rel}/samples.csv)):", ""]
        lines += [f"- [{p.stem.replace('_', ' ')}]({rel}/{p.name})" for p in grids] + [""]
    return lines


def explanations_section(run_dir: Path) -> list[str]:
    """The section's lines, or [] when the run has not been explained."""
    folder = Path(run_dir) / EXPLAIN_DIR
    if not folder.is_dir():
        return []
    body = _importance_lines(folder) + _contribution_lines(folder) + _saliency_lines(folder)
    if not body:
        return []
    return ["", "## Explanations", "",
            "Written by `python main.py --mode explain --run_name NAME`, on each fold's validation patients with "
            "that fold's own models; how to read them: medfusion's `docs/explain.md`.", ""] + body
