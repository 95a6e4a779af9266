"""Opening a run folder for a search: the resume modes, the saved config check, and the fold assignment.

A resumed run continues only with the settings that shaped what it has computed (config.yaml's
result-affecting keys) and only on the data its folds.json was made from.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medfusion.config import ConfigError, config_yaml, result_differences
from medfusion.data.folds import check_folds, make_folds, read_fold_file
from medfusion.runs import (atomic_write_json, atomic_write_text, check_run_folder, folds_problem, prepare_run_dir,
                            read_run_json, read_run_yaml, remove_stale_temporaries)

log = logging.getLogger("medfusion")


def open_run(cfg, run_dir: Path, run_lock) -> bool:
    """Create or reopen the run folder per the resume mode; True when continuing an existing run."""
    mode = cfg.runtime.resume_mode
    run_lock.acquire_or_refuse()  # before anything in the folder is read, moved aside or written
    existing = (run_dir / "config.yaml").is_file()
    if mode in ("from_models", "from_predictions"):
        if not existing or not (run_dir / "state.json").is_file():
            raise FileNotFoundError(f"--resume_mode {mode} needs a finished or partial run in {run_dir} "
                                    "(config.yaml and state.json); run a search with that --run_name first")
    if mode == "fresh" or not existing:
        prepare_run_dir(cfg.runtime.logs_dir, cfg.runtime.run_name, log)
        atomic_write_text(run_dir / "config.yaml", config_yaml(cfg))
        return False
    check_run_folder(run_dir)  # a damaged file stops here, before anything in the folder changes
    stale = remove_stale_temporaries(run_dir)
    if stale:
        log.info("removed %d half-written temporary file(s) left by an interrupted attempt", stale)
    diffs = result_differences(read_run_yaml(run_dir / "config.yaml"), cfg)
    if diffs:
        lines = "\n".join(f"  {k}: run has {a!r}, now {b!r}" for k, a, b in diffs)
        raise ConfigError(
            f"cannot resume run {cfg.runtime.run_name!r}: these result-affecting settings differ from "
            f"{run_dir / 'config.yaml'}:\n{lines}\nUse the run's settings to continue it, "
            f"--resume_mode fresh to restart it (the old folder is kept aside), or a new --run_name.")
    return True


def fold_assignment(cfg, run_dir: Path, manifest, resuming: bool) -> dict:
    """folds.json of a resumed run (checked against the data), --folds, or new patient-level folds."""
    path = run_dir / "folds.json"
    if resuming and path.is_file():
        assignment = read_run_json(path, folds_problem)
        ids = set(manifest.samples["sample_id"])
        if ids != set(assignment):
            extra, missing = sorted(ids - set(assignment)), sorted(set(assignment) - ids)
            raise RuntimeError(f"{path} does not match the dataset ({len(extra)} new samples, e.g. {extra[:3]}; "
                               f"{len(missing)} gone, e.g. {missing[:3]}): the data changed since the run "
                               "started; use --resume_mode fresh or a new --run_name")
        check_folds(manifest, assignment)
        log.info("folds: reusing %s", path)
        return assignment
    if cfg.search.folds_file:
        assignment = read_fold_file(cfg.search.folds_file, manifest, cfg.search.cv_folds)
        log.info("folds: read from %s (validated: every sample covered, no patient in two folds)",
                 cfg.search.folds_file)
    else:
        assignment = make_folds(manifest, cfg.search.cv_folds, cfg.search.seed)
    atomic_write_json(path, assignment)
    return assignment
