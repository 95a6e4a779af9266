"""MirroredStrategy on logical CPUs: any dataset size and replica count, every sample counted once.

Sizes are chosen so the last batch leaves remainders 0, 1 and 2 against the replica count
and the global batch (per-replica 4), including datasets smaller than the global batch.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("replica_script.py")
ROOT = Path(__file__).resolve().parents[2]
PREDICTION_ATOL = 1e-4  # probabilities after two stages trained on replicas vs on one device


@pytest.mark.slow
@pytest.mark.parametrize("replicas, sizes", [(2, [16, 17, 11, 3]), (3, [24, 25, 26, 7, 2])])
def test_training_evaluation_prediction_on_replicas(replicas, sizes):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(replicas), *map(str, sizes)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["n"] for r in rows] == sizes
    assert [r["comparable"] for r in rows] == [n >= replicas for n in sizes]
    for r in rows:
        assert r["rows"] == r["n"]  # padded rows are dropped from the predictions
        assert abs(r["streamed_qwk"] - r["sklearn_qwk"]) < 1e-5, r  # each sample counted once, weight-0 pads never
        assert r["max_diff_single"] < 1e-5, r  # same weights, same probabilities as one device
        # trained on replicas vs trained on one device from the same weights: the gradient of the global batch is
        # the sum of the replicas' (float32 order of summation differs), with and without the feature cache
        if r["comparable"]:
            assert r["max_diff_single_run_a"] < PREDICTION_ATOL and r["max_diff_single_run"] < PREDICTION_ATOL, r
        assert r["cache_used"], r
        # the weight-0 pad rows are not in val_loss (Keras' own loss tracker counts them)
        assert abs(r["val_loss"] - r["numpy_val_loss"]) < 1e-5 * max(1.0, r["numpy_val_loss"]), r
        assert r["batch"] % replicas == 0 and r["steps"] * r["batch"] >= r["n"], r
