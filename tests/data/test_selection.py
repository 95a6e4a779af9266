"""The inner selection split and user-given folds (--folds)."""

import json

import numpy as np
import pytest

from medfusion.data.folds import fold_indices, make_folds, read_fold_file, selection_split
from tests.data.test_folds import _manifest


def test_selection_split_is_patient_level_and_disjoint_from_validation():
    m = _manifest(n_patients=60)
    assignment = make_folds(m, 3, seed=1)
    for k in range(3):
        tr, va = fold_indices(m, assignment, k)
        fit, sel = selection_split(m, tr, 0.2, seed=k)
        assert sorted(np.concatenate([fit, sel]).tolist()) == sorted(tr.tolist())  # a partition of training
        pf, ps, pv = set(m.patients[fit]), set(m.patients[sel]), set(m.patients[va])
        assert not pf & ps and not ps & pv and not pf & pv
        share = len(ps) / len(set(m.patients[tr]))
        assert 0.12 <= share <= 0.3, share  # about selection_fraction of the training patients
        overall = np.bincount(m.labels[tr], minlength=3) / len(tr)
        dist = np.bincount(m.labels[sel], minlength=3) / len(sel)
        assert np.abs(dist - overall).max() < 0.2, (dist, overall)  # stratified
        assert selection_split(m, tr, 0.2, seed=k)[1].tolist() == sel.tolist()  # seeded


def _write(tmp_path, obj):
    p = tmp_path / "folds.json"
    p.write_text(json.dumps(obj))
    return p


def test_fold_file_by_sample_and_by_patient(tmp_path):
    m = _manifest(n_patients=12)
    assignment = make_folds(m, 3, seed=0)
    assert read_fold_file(_write(tmp_path, assignment), m, 3) == assignment
    by_patient = {f"P{p:03d}": assignment[sid] for sid, p in zip(m.samples["sample_id"], m.patients)}
    assert read_fold_file(_write(tmp_path, by_patient), m, 3) == assignment


def test_fold_file_refuses_a_split_patient(tmp_path):
    m = _manifest(n_patients=12)
    a = make_folds(m, 3, seed=0)
    first = m.samples["sample_id"].iloc[0]
    a[first] = (a[first] + 1) % 3
    with pytest.raises(ValueError, match=r"folds\.json.*patient leakage: patient 0"):
        read_fold_file(_write(tmp_path, a), m, 3)


def test_fold_file_refuses_a_missing_sample(tmp_path):
    m = _manifest(n_patients=12)
    a = make_folds(m, 3, seed=0)
    gone = m.samples["sample_id"].iloc[5]
    del a[gone]
    with pytest.raises(ValueError, match=f"no fold to 1 sample.*{gone}"):
        read_fold_file(_write(tmp_path, a), m, 3)


def test_fold_file_refuses_another_fold_count(tmp_path):
    m = _manifest(n_patients=12)
    a = make_folds(m, 4, seed=0)
    with pytest.raises(ValueError, match=r"uses folds \[0, 1, 2, 3\], but --cv_folds is 3"):
        read_fold_file(_write(tmp_path, a), m, 3)


def test_fold_file_not_json(tmp_path):
    p = tmp_path / "folds.json"
    p.write_text("sample,fold\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_fold_file(p, _manifest(n_patients=4), 2)
