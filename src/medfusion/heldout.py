"""Held-out test patients: set aside before folding, predicted once by the chosen model."""

from __future__ import annotations

import logging

import pandas as pd

from medfusion.data.folds import class_distribution, hold_out_patients, read_patient_file
from medfusion.data.manifest import Manifest
from medfusion.runs import atomic_write_csv, atomic_write_json, read_run_csv, read_run_json

log = logging.getLogger("medfusion")


def hold_out(ctx, manifest: Manifest, resuming: bool):
    """(cross-validation manifest, held-out test manifest or None); the test patients never enter a fold."""
    s, path = ctx.cfg.search, ctx.run_dir / "test_patients.json"
    if resuming and path.is_file():
        patients = read_run_json(path)["patients"]
    elif s.test_fraction > 0:
        patients = hold_out_patients(manifest, s.test_fraction, s.seed)
    elif s.test_patients_file:
        patients = read_patient_file(s.test_patients_file, manifest)
    else:
        return manifest, None
    is_test = manifest.samples["patient"].isin(set(patients)).to_numpy()
    atomic_write_json(path, {"patients": patients, "n_samples": int(is_test.sum())})
    log.info("held-out test: %d patients, %d samples set aside before folding (%s); predicted once, after the "
             "search, by the best combination's fold ensemble", len(patients), int(is_test.sum()),
             class_distribution(manifest.labels[is_test]))
    return manifest.subset(~is_test), manifest.subset(is_test)


def evaluate_test(ctx, summary: pd.DataFrame) -> None:
    """The chosen model (best visit QWK in cross-validation) on the held-out patients, once."""
    from medfusion.predict import choose_combination, fold_ensemble, prediction_tables, scores

    path = ctx.run_dir / "test_results.csv"
    if path.is_file():
        log.warning("held-out test (already evaluated, not repeated):\n%s", read_run_csv(path).to_string(index=False))
        return
    combo = choose_combination(ctx.run_dir)
    proba, rule, _ = fold_ensemble(ctx.run_dir, ctx.cfg, combo, ctx.test_manifest, ctx.strategy)
    samples, _ = prediction_tables(ctx.test_manifest, proba, rule)
    atomic_write_csv(ctx.run_dir / "test_predictions.csv",
                     samples.assign(y_true=ctx.test_manifest.labels))
    sc = scores(ctx.test_manifest, proba, rule, ctx.cfg.search.bootstrap_resamples, ctx.cfg.search.seed)
    row = {"combination": combo, "chosen_by": "visit_qwk_mean in cross-validation", "n_patients": sc["n_patients"],
           "n_samples": sc["n_samples"], **{k: sc["view"][k] for k in ("qwk", "kappa", "accuracy", "f1_macro")},
           **{k: v for k, v in sc["visit"].items() if k != "resamples"}}
    atomic_write_csv(path, pd.DataFrame([row]))
    log.warning("held-out test patients (%d patients, %d visits; never in any fold, training or selection split): "
                "%s visit QWK %.4f [95%% CI %.3f, %.3f], view QWK %.4f. This is the only unbiased estimate of "
                "the chosen model: the cross-validation table above chose it.", sc["n_patients"],
                row["n_val_visits"], combo, row["visit_qwk"], row["visit_qwk_ci_low"], row["visit_qwk_ci_high"],
                row["qwk"])
