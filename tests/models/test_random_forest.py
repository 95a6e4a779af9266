import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from medfusion.config import ForestConfig
from medfusion.models.random_forest import LEAKY_COLUMNS, MetadataForest

CFG = ForestConfig(n_estimators=60, min_samples_leaf=1, inner_folds=5)


def _clinical(seed=0, patients=30, visits=3):
    rng = np.random.default_rng(seed)
    pat = np.repeat(np.arange(patients), visits)
    y = rng.integers(0, 3, len(pat))
    df = pd.DataFrame({
        "Age": rng.normal(60, 10, len(pat)),
        "Wound Area": y * 2.0 + rng.normal(0, 1, len(pat)),  # informative
        "Location": rng.choice(["Hallux", "hallux ", "Heel", None], len(pat)),
        "Smoker": rng.choice(["yes", "no"], len(pat)),
    })
    df.loc[::7, "Age"] = np.nan
    return df, y, pat


def test_shapes_and_rows_sum_to_one():
    df, y, pat = _clinical()
    oof, val = MetadataForest(CFG, seed=0).fit_predict(df.iloc[:60], y[:60], pat[:60], df.iloc[60:])
    assert oof.shape == (60, 3) and val.shape == (30, 3)
    np.testing.assert_allclose(oof.sum(1), 1.0)
    np.testing.assert_allclose(val.sum(1), 1.0)


def _reference_pipeline(cfg, seed):
    """The documented preprocessing + forest, written out here with sklearn alone, on pre-normalised text
    (strip + lower-case; missing stays missing): median imputation with a missing-indicator for numbers, constant
    'missing' + one-hot for text, then RandomForestClassifier with the config's settings."""
    pre = ColumnTransformer([
        ("num", SimpleImputer(strategy="median", add_indicator=True), ["Age", "Wound Area"]),
        ("cat", Pipeline([("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                          ("onehot", OneHotEncoder(handle_unknown="ignore"))]), ["Location", "Smoker"]),
    ], remainder="drop", sparse_threshold=0.0)
    rf = RandomForestClassifier(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth,
                                min_samples_leaf=cfg.min_samples_leaf, class_weight=cfg.class_weight,
                                random_state=seed, n_jobs=1)
    return Pipeline([("pre", pre), ("rf", rf)])


def _normalised(df):
    out = df.copy()
    for c in ("Location", "Smoker"):
        out[c] = out[c].str.strip().str.lower().astype(object)
        out[c] = out[c].where(out[c].notna(), np.nan)
    return out


def test_probabilities_match_an_independent_sklearn_pipeline_and_cross_val_predict():
    df, y, pat = _clinical(seed=4)
    train, val = df.iloc[:60], df.iloc[60:]
    seed = 7
    oof, val_proba = MetadataForest(CFG, seed=seed).fit_predict(train, y[:60], pat[:60], val)

    ref = _reference_pipeline(CFG, seed).fit(_normalised(train), y[:60])
    assert list(ref.classes_) == [0, 1, 2]
    np.testing.assert_allclose(val_proba, ref.predict_proba(_normalised(val)), rtol=0, atol=1e-12)

    cv = StratifiedGroupKFold(n_splits=CFG.inner_folds, shuffle=True, random_state=seed)
    ref_oof = cross_val_predict(_reference_pipeline(CFG, seed), _normalised(train), y[:60], groups=pat[:60], cv=cv,
                                method="predict_proba")
    np.testing.assert_allclose(oof, ref_oof, rtol=0, atol=1e-12)
    # not trivially equal: out-of-fold and in-sample probabilities of the training rows differ
    assert np.abs(oof - ref.predict_proba(_normalised(train))).max() > 0.1


def test_three_columns_even_when_a_class_is_absent():
    df, y, pat = _clinical()
    y = np.where(y == 2, 1, y)  # no class R in training
    oof, val = MetadataForest(CFG, seed=0).fit_predict(df, y, pat, df.iloc[:5])
    assert oof.shape[1] == 3 and val.shape[1] == 3
    assert np.all(oof[:, 2] == 0) and np.all(val[:, 2] == 0)


def test_grouped_oof_does_not_leak_through_patient_identity():
    """Labels are random per patient; only a per-patient 'fingerprint' identifies them.

    An ungrouped inner split sees a patient's other visits and scores far above chance;
    the patient-grouped OOF must stay near chance (1/3).
    """
    rng = np.random.default_rng(0)
    patients, visits = 45, 4
    pat = np.repeat(np.arange(patients), visits)
    y = rng.permutation(np.arange(patients) % 3)[pat]
    fp = rng.normal(size=(patients, 4))
    df = pd.DataFrame({f"fingerprint{i}": fp[pat, i] for i in range(4)})
    df["noise"] = rng.normal(size=len(pat))
    forest = MetadataForest(CFG, seed=0)
    oof, _ = forest.fit_predict(df, y, pat, df.iloc[:3])
    grouped_acc = (oof.argmax(1) == y).mean()
    leaky = cross_val_predict(forest.build_pipeline(df), df, y, method="predict_proba",
                              cv=StratifiedKFold(5, shuffle=True, random_state=0))
    leaky_acc = (leaky.argmax(1) == y).mean()
    assert leaky_acc > 0.85, leaky_acc
    assert grouped_acc < 0.5, grouped_acc


@pytest.mark.parametrize("column", LEAKY_COLUMNS)
def test_leaky_column_is_refused(column):
    df, y, pat = _clinical()
    df[column] = y
    with pytest.raises(ValueError, match="label-leaking column"):
        MetadataForest(CFG, seed=0).fit_predict(df, y, pat, df.iloc[:5])


def test_deterministic_for_a_seed():
    df, y, pat = _clinical()
    a = MetadataForest(CFG, seed=3).fit_predict(df.iloc[:60], y[:60], pat[:60], df.iloc[60:])
    b = MetadataForest(CFG, seed=3).fit_predict(df.iloc[:60], y[:60], pat[:60], df.iloc[60:])
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def test_categoricals_are_case_and_space_normalised():
    df, y, pat = _clinical()
    forest = MetadataForest(CFG, seed=0)
    forest.fit_predict(df, y, pat, df.iloc[:5])
    loc = [n for n in forest.feature_names_ if "Location" in n]
    assert sorted(loc) == ["cat__Location_hallux", "cat__Location_heel", "cat__Location_missing"]
    assert "num__missingindicator_Age" in forest.feature_names_
    # an upper-case spelling at validation time maps to the same category as the training one
    one = df.iloc[:1].copy()
    one.loc[:, "Location"] = "HALLUX"
    two = one.copy()
    two.loc[:, "Location"] = "hallux"
    np.testing.assert_array_equal(forest.pipeline_.predict_proba(one), forest.pipeline_.predict_proba(two))


def test_inner_split_sharing_a_patient_is_an_error(monkeypatch):
    import medfusion.models.random_forest as rf

    class Ungrouped(StratifiedKFold):
        def split(self, X, y, groups=None):
            return super().split(X, y)

    monkeypatch.setattr(rf, "StratifiedGroupKFold", Ungrouped)
    df, y, pat = _clinical()
    with pytest.raises(RuntimeError, match="both sides"):
        MetadataForest(CFG, seed=0).fit_predict(df, y, pat, df.iloc[:5])
