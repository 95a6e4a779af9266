"""A metadata-only search needs only metadata.csv: no box file, no image folder; its samples are visits."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from medfusion.config import Config, DataConfig, SearchConfig
from medfusion.data.check import check_dataset
from medfusion.data.dfu import load_dfu
from medfusion.data.synthetic import generate_demo
from tests.harness import run_search

LABELS = {"I": 0, "P": 1, "R": 2}


@pytest.fixture(scope="module")
def metadata_folder(tmp_path_factory) -> Path:
    """A folder that holds only the metadata.csv of a 24-patient demo dataset."""
    demo = generate_demo(tmp_path_factory.mktemp("demo") / "demo", seed=5, n_patients=24)
    only = tmp_path_factory.mktemp("meta") / "clinical"
    only.mkdir()
    shutil.copy(demo / "metadata.csv", only / "metadata.csv")
    return only


def _visits(folder: Path) -> pd.DataFrame:
    """Visit key -> label, straight from the file (independent of the loader)."""
    meta = pd.read_csv(folder / "metadata.csv", encoding="utf-8-sig")
    keys = [f"P{int(p):03d}{int(a):02d}{int(d)}" for p, a, d in zip(meta["Patient#"], meta["Appt#"], meta["DFU#"])]
    return pd.DataFrame({"visit": keys, "patient": meta["Patient#"].astype(int),
                         "label": meta["Healing Phase Abs"].str.strip().map(LABELS)}).drop_duplicates("visit")


def _cfg(folder: Path, **search) -> Config:
    return Config(data=DataConfig(data_dir=str(folder), demo=False), search=SearchConfig(cv_folds=2, **search))


def test_loader_reads_only_the_metadata_file(metadata_folder):
    assert [p.name for p in metadata_folder.iterdir()] == ["metadata.csv"]
    man = load_dfu(metadata_folder, DataConfig(), modalities={"metadata"})
    want = _visits(metadata_folder).set_index("visit")
    s = man.samples.set_index("sample_id")
    assert sorted(s.index) == sorted(want.index) and (man.samples["sample_id"] == man.samples["visit"]).all()
    assert (s["label"] == want.loc[s.index, "label"]).all() and (s["patient"] == want.loc[s.index, "patient"]).all()
    assert man.feature_columns and "Healing Phase" not in man.feature_columns
    assert man.report["metadata_only"] and man.samples["depth_rgb_path"].isna().all()
    with pytest.raises(FileNotFoundError, match="metadata-only search"):  # with images asked for: named
        load_dfu(metadata_folder, DataConfig(), modalities={"metadata", "depth_rgb"})


@pytest.mark.parametrize("search", [{"modalities": ("metadata",)}, {"combinations": ("metadata",)}])
def test_check_passes_for_a_metadata_search(metadata_folder, search):
    check = check_dataset(_cfg(metadata_folder, **search))
    assert check.ok, check.problems
    assert check.stats["n_samples"] == check.stats["n_visits"] == len(_visits(metadata_folder))
    assert "metadata only" in check.summary(short=True) and "metadata only" in check.summary()
    assert not check_dataset(_cfg(metadata_folder)).ok  # the default search has images: they are missing


def test_metadata_checks_still_run(tmp_path, metadata_folder):
    bad = tmp_path / "bad"
    shutil.copytree(metadata_folder, bad)
    meta = pd.read_csv(bad / "metadata.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    meta.loc[3, "Healing Phase Abs"] = "X"
    meta.to_csv(bad / "metadata.csv", index=False)
    check = check_dataset(_cfg(bad, modalities=("metadata",)))
    assert not check.ok and "Healing Phase Abs='X'" in check.problems[0] and "row 4" in check.problems[0]
    meta.loc[3, "Healing Phase Abs"] = "I"
    meta["Copied Label"] = meta["Healing Phase Abs"]  # a label leak by content is refused here too
    meta.to_csv(bad / "metadata.csv", index=False)
    check = check_dataset(_cfg(bad, modalities=("metadata",)))
    assert not check.ok and "Copied Label" in check.problems[0]


@pytest.mark.slow
def test_metadata_only_search_end_to_end(tmp_path, metadata_folder):
    run, proc = run_search(tmp_path / "logs", metadata_folder, "--modalities", "metadata")
    results = pd.read_csv(run / "results.csv")
    assert results["combination"].tolist() == ["metadata", "metadata"]
    visits = _visits(metadata_folder).set_index("visit")
    assignment = json.loads((run / "folds.json").read_text())
    assert sorted(assignment) == sorted(visits.index)  # every visit is a sample, keyed by its visit key
    for k in (0, 1):
        pred = pd.read_csv(run / "predictions" / "metadata" / f"fold_{k}.csv")
        assert (pred["sample_id"] == pred["visit"]).all()
        assert sorted(pred["sample_id"]) == sorted(s for s, f in assignment.items() if f == k)
        assert (pred["y_true"] == visits.loc[pred["visit"], "label"].to_numpy()).all()
        row = results[results["fold"] == k].iloc[0]
        assert row["n_val"] == row["n_val_visits"] == len(pred) and abs(row["qwk"] - row["visit_qwk"]) < 1e-12
    summary = pd.read_csv(run / "summary.csv")
    assert summary["combination"].tolist() == ["metadata"]
    assert (run / "report.md").is_file() and "metadata only" in (run / "run.log").read_text()
    assert not (run / "tensorboard").exists()  # nothing trained epochs
    # the run's forests predict the same folder through --mode predict (no image folder needed)
    import subprocess
    import sys

    from tests.harness import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--mode", "predict", "--run_name", run.name,
                           "--set", f"runtime.logs_dir={run.parent}", "--data_dir", str(metadata_folder),
                           "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = pd.read_csv(tmp_path / "pred" / "samples.csv")
    assert sorted(samples["sample_id"]) == sorted(visits.index) and (samples["sample_id"] == samples["visit"]).all()
