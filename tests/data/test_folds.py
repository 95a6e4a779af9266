import numpy as np
import pandas as pd
import pytest

from medfusion.data.folds import check_folds, fold_indices, make_folds, subsample_patients
from medfusion.data.manifest import Manifest


def _manifest(n_patients=40, per_patient=4, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        plabel = rng.choice(3, p=[0.3, 0.55, 0.15])
        for v in range(per_patient):
            label = plabel if rng.random() < 0.8 else rng.integers(3)
            rows.append({"sample_id": f"s{p}_{v}", "patient": p, "visit": f"P{p:03d}{v:02d}1", "label": int(label)})
    return Manifest(pd.DataFrame(rows), [])


def test_folds_never_share_a_patient_and_are_stratified():
    m = _manifest()
    assignment = make_folds(m, 4, seed=1)
    folds = m.samples["sample_id"].map(assignment).to_numpy()
    for p, f in pd.Series(folds).groupby(m.patients):
        assert f.nunique() == 1, f"patient {p} split across folds"
    overall = np.bincount(m.labels, minlength=3) / len(m)
    for k in range(4):
        tr, va = fold_indices(m, assignment, k)
        assert not set(m.patients[tr]) & set(m.patients[va])
        dist = np.bincount(m.labels[va], minlength=3) / len(va)
        assert np.abs(dist - overall).max() < 0.15, (k, dist, overall)


def _blocked_manifest(counts=(10, 15, 5), visits=4):
    """Patients of one class each, in class blocks (I first, then P, then R), `visits` samples each."""
    rows, p = [], 0
    for label, n in enumerate(counts):
        for _ in range(n):
            rows += [{"sample_id": f"s{p}_{v}", "patient": p, "visit": f"P{p:03d}{v:02d}1", "label": label}
                     for v in range(visits)]
            p += 1
    return Manifest(pd.DataFrame(rows), [])


def _class_patients_per_fold(m, assignment, n_folds):
    s = m.samples.assign(fold=m.samples["sample_id"].map(assignment))
    per_patient = s.groupby("patient").agg(fold=("fold", "first"), label=("label", "first"))
    return np.array([np.bincount(per_patient.label[per_patient.fold == k], minlength=3) for k in range(n_folds)])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_folds_are_stratified_exactly_where_the_classes_allow_it(seed):
    """30 one-class patients (10 I, 15 P, 5 R) in 5 folds: stratified, every fold holds 2 I, 3 P and 1 R patients.

    A split that ignores the labels would not: a contiguous patient split puts all I patients in folds 0-1, and a
    random one almost never (p < 0.01) lands on 2/3/1 in every fold.
    """
    m = _blocked_manifest()
    counts = _class_patients_per_fold(m, make_folds(m, 5, seed=seed), 5)
    np.testing.assert_array_equal(counts, np.tile([2, 3, 1], (5, 1)))
    # the same check fails for a split that does not stratify
    order = sorted(m.samples["patient"].unique())
    contiguous = {sid: order.index(p) * 5 // len(order)
                  for sid, p in zip(m.samples["sample_id"], m.samples["patient"])}
    assert not np.array_equal(_class_patients_per_fold(m, contiguous, 5), np.tile([2, 3, 1], (5, 1)))


def test_folds_are_deterministic_from_the_seed():
    m = _manifest()
    assert make_folds(m, 3, seed=5) == make_folds(m, 3, seed=5)
    assert make_folds(m, 3, seed=5) != make_folds(m, 3, seed=6)


def test_too_few_patients_for_folds():
    with pytest.raises(ValueError, match="lower --cv_folds"):
        make_folds(_manifest(n_patients=3), 5, seed=0)


def test_planted_leak_is_caught():
    m = _manifest()
    assignment = make_folds(m, 3, seed=0)
    first = m.samples["sample_id"].iloc[0]
    assignment[first] = (assignment[first] + 1) % 3  # one visit of patient 0 moves to another fold
    with pytest.raises(RuntimeError, match="patient leakage"):
        check_folds(m, assignment)
    with pytest.raises(RuntimeError, match="patient leakage"):
        fold_indices(m, assignment, assignment[first])


def test_subsample_patients_is_stratified_and_patient_level():
    m = _manifest(n_patients=60)
    sub = subsample_patients(m, 50, seed=0)
    assert sub.samples["patient"].nunique() == 30
    kept = set(sub.samples["patient"])
    # whole patients only: every sample of a kept patient is kept
    assert len(sub) == int(m.samples["patient"].isin(kept).sum())
    with pytest.raises(ValueError, match="data_percentage"):
        subsample_patients(m, 1, seed=0)
