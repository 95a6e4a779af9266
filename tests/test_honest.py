"""The reported fold chooses nothing: relabelling its patients changes its scores and nothing else.

With the folds fixed (--folds) and --deterministic, every choice of fold 0 (epochs, Stage 2
kept, fusion weight, decision thresholds) is made on fold 0's inner selection patients, so
moving the labels of fold 0's validation patients leaves fold 0's models and predicted
probabilities bit-identical. With selection: outer the reported fold picks the best epochs
and fits the decision rule, so the same relabelling changes what fold 0 predicts or decides:
that is the optimism the inner split removes.
"""

import json

import numpy as np
import pandas as pd
import pytest

from medfusion.data.synthetic import generate_demo
from tests.harness import DETERMINISTIC_ENV, bundle_weights, relabel_patients, run_search

COMBOS = ("metadata", "depth_rgb", "metadata+depth_rgb")


@pytest.fixture(scope="module")
def honest_data(tmp_path_factory):
    return generate_demo(tmp_path_factory.mktemp("honest") / "data", seed=11, n_patients=24)


def _fold0(run):
    """What fold 0 computed: probabilities (as written), weights, forest, and each job's choices."""
    out = {}
    for c in COMBOS:
        pred = pd.read_csv(run / "predictions" / c / "fold_0.csv", dtype=str)
        out[f"pred:{c}"] = pred.drop(columns="y_true").to_csv(index=False)
        job = json.loads((run / "jobs" / c / "fold_0.json").read_text())
        out[f"choices:{c}"] = json.dumps([job.get("decision"), job.get("fusion_rf_weight"), job.get("stage2_kept"),
                                          {s: r["best_epoch"] for s, r in job.get("stages", {}).items()}],
                                         sort_keys=True)
        if c != "metadata":
            out[f"weights:{c}"] = [a.tobytes() for a in bundle_weights(run, c, 0)]
    out["forest"] = [a.tobytes() for a in _arrays(run / "forest" / "fold_0.npz")]
    return out


def _arrays(path):
    with np.load(path) as z:
        return [z[k] for k in sorted(z.files)]


def _relabelled_pair(tmp_path, data, selection):
    extra = ["--combinations", "metadata+depth_rgb", "--deterministic", "--selection", selection,
             "--set", "train.decision=ordinal_thresholds", "--set", "train.pretrain.epochs=4",
             "--set", "train.stage1.epochs=4"]
    a, _ = run_search(tmp_path / "a", data, *extra, env=DETERMINISTIC_ENV)
    folds = json.loads((a / "folds.json").read_text())
    val0 = pd.read_csv(a / "predictions" / "metadata" / "fold_0.csv")
    relabelled = relabel_patients(data, tmp_path / "relabelled", set(val0["patient"]))
    b, _ = run_search(tmp_path / "b", relabelled, *extra, "--folds", str(a / "folds.json"), env=DETERMINISTIC_ENV)
    assert json.loads((b / "folds.json").read_text()) == folds
    yb = pd.read_csv(b / "predictions" / "metadata" / "fold_0.csv")
    assert (yb["y_true"] != val0["y_true"]).all()  # every fold-0 validation label moved
    return _fold0(a), _fold0(b)


@pytest.mark.slow
def test_inner_selection_fold0_unchanged_by_relabelling_its_validation_patients(tmp_path, honest_data):
    a, b = _relabelled_pair(tmp_path, honest_data, "inner")
    assert a.keys() == b.keys()
    changed = [k for k in a if a[k] != b[k]]
    assert changed == [], changed


@pytest.mark.slow
def test_outer_selection_fold0_changes_when_its_validation_patients_are_relabelled(tmp_path, honest_data):
    """The reference protocol fails the same test: the reported fold fits the decision thresholds (and picks epochs)."""
    a, b = _relabelled_pair(tmp_path, honest_data, "outer")
    changed = [k for k in a if a[k] != b[k]]
    assert any(k.startswith("choices:") for k in changed), changed
    assert "forest" not in changed  # the forest makes no choice on the validation fold in either protocol
