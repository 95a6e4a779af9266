"""Shared test harness: tiny searches run as a user runs them (main.py in a subprocess).

Like keras-hub's run_task_test, every end-to-end test goes through these, so the settings
that keep them fast (16 px, two epochs, a 20-tree forest) and the checks stay alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--set", "data.image_size=16", "--set", "train.pretrain.epochs=2", "--set", "train.stage1.epochs=2",
        "--set", "train.stage2.epochs=1", "--set", "forest.n_estimators=20", "--set", "model.head_units=8",
        "--set", "train.batch_size=16", "--set", "search.bootstrap_resamples=200"]


# what a bit-exact comparison needs in the environment of its subprocesses, set explicitly instead of relying on
# main.py's os.environ.setdefault (a TF_ENABLE_ONEDNN_OPTS=1 in the caller's environment would win there)
DETERMINISTIC_ENV = {"TF_ENABLE_ONEDNN_OPTS": "0"}


def search_command(logs_dir: Path, data_dir: Path, *extra, run_name: str = "e2e", folds: int = 2) -> list:
    """The command line run_search runs (for tests that start the process themselves, e.g. to signal it)."""
    return [sys.executable, str(ROOT / "main.py"), "--mode", "search", "--config", str(ROOT / "configs/demo.yaml"),
            "--data_dir", str(data_dir), "--cv_folds", str(folds), "--run_name", run_name,
            "--set", f"runtime.logs_dir={logs_dir}", "--set", "data.demo=false", *FAST, *extra]


def run_search(logs_dir: Path, data_dir: Path, *extra, run_name: str = "e2e", folds: int = 2, check: bool = True,
               env: dict | None = None):
    """python main.py --mode search on the demo config with FAST settings; returns (run folder, process).

    `env`: variables set (over this process's environment) for the search, e.g. DETERMINISTIC_ENV.
    """
    cmd = search_command(logs_dir, data_dir, *extra, run_name=run_name, folds=folds)
    full_env = None if env is None else {**os.environ, **env}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT, env=full_env)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Path(logs_dir) / run_name, proc


def relabel_patients(src: Path, dst: Path, patients: set, label_column: str = "Healing Phase Abs") -> Path:
    """A copy of a dataset whose label of every visit of `patients` moves one class on (I->P->R->I)."""
    shutil.copytree(src, dst)
    path = dst / "metadata.csv"
    meta = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    rows = meta["Patient#"].astype(int).isin(patients)
    meta.loc[rows, label_column] = meta.loc[rows, label_column].str.strip().map({"I": "P", "P": "R", "R": "I"})
    meta.to_csv(path, index=False, encoding="utf-8-sig")
    return dst


def bundle_weights(run: Path, combination: str, fold: int) -> list:
    """The weights of a job's saved model.keras, as numpy arrays in layer order (loaded in this process)."""
    import keras

    import medfusion.models.fusion  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(Path(run) / "bundles" / combination / f"fold_{fold}" / "model.keras", compile=False)
    return [w for w in model.get_weights()]


def rescored_from_predictions(run: Path, combination: str, fold: int) -> dict:
    """Per-view and per-visit QWK recomputed with sklearn straight from a prediction file (argmax decision)."""
    from sklearn.metrics import cohen_kappa_score

    pred = pd.read_csv(Path(run) / "predictions" / combination / f"fold_{fold}.csv")
    cols = ["p_I", "p_P", "p_R"]
    visits = pred.groupby("visit").agg(y=("y_true", "first"), **{c: (c, "mean") for c in cols})
    qwk = lambda y, p: cohen_kappa_score(y, p.argmax(1), labels=[0, 1, 2], weights="quadratic")  # noqa: E731
    return {"qwk": qwk(pred["y_true"], pred[cols].to_numpy()), "visit_qwk": qwk(visits["y"], visits[cols].to_numpy())}
