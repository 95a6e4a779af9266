"""The metadata forest learns from visits: one row per training visit, every view gets its visit's row."""

import numpy as np
import pandas as pd

from medfusion.config import load_config
from medfusion.data.manifest import Manifest
from medfusion.models import random_forest
from medfusion.jobs import forest_job
from medfusion.search import Search
from tests.harness import ROOT


def _manifest():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(16):
        for a in range(2):
            label, age = int(rng.integers(0, 3)), float(rng.normal(60, 5))
            for v in range(1 + (p + a) % 4):  # 1-4 views per visit
                rows.append({"sample_id": f"P{p:03d}{a:02d}1_{v}", "patient": p, "visit": f"P{p:03d}{a:02d}1",
                             "label": label, "Age": age + 10 * label})
    return Manifest(pd.DataFrame(rows), ["Age"])


def test_forest_is_fit_on_one_row_per_training_visit(tmp_path, monkeypatch):
    seen = {}
    original = random_forest.MetadataForest.fit_predict

    def spy(self, train_df, train_labels, train_patients, val_df):
        seen.update(train=train_df.copy(), labels=np.asarray(train_labels), patients=np.asarray(train_patients),
                    val=val_df.copy())
        return original(self, train_df, train_labels, train_patients, val_df)

    monkeypatch.setattr(random_forest.MetadataForest, "fit_predict", spy)
    cfg = load_config(ROOT / "configs" / "demo.yaml", {"runtime.logs_dir": str(tmp_path), "forest.n_estimators": 10})
    search = Search(cfg, None)
    search.manifest = m = _manifest()
    s = m.samples
    tr, va = np.flatnonzero(s["patient"] >= 4), np.flatnonzero(s["patient"] < 4)
    proba = forest_job(search, 0, tr, va, seed=1)
    n_train_visits = s.iloc[tr]["visit"].nunique()
    assert len(seen["train"]) == n_train_visits < len(tr)  # duplicates gone: one row per visit
    assert len(seen["val"]) == s.iloc[va]["visit"].nunique()
    by_visit = s.iloc[tr].groupby("visit").first()
    assert sorted(seen["train"]["Age"]) == sorted(by_visit["Age"])
    assert sorted(seen["labels"].tolist()) == sorted(by_visit["label"].tolist())
    # every view of a visit carries its visit's probabilities; rows outside the fold stay empty
    for idx in (tr, va):
        per_visit = pd.DataFrame(proba[idx], index=s["visit"].iloc[idx]).groupby(level=0).nunique()
        assert (per_visit == 1).all().all()
    assert not np.isnan(proba[np.concatenate([tr, va])]).any()
    np.testing.assert_allclose(proba[tr].sum(axis=1), 1.0)
