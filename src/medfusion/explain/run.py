"""--mode explain: saliency grids, metadata importance and modality contribution of a finished search.

    logs/<run>/explain/<combination>/fold_<k>_true_<C>.png   saliency grids, one per fold and true class
    logs/<run>/explain/<combination>/samples.csv             what each grid row shows (ids, classes, flags)
    logs/<run>/explain/metadata_importance.csv / .png        permutation importance of the forest's features
    logs/<run>/explain/modality_contribution.csv / .png      branch ablation and forest weight per fold
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES, image_modalities_of
from medfusion.evaluation.decisions import decide
from medfusion.evaluation.visits import PROBA_COLUMNS

log = logging.getLogger("medfusion")
EXPLAIN_DIR = "explain"
IMPORTANCE_REPEATS = 5
PREDICTION_TOLERANCE = 1e-4  # recomputed vs saved validation probabilities


def _predict(model, cfg):
    from medfusion.training.stages import predict

    return lambda x: predict(model, x, max(cfg.train.batch_size, 32))


def _job_record(run, combo, k) -> dict:
    from medfusion.runs import read_run_json

    path = run.run_dir / "jobs" / combo / f"fold_{k}.json"
    return read_run_json(path) if path.is_file() else {}


def fold_predictions(run, combo: str, k: int, bundle):
    """(validation indices, inputs, probabilities as the job saved them, decisions) of one fold's bundle."""
    from medfusion.evaluation.calibration import apply_temperature

    _, va = run.fold(k)
    x = run.inputs(k, combo, va, "val")
    proba = _predict(bundle.model, run.cfg)(x)
    cal = _job_record(run, combo, k).get("calibration") or {}
    if cal.get("method") == "temperature":  # the saved predictions are rescaled by the job's temperature
        proba = apply_temperature(proba, cal["temperature"])
    _check_against_saved(run, combo, k, va, proba)
    return va, x, proba, decide(proba, bundle.info.get("decision"))


def _check_against_saved(run, combo, k, va, proba) -> None:
    path = run.run_dir / "predictions" / combo / f"fold_{k}.csv"
    if not path.is_file():
        return
    saved = pd.read_csv(path).set_index("sample_id")
    ids = run.manifest.samples["sample_id"].to_numpy()[va]
    if set(ids) != set(saved.index):
        raise ValueError(f"{path} does not hold fold {k}'s validation samples as folds.json gives them")
    diff = float(np.abs(saved.loc[ids, PROBA_COLUMNS].to_numpy() - proba).max())
    if diff > PREDICTION_TOLERANCE:
        log.warning("fold %d %s: the bundle's probabilities differ from %s by up to %.2e", k, combo, path, diff)


def saliency_for_combination(run, combo: str, n: int, method: str, target_layer: str | None) -> pd.DataFrame:
    """Grids for every fold and true class; returns the rows of samples.csv."""
    from medfusion.bundles import bundle_dir, load_bundle
    from medfusion.explain.plots import grid_file_name, plot_saliency_grid, sample_title
    from medfusion.explain.saliency import saliency
    from medfusion.explain.selection import select_samples

    out_dir = run.run_dir / EXPLAIN_DIR / combo
    out_dir.mkdir(parents=True, exist_ok=True)
    mods, rows = image_modalities_of(combo), []
    for k in range(run.cfg.search.cv_folds):
        bundle = load_bundle(bundle_dir(run.run_dir, combo, k), run.cfg)
        va, x, proba, pred = fold_predictions(run, combo, k, bundle)
        ids = run.manifest.samples["sample_id"].to_numpy()[va]
        chosen = select_samples(ids, run.manifest.labels[va], pred, proba, n)
        for c, group in chosen.groupby("true", sort=True):
            pos = group["position"].to_numpy()
            xs = {name: v[pos] for name, v in x.items()}
            sal = {m: saliency(bundle.model, xs, m, group["predicted"].to_numpy(), method, target_layer)
                   for m in mods}
            titles = [sample_title(r, proba[r["position"]]) for _, r in group.iterrows()]
            name = grid_file_name(k, int(c))
            plot_saliency_grid(out_dir / name, {m: xs[m] for m in mods}, {m: s.maps for m, s in sal.items()},
                               {m: s.flags for m, s in sal.items()}, titles,
                               f"{combo}, fold {k}, true class {CLASSES[int(c)]}\n{method} for the fusion model's "
                               f"predicted class (target layer {', '.join(sorted({s.target_layer for s in sal.values()}))})")
            for i, (_, r) in enumerate(group.iterrows()):
                rows.append({"combination": combo, "fold": k, "sample_id": r["sample_id"],
                             "true": CLASSES[int(r["true"])], "predicted": CLASSES[int(r["predicted"])],
                             **{c_: float(proba[r["position"], j]) for j, c_ in enumerate(PROBA_COLUMNS)},
                             "kind": r["kind"], "method": method, "file": name, "title": titles[i],
                             **{f"flag_{m}": sal[m].flags[i] for m in mods},
                             **{f"target_{m}": sal[m].target_layer for m in mods}})
        log.info("explain %s fold %d: %d samples explained", combo, k, len(chosen))
    return pd.DataFrame(rows)


def metadata_importance(run) -> pd.DataFrame | None:
    """Grouped permutation importance of each fold's forest on its validation visits, aggregated over folds."""
    import joblib

    from medfusion.explain.importance import aggregate_importance, permutation_importance_grouped
    from medfusion.models.random_forest import MetadataForest

    s, features = run.manifest.samples, list(run.manifest.feature_columns)
    per_fold = {}
    for k in range(run.cfg.search.cv_folds):
        path = run.run_dir / "forest" / f"fold_{k}.joblib"
        if not path.is_file():
            return None
        forest = joblib.load(path)
        _, va = run.fold(k)
        first = pd.Series(va).groupby(s["visit"].to_numpy()[va], sort=True).first().to_numpy()
        X = s.iloc[first][features].reset_index(drop=True)
        per_fold[k] = permutation_importance_grouped(
            lambda df: MetadataForest._proba3(forest, df).argmax(1), X, run.manifest.labels[first],
            run.manifest.patients[first], IMPORTANCE_REPEATS, run.cfg.search.seed + k)
    return aggregate_importance(per_fold)


def modality_contribution(run, combos) -> pd.DataFrame:
    from medfusion.bundles import bundle_dir, load_bundle
    from medfusion.explain.contribution import CONTRIBUTION_COLUMNS, ablate, forest_weight, mean_input

    rows = []
    for combo in combos:
        for k in range(run.cfg.search.cv_folds):
            bundle = load_bundle(bundle_dir(run.run_dir, combo, k), run.cfg)
            tr, va = run.fold(k)
            x_tr = run.inputs(k, combo, tr, "train")
            x_va = run.inputs(k, combo, va, "val")
            proba_fn = _predict(bundle.model, run.cfg)
            for r in ablate(proba_fn, x_va, {b: mean_input(v) for b, v in x_tr.items()}, run.manifest.labels[va],
                            bundle.info.get("decision")):
                rows.append({"combination": combo, "fold": k, "forest_weight": forest_weight(bundle.info), **r})
    return pd.DataFrame(rows, columns=CONTRIBUTION_COLUMNS)


def _trained_combinations(run) -> list[str]:
    from medfusion.evaluation.late_fusion import is_late_fusion
    from medfusion.runs import read_run_csv

    summary = read_run_csv(run.run_dir / "summary.csv")
    return [c for c in summary["combination"].astype(str) if not is_late_fusion(c)]


def _saliency_combination(run, requested: str | None) -> str | None:
    """The requested combination, else the run's best (by visit QWK) that has an image branch."""
    from medfusion.predict import choose_combination

    if requested:
        combo = choose_combination(run.run_dir, requested)
        if not image_modalities_of(combo):
            raise ValueError(f"combination {combo!r} has no image branch to draw saliency for; choose one of "
                             f"{', '.join(c for c in _trained_combinations(run) if image_modalities_of(c))}")
        return combo
    summary = pd.read_csv(run.run_dir / "summary.csv")
    summary = summary[summary["combination"].isin([c for c in _trained_combinations(run) if image_modalities_of(c)])]
    if not len(summary):
        return None
    key = "visit_qwk_mean" if "visit_qwk_mean" in summary.columns else "qwk_mean"
    return str(summary.sort_values(key, ascending=False, kind="stable")["combination"].iloc[0])


def run_explain(run_dir: Path, combination: str | None = None, samples: int = 3, method: str = "gradcam",
                target_layer: str | None = None) -> int:
    from medfusion.explain.data import open_run
    from medfusion.explain.plots import plot_contribution, plot_importance
    from medfusion.runs import atomic_write_csv

    t0 = time.time()
    run = open_run(Path(run_dir))
    out = run.run_dir / EXPLAIN_DIR
    out.mkdir(parents=True, exist_ok=True)
    combo = _saliency_combination(run, combination)
    if combo is None:
        log.warning("explain: the run has no combination with an image branch; no saliency maps")
    else:
        table = saliency_for_combination(run, combo, samples, method, target_layer)
        atomic_write_csv(out / combo / "samples.csv", table)
        log.warning("explain: %d saliency grids of %s in %s", table["file"].nunique(), combo, out / combo)
    if "metadata" in {m for c in _trained_combinations(run) for m in c.split("+")}:
        imp = metadata_importance(run)
        if imp is not None:
            atomic_write_csv(out / "metadata_importance.csv", imp)
            plot_importance(out / "metadata_importance.png", imp)
            log.warning("explain: metadata importance of %d features, top %s (QWK drop %.3f)", len(imp),
                        imp["feature"].iloc[0], imp["qwk_drop_mean"].iloc[0])
    multi = [c for c in _trained_combinations(run) if len(c.split("+")) > 1]
    if multi:
        contrib = modality_contribution(run, multi)
        atomic_write_csv(out / "modality_contribution.csv", contrib)
        plot_contribution(out / "modality_contribution.png", contrib)
    log.warning("explain: written to %s in %.1fs", out, time.time() - t0)
    from medfusion.review import run_review

    run_review(run.run_dir, log=log)  # report.md gains its "Explanations" section
    return 0
