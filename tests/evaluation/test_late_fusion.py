"""Late-fusion baselines against an independent computation from the member prediction files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from medfusion.evaluation.aggregate import RESULT_COLUMNS, compare, pooled_by_combination, results_frame, summarize
from medfusion.evaluation.late_fusion import (ENSEMBLE_METADATA, folder_name, is_late_fusion, late_fusion_plan,
                                              late_fusion_row, late_fusion_tables, mean_table)

P = ["p_I", "p_P", "p_R"]
COMBOS = ["metadata", "depth_rgb", "thermal_map", "metadata+depth_rgb", "depth_rgb+thermal_map"]


def _member_files(root: Path, folds=(0, 1), seed=0) -> dict:
    """Prediction files of every combination: same samples per fold, rows shuffled differently per member."""
    rng = np.random.default_rng(seed)
    files = {}
    for k in folds:
        n = 30
        base = pd.DataFrame({"sample_id": [f"P{k}{i:03d}_1" for i in range(n)],
                             "patient": np.repeat(np.arange(5) + 100 * k, 6),  # 2 views per visit, 3 visits per patient
                             "visit": [f"P{k}{i // 2:03d}" for i in range(n)]})
        base["y_true"] = base["visit"].map({v: int(rng.integers(3)) for v in base["visit"].unique()})
        for c in COMBOS:
            t = base.copy()
            t[P] = rng.dirichlet(np.ones(3), size=n)
            t = t.sample(frac=1.0, random_state=int(rng.integers(1000))).reset_index(drop=True)
            path = root / "predictions" / c / f"fold_{k}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            t.to_csv(path, index=False)
            files[(c, k)] = path
    return files


def _by_fold(files) -> dict:
    out = {}
    for (c, k), path in files.items():
        out.setdefault(c, {})[k] = pd.read_csv(path)
    return out


def _hand_mean(files, members, k) -> pd.DataFrame:
    """The mean of the members' files for fold k, joined on sample_id with pandas (independent of mean_table)."""
    frames = [pd.read_csv(files[(m, k)]).set_index("sample_id")[P].add_suffix(f"@{m}") for m in members]
    joined = pd.concat(frames, axis=1, join="inner")
    assert len(joined) == len(frames[0])
    return pd.DataFrame({p: joined[[f"{p}@{m}" for m in members]].mean(axis=1) for p in P})


def test_plan_names_and_members():
    plan = late_fusion_plan(COMBOS)
    assert plan == {"late_mean:metadata+depth_rgb": ["metadata", "depth_rgb"],
                    "late_mean:depth_rgb+thermal_map": ["depth_rgb", "thermal_map"],
                    ENSEMBLE_METADATA: ["metadata", "metadata+depth_rgb"]}
    assert late_fusion_plan(["metadata", "depth_rgb"]) == {}  # no fusion, no baseline
    assert ENSEMBLE_METADATA not in late_fusion_plan(["depth_rgb", "thermal_map", "depth_rgb+thermal_map"])
    assert all(is_late_fusion(n) for n in plan) and not any(is_late_fusion(c) for c in COMBOS)
    for n in plan:  # safe on Windows: none of <>:"/\\|?*
        assert not set(folder_name(n)) & set('<>:"/\\|?*'), n
    assert folder_name("late_mean:metadata+depth_rgb") == "late_mean-metadata+depth_rgb"


def test_late_fusion_equals_hand_mean_of_member_files(tmp_path):
    files = _member_files(tmp_path)
    tables = late_fusion_tables(_by_fold(files), COMBOS)
    assert set(tables) == set(late_fusion_plan(COMBOS))
    for name, members in late_fusion_plan(COMBOS).items():
        for k in (0, 1):
            got = tables[name][k].set_index("sample_id")
            want = _hand_mean(files, members, k)
            np.testing.assert_allclose(got.loc[want.index, P].to_numpy(), want.to_numpy(), rtol=0, atol=1e-12)
            truth = pd.read_csv(files[(members[0], k)]).set_index("sample_id")
            assert (got.loc[truth.index, "y_true"] == truth["y_true"]).all()
            assert (got.loc[truth.index, "visit"] == truth["visit"]).all()
            row = late_fusion_row(name, k, tables[name][k])
            pred = want.to_numpy().argmax(axis=1)
            y = truth.loc[want.index, "y_true"].to_numpy()
            assert row["qwk"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"), abs=1e-12)
            assert row["f1_macro"] == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro",
                                                              zero_division=0), abs=1e-12)
            visits = want.join(truth["visit"]).groupby("visit")[P].mean()
            vy = truth.groupby("visit")["y_true"].first().loc[visits.index]
            assert row["visit_qwk"] == pytest.approx(
                cohen_kappa_score(vy, visits.to_numpy().argmax(1), weights="quadratic"), abs=1e-12)
            assert row["n_val"] == 30 and row["n_val_visits"] == len(visits) and row["decision"] == "argmax"


def test_rows_enter_results_summary_and_comparisons(tmp_path):
    files = _member_files(tmp_path, seed=1)
    by_fold = _by_fold(files)
    tables = late_fusion_tables(by_fold, COMBOS)
    rows = [{"combination": c, "fold": k, **late_fusion_row(c, k, t)} for c, f in by_fold.items() for k, t in f.items()]
    rows += [late_fusion_row(n, k, t) for n, f in tables.items() for k, t in f.items()]
    results = results_frame(rows)
    assert list(results.columns) == RESULT_COLUMNS
    late = results[results["combination"].map(is_late_fusion)]
    assert len(late) == 3 * 2 and (late["decision"] == "argmax").all()
    assert late[["stage1_best_epoch", "stage2_qwk", "stage2_kept", "fusion_rf_weight"]].isna().all().all()
    preds = {c: [(t, None) for t in f.values()] for c, f in {**by_fold, **tables}.items()}
    visits = pooled_by_combination(preds)
    summary = summarize(results, visits, n=50)
    assert set(summary["combination"]) == set(COMBOS) | set(tables)
    comparisons = compare(summary, results, visits, n=50)
    mean = dict(zip(summary["combination"], summary["visit_qwk_mean"]))
    got = dict(zip(comparisons["combination"], comparisons["best_member"]))
    assert got["late_mean:metadata+depth_rgb"] == max(["metadata", "depth_rgb"], key=mean.get)
    assert got[ENSEMBLE_METADATA] == max(["metadata", "metadata+depth_rgb"], key=mean.get)


def test_members_of_other_samples_are_refused(tmp_path):
    files = _member_files(tmp_path, folds=(0,))
    by_fold = _by_fold(files)
    by_fold["depth_rgb"][0] = by_fold["depth_rgb"][0].iloc[1:]
    with pytest.raises(ValueError, match="depth_rgb's predictions cover other samples"):
        mean_table({"metadata": by_fold["metadata"][0], "depth_rgb": by_fold["depth_rgb"][0]})
    partial = _by_fold(files)
    del partial["thermal_map"]  # a member that has not finished: no baseline for it, the others still come
    assert "late_mean:depth_rgb+thermal_map" not in late_fusion_tables(partial, COMBOS)
