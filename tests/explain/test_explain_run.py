"""--mode explain end to end on the shared tiny search: files, titles and tables say what they show."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.harness import ROOT

COMBO = "metadata+depth_rgb"


def _explain(run, *extra):
    cmd = [sys.executable, str(ROOT / "main.py"), "--mode", "explain", "--config", str(ROOT / "configs/demo.yaml"),
           "--run_name", run.name, "--set", f"runtime.logs_dir={run.parent}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def explained(tmp_path_factory, tiny_search):
    """One explain run on a private copy of the shared search (module-wide: several tests read it)."""
    import shutil

    run, _ = tiny_search
    logs = tmp_path_factory.mktemp("explained") / "logs"
    shutil.copytree(run.parent, logs)
    proc = _explain(logs / run.name, "--samples", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return logs / run.name


@pytest.mark.slow
def test_grids_are_named_by_fold_and_class_and_titled_by_sample(explained):
    folds = json.loads((explained / "folds.json").read_text())
    out = explained / "explain" / COMBO
    table = pd.read_csv(out / "samples.csv")
    expected_files = set()
    for k in (0, 1):
        saved = pd.read_csv(explained / "predictions" / COMBO / f"fold_{k}.csv").set_index("sample_id")
        classes_present = {"IPR"[i] for i in saved["y_true"]}
        expected_files |= {f"fold_{k}_true_{c}.png" for c in classes_present}
        rows = table[table["fold"] == k]
        assert set(rows["true"]) == classes_present
        assert rows.groupby("true").size().max() <= 2  # --samples 2
        for r in rows.itertuples():
            assert folds[r.sample_id] == k  # a validation sample of that fold
            assert r.true == "IPR"[saved.loc[r.sample_id, "y_true"]]
            # the probabilities shown are the ones the search saved for that sample (recomputed from the bundle)
            assert np.allclose([r.p_I, r.p_P, r.p_R], saved.loc[r.sample_id, ["p_I", "p_P", "p_R"]], atol=1e-5)
            assert r.predicted == "IPR"[int(np.argmax([r.p_I, r.p_P, r.p_R]))]  # argmax rule in this run
            assert r.file == f"fold_{k}_true_{r.true}.png"
            assert r.title.startswith(f"{r.sample_id}  true {r.true}  predicted {r.predicted}  p_I={r.p_I:.2f} ")
            assert r.kind in r.title
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == expected_files
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_importance_contribution_and_report_section(explained):
    imp = pd.read_csv(explained / "explain" / "metadata_importance.csv")
    assert imp["n_folds"].eq(2).all() and imp["qwk_drop_mean"].is_monotonic_decreasing
    assert "Wound Score" in set(imp["feature"].head(3))  # the demo writes the class into Wound Score
    con = pd.read_csv(explained / "explain" / "modality_contribution.csv")
    assert set(zip(con["fold"], con["branch"])) == {(k, b) for k in (0, 1) for b in ("metadata", "depth_rgb")}
    for k in (0, 1):
        info = json.loads((explained / "bundles" / COMBO / f"fold_{k}" / "bundle.json").read_text())
        assert np.allclose(con[con["fold"] == k]["forest_weight"], info["fusion_rf_weight"]["end"], atol=1e-6)
        job = json.loads((explained / "jobs" / COMBO / f"fold_{k}.json").read_text())
        assert np.allclose(con[con["fold"] == k]["qwk_full"], job["metrics"]["qwk"], atol=1e-6)
    report = (explained / "report.md").read_text()
    assert "## Explanations" in report
    links = re.findall(r"\]\((explain/[^)]+)\)", report)
    assert "explain/metadata_importance.png" in links and "explain/modality_contribution.png" in links
    assert all((explained / link).is_file() for link in links)
    assert sum(link.endswith(".png") and f"explain/{COMBO}/" in link for link in links) == len(
        list((explained / "explain" / COMBO).glob("*.png")))


@pytest.mark.slow
def test_a_wrong_target_layer_is_named_with_the_layers_there_are(copy_run):
    proc = _explain(copy_run, "--target_layer", "block7a_project_conv")
    assert proc.returncode == 2
    assert "'block7a_project_conv' is not a layer of 'depth_rgb_backbone'" in proc.stderr + proc.stdout
    assert "tiny_relu3" in proc.stderr + proc.stdout
