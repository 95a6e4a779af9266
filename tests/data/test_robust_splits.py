"""Splits that cannot work are refused with the fold/class/count named; planted leaks abort; loading is deterministic."""

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import StratifiedKFold

from medfusion.config import DataConfig, ForestConfig
from medfusion.data.dfu import load_dfu
from medfusion.data.folds import (
    check_class_patients,
    check_fold_classes,
    check_folds,
    class_patient_counts,
    fold_indices,
    make_folds,
    subsample_patients,
)
from medfusion.data.manifest import Manifest


def _manifest(labels_per_patient):
    """labels_per_patient: list of label lists, one list per patient."""
    rows = [{"sample_id": f"s{p}_{v}", "patient": p, "visit": f"P{p:03d}{v:02d}1", "label": int(lab)}
            for p, labs in enumerate(labels_per_patient) for v, lab in enumerate(labs)]
    return Manifest(pd.DataFrame(rows), [])


def _balanced(n_patients=30):
    return _manifest([[p % 3, p % 3] for p in range(n_patients)])


def test_fewer_patients_than_folds_tells_the_max():
    with pytest.raises(ValueError, match=r"4 patients cannot fill 5 folds.*at most 4"):
        make_folds(_balanced(4), 5, seed=0)


def test_class_with_fewer_patients_than_folds_is_a_warning_naming_class_and_counts():
    m = _manifest([[0]] * 10 + [[1]] * 10 + [[2]] * 3)
    assert class_patient_counts(m) == {"I": 10, "P": 10, "R": 3}
    w = check_class_patients(m, 5)
    assert len(w) == 1 and "class R has 3 patient(s), fewer than the 5 folds" in w[0] and "2 validation" in w[0]
    assert check_class_patients(m, 3) == []


def test_data_percentage_leaving_too_little_is_an_error_with_the_needed_percentage():
    m = _balanced(30)
    with pytest.raises(ValueError) as exc:
        subsample_patients(m, 10, seed=0, n_folds=5)  # keeps 3 of 30 patients
    msg = str(exc.value)
    assert "--data_percentage 10 keeps 3 of 30 patients, fewer than the 5 folds" in msg
    assert "--data_percentage 16.7 or more" in msg
    assert subsample_patients(m, 16.7, seed=0, n_folds=5).samples.patient.nunique() == 5
    with pytest.raises(ValueError, match="keeps 1 of 30 patients, too few"):
        subsample_patients(m, 3, seed=0)


def test_fold_whose_training_part_lacks_a_class_is_an_error_naming_fold_and_class():
    m = _manifest([[0]] * 6 + [[1]] * 6 + [[2]])  # one R patient: its validation fold trains without R
    assignment = make_folds(m, 3, seed=0)
    k = assignment["s12_0"]
    with pytest.raises(ValueError) as exc:
        check_fold_classes(m, assignment, 3)
    msg = str(exc.value)
    assert f"fold {k}: the training part has no samples of class R" in msg
    assert "R 0" in msg and f"class R has 1 patient(s) in total, all in validation fold {k}" in msg
    assert "lower --cv_folds" in msg


def test_validation_part_without_a_class_is_a_warning():
    m = _manifest([[0]] * 6 + [[1]] * 6 + [[2]] * 2)
    assignment = make_folds(m, 3, seed=0)
    warnings = check_fold_classes(m, assignment, 3)
    assert len(warnings) == 1 and "validation part has no samples of class R" in warnings[0]
    assert check_fold_classes(_balanced(30), make_folds(_balanced(30), 3, seed=0), 3) == []


def test_planted_patient_in_both_parts_aborts_every_split_check():
    m = _manifest([[0, 1, 0]] * 4 + [[1, 1]] * 4 + [[2, 2]] * 4)
    assignment = make_folds(m, 3, seed=0)
    leak = dict(assignment)
    leak["s0_1"] = (assignment["s0_1"] + 1) % 3  # one visit of patient 0 moves to another fold
    with pytest.raises(RuntimeError, match="patient leakage: patient 0 appears in 2 folds"):
        check_folds(m, leak)
    for k in {assignment["s0_1"], leak["s0_1"]}:
        with pytest.raises(RuntimeError, match=f"patient leakage in fold {k}: patient 0"):
            fold_indices(m, leak, k)


def test_fold_assignment_range_and_empty_folds():
    m = _balanced(9)
    a = make_folds(m, 3, seed=0)
    with pytest.raises(RuntimeError, match="outside 0..1"):
        check_folds(m, a, 2)
    with pytest.raises(RuntimeError, match="fold 3 of 4 has no samples"):
        check_folds(m, a, 4)
    del a["s0_0"]
    with pytest.raises(RuntimeError, match="'s0_0' has no fold"):
        check_folds(m, a)


def test_forest_inner_split_with_a_planted_shared_patient_aborts(monkeypatch):
    import medfusion.models.random_forest as rf

    class PlantOne(StratifiedKFold):
        """A grouped-looking split that puts one sample of the first training patient into the other part."""

        def split(self, X, y, groups=None):
            from sklearn.model_selection import StratifiedGroupKFold

            for fit, pred in StratifiedGroupKFold(self.n_splits).split(X, y, groups):
                yield fit[1:], np.concatenate([pred, fit[:1]])

    monkeypatch.setattr(rf, "StratifiedGroupKFold", PlantOne)
    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"Age": rng.normal(60, 10, n), "Score": rng.normal(size=n)})
    y = np.arange(n) % 3
    patients = np.repeat(np.arange(20), 3)
    forest = rf.MetadataForest(ForestConfig(n_estimators=5, inner_folds=3), seed=0)
    with pytest.raises(RuntimeError, match="both sides"):
        forest.fit_predict(df, y, patients, df.iloc[:5])


# ----------------------------------------------------------------------------- determinism


def test_manifest_and_folds_do_not_depend_on_box_row_order(tiny_layout):
    a = load_dfu(tiny_layout, DataConfig())
    for name in ("bounding_boxes_depth.csv", "bounding_boxes_thermal.csv"):
        p = tiny_layout / name
        lines = p.read_text().splitlines()
        p.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n")
    b = load_dfu(tiny_layout, DataConfig())
    pd.testing.assert_frame_equal(a.samples, b.samples)
    assert a.report["match_rules"] == b.report["match_rules"]


def test_folds_are_identical_across_calls_and_subsampling_is_seeded():
    m = _manifest([[p % 3] * (1 + p % 4) for p in range(40)])
    assert make_folds(m, 5, seed=11) == make_folds(m, 5, seed=11)
    a = subsample_patients(m, 50, seed=3)
    b = subsample_patients(m, 50, seed=3)
    assert list(a.samples.sample_id) == list(b.samples.sample_id)
