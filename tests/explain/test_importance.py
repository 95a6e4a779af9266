"""Metadata importance (grouped permutations), branch ablation and sample selection on planted data."""

from __future__ import annotations

import keras
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import cohen_kappa_score

from medfusion.explain.contribution import ablate, mean_input
from medfusion.explain.importance import (aggregate_importance, grouped_permutation, permutation_importance_grouped,
                                          qwk)
from medfusion.explain.selection import select_samples


def _planted_visits(n_patients: int, seed: int):
    """Visits of patients: `signal` is the class plus small noise, `noise` and `patient_const` carry nothing."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        const = rng.normal()
        for v in range(int(rng.integers(1, 5))):
            y = int(rng.integers(0, 3))
            rows.append({"patient": p, "y": y, "signal": y + rng.normal(0, 0.3), "noise": rng.normal(),
                         "patient_const": const})
    return pd.DataFrame(rows)


def test_qwk_matches_sklearn():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert qwk(y, p) == pytest.approx(cohen_kappa_score(y, p, weights="quadratic"), abs=1e-12)


def test_grouped_permutation_moves_whole_patients():
    groups = np.array([1, 1, 1, 2, 3, 3, 4, 4, 4, 4])
    perm = grouped_permutation(groups, np.random.default_rng(5))
    for g in np.unique(groups):
        donors = set(groups[perm[groups == g]])
        assert len(donors) == 1  # every row of a patient takes the values of one other patient
    assert sorted({tuple(groups[perm[groups == g]][:1]) for g in np.unique(groups)}) == [(1,), (2,), (3,), (4,)]


def test_planted_column_ranks_first_and_noise_is_near_zero():
    train, val = _planted_visits(80, seed=1), _planted_visits(40, seed=2)
    cols = ["noise", "signal", "patient_const"]
    forest = RandomForestClassifier(n_estimators=100, random_state=0).fit(train[cols], train["y"])
    per_fold = {k: permutation_importance_grouped(lambda X: forest.predict(X[cols]), val[cols], val["y"],
                                                  val["patient"], n_repeats=5, seed=k) for k in range(2)}
    table = aggregate_importance(per_fold)
    assert table["feature"].iloc[0] == "signal"
    drop = table.set_index("feature")["qwk_drop_mean"]
    assert drop["signal"] > 0.5  # permuting the class-bearing column destroys most of the QWK
    assert abs(drop["noise"]) < 0.05 and abs(drop["patient_const"]) < 0.05
    assert table.set_index("feature").loc["signal", "n_repeats"] == 5
    assert table.set_index("feature").loc["signal", "n_folds"] == 2
    base = qwk(val["y"], forest.predict(val[cols]))
    assert table["baseline_qwk_mean"].iloc[0] == pytest.approx(base)


def _two_input_model(uses_b: bool):
    """Output = softmax of a fixed linear map of input a (and of b when uses_b)."""
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    za = keras.layers.Dense(3, name="from_a")(a)
    z = keras.layers.Add(name="sum")([za, keras.layers.Dense(3, name="from_b")(b)]) if uses_b else za
    return keras.Model({"a": a, "b": b}, keras.layers.Softmax(name="output")(z))


@pytest.mark.parametrize("uses_b", [False, True])
def test_ablating_an_ignored_branch_costs_nothing(uses_b):
    keras.utils.set_random_seed(0)
    model = _two_input_model(uses_b)
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(200, 4)).astype(np.float32), "b": rng.normal(size=(200, 4)).astype(np.float32)}
    predict = lambda inputs: model.predict(inputs, verbose=0)  # noqa: E731
    y = predict(x).argmax(1)  # the labels the full model gets right: QWK 1
    means = {k: mean_input(rng.normal(size=(50, 4))) for k in ("a", "b")}
    rows = {r["branch"]: r for r in ablate(predict, x, means, y, None)}
    assert rows["a"]["qwk_full"] == pytest.approx(1.0)
    assert rows["a"]["qwk_drop"] > 0.3
    if uses_b:
        assert rows["b"]["qwk_drop"] > 0.05 and rows["b"]["changed_decisions"] > 0
    else:
        assert rows["b"]["qwk_drop"] == 0.0 and rows["b"]["changed_decisions"] == 0


def test_mean_input_is_the_pixelwise_training_mean():
    x = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
    assert np.array_equal(mean_input(x)[0], (x[0] + x[1]) / 2)


def test_selection_cycles_kinds_per_class_deterministically():
    proba = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8],
                      [0.5, 0.3, 0.2]])
    ids, y = ["a", "b", "c", "d", "e", "f"], [0, 0, 0, 0, 1, 0]
    t = select_samples(ids, y, proba.argmax(1), proba, 3)
    assert t[t["true"] == 0][["sample_id", "kind"]].values.tolist() == [
        ["a", "most confident correct"], ["b", "most confident wrong"], ["c", "least confident"]]
    assert t[t["true"] == 1]["sample_id"].tolist() == ["e"]  # one sample of class P, predicted R: the wrong one
    assert len(t[t["true"] == 2]) == 0
    t5 = select_samples(ids, y, proba.argmax(1), proba, 5)
    assert t5[t5["true"] == 0]["sample_id"].tolist() == ["a", "b", "c", "d", "f"]  # then d (0.6), f (0.5)
    assert select_samples(ids[::-1], y[::-1], proba[::-1].argmax(1), proba[::-1], 3)["sample_id"].tolist() == \
        t["sample_id"].tolist()  # the order of the rows does not matter
