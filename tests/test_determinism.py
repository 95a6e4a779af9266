"""--deterministic: the same tiny search twice gives byte-identical folds, forest probabilities and results."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medfusion.data.synthetic import generate_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path):
    data = generate_demo(tmp_path / "tiny", seed=5, n_patients=24)
    runs = []
    for name in ("a", "b"):
        cmd = [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "configs/demo.yaml"),
               "--data_dir", str(data), "--set", "data.demo=false", "--cv_folds", "2", "--run_name", "det",
               "--set", f"runtime.logs_dir={tmp_path / name}", "--combinations", "metadata+thermal_map",
               "--deterministic", "--set", "data.image_size=16", "--set", "train.pretrain.epochs=2",
               "--set", "train.stage1.epochs=2", "--set", "train.stage2.epochs=1", "--set", "forest.n_estimators=20"]
        env = dict(__import__("os").environ, TF_ENABLE_ONEDNN_OPTS="0")  # bit-exact: oneDNN off, explicitly
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(tmp_path / name / "det")
    a, b = runs
    for rel in ("folds.json", "results.csv", "summary.csv", "predictions/metadata+thermal_map/fold_1.csv"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    for k in (0, 1):
        fa, fb = np.load(a / "forest" / f"fold_{k}.npz"), np.load(b / "forest" / f"fold_{k}.npz")
        for key in fa.files:
            np.testing.assert_array_equal(fa[key], fb[key])
