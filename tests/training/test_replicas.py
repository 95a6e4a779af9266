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


@pytest.mark.slow
@pytest.mark.parametrize("replicas, sizes", [(2, [16, 17, 11, 3]), (3, [24, 25, 26, 7, 2])])
def test_training_evaluation_prediction_on_replicas(replicas, sizes):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(replicas), *map(str, sizes)], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["n"] for r in rows] == sizes
    for r in rows:
        assert r["rows"] == r["n"]  # padded rows are dropped from the predictions
        assert abs(r["streamed_qwk"] - r["sklearn_qwk"]) < 1e-5, r  # each sample counted once, weight-0 pads never
        assert r["max_diff_single"] < 1e-5, r  # same weights, same probabilities as one device
        assert r["batch"] % replicas == 0 and r["steps"] * r["batch"] >= r["n"], r
