"""Plots and report.md written by a review, on synthetic run folders (see tests/test_review.py for the builder)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from sklearn.metrics import confusion_matrix

from medfusion import report
from medfusion.review import load_run, run_review
from tests.test_review import HEALTHY_QWK, _labels, healthy_jobs, job_record, planted, write_run

LINK = re.compile(r"\]\((plots/[^)]+)\)")


def _links(text: str) -> set[str]:
    return set(LINK.findall(text))


def _png_ok(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)
    assert img.shape[0] > 100 and img.shape[1] > 100, (path, img.shape)


def test_plots_and_report_written_and_every_plot_linked(tmp_path):
    run = write_run(tmp_path, healthy_jobs())
    assert run_review(run) == 0
    plots = sorted((run / "plots").glob("*.png"))
    names = {p.name for p in plots}
    assert names == {"summary_qwk.png", "confusion.png", "fusion_weight.png", "curves_depth_rgb.png",
                     "curves_metadata+depth_rgb.png", "reliability.png"}
    for p in plots:
        _png_ok(p)
    text = (run / "report.md").read_text()
    links = _links(text)
    assert links == {f"plots/{n}" for n in names}  # every plot that exists is linked, and only those
    assert all((run / link).is_file() for link in links)
    for combo in HEALTHY_QWK:
        assert f"| {combo} |" in text
    assert "No findings." in text and "## Key figures per job" in text


def test_report_lists_findings_with_evidence(tmp_path):
    def mutate(j):
        j["depth_rgb", 0]["val_pred_counts"] = {"I": 0, "P": 0, "R": 40}
        j["metadata+depth_rgb", 1]["stages"]["stage2"]["trainable_params"] = 195

    run = write_run(tmp_path, planted(mutate))
    assert run_review(run, strict=True) == 1
    text = (run / "report.md").read_text()
    assert "2 error(s)" in text
    row = next(line for line in text.splitlines() if "`degenerate_predictions`" in line)
    assert row.startswith("| **error** |") and "| depth_rgb | 0 |" in row and "100%" in row and "40/40" in row
    row = next(line for line in text.splitlines() if "`frozen_too_much`" in line)
    assert "195 of 49156" in row and "| stage2 |" in row


def test_confusion_matrix_summed_over_folds(tmp_path):
    run = write_run(tmp_path, healthy_jobs())
    cm, n = report.confusion_counts(load_run(run), "metadata")
    job = job_record("metadata", 0, 0.45)  # both folds use the same counts
    y = _labels(job["val_class_counts"])
    pred = _labels(job["val_pred_counts"])[:len(y)]
    expected = 2 * confusion_matrix(y, pred, labels=[0, 1, 2])
    assert n == 2 and np.array_equal(cm, expected) and cm.sum() == 2 * len(y)


def test_three_modality_run_and_metadata_only_run(tmp_path):
    jobs = [job_record(c, k, q) for k in range(3) for c, q in
            [("metadata", 0.4), ("depth_rgb", 0.3), ("thermal_map", 0.3), ("metadata+depth_rgb+thermal_map", 0.5)]]
    run = write_run(tmp_path / "three", jobs)
    run_review(run)
    assert (run / "plots" / "curves_metadata+depth_rgb+thermal_map.png").is_file()
    assert _links((run / "report.md").read_text()) == {f"plots/{p.name}" for p in (run / "plots").glob("*.png")}

    meta = write_run(tmp_path / "meta", [job_record("metadata", k, 0.4) for k in range(2)])
    run_review(meta)
    want = {"summary_qwk.png", "confusion.png", "reliability.png"}
    assert {p.name for p in (meta / "plots").glob("*.png")} == want
    assert _links((meta / "report.md").read_text()) == {f"plots/{n}" for n in want}


def test_stale_plot_from_an_earlier_review_is_still_linked(tmp_path):
    run = write_run(tmp_path, healthy_jobs())
    (run / "plots").mkdir()
    (run / "plots" / "curves_thermal_map.png").write_bytes(b"\x89PNG\r\n\x1a\nold")
    run_review(run)
    text = (run / "report.md").read_text()
    assert "plots/curves_thermal_map.png" in _links(text) and "earlier review" in text


def test_a_failing_plot_does_not_stop_the_review(tmp_path, monkeypatch):
    def broken(run, path):
        raise ValueError("boom")

    monkeypatch.setattr(report, "plot_confusion", broken)
    run = write_run(tmp_path, healthy_jobs())
    assert run_review(run) == 0
    text = (run / "report.md").read_text()
    assert "confusion.png: ValueError: boom" in text and "plots/confusion.png" not in _links(text)
    assert (run / "review.json").is_file() and (run / "plots" / "summary_qwk.png").is_file()


def test_review_without_predictions_or_summary(tmp_path):
    run = write_run(tmp_path, healthy_jobs(), predictions=False)
    (run / "summary.csv").unlink()
    (run / "results.csv").unlink()
    assert run_review(run) == 0
    text = (run / "report.md").read_text()
    assert "| metadata+depth_rgb |" in text  # summary recomputed from the job records
    assert not (run / "plots" / "confusion.png").exists() and "plots/confusion.png" not in text


@pytest.mark.parametrize("folds", [1, 5])
def test_curves_handle_one_and_many_folds(tmp_path, folds):
    run = write_run(tmp_path, healthy_jobs(folds))
    run_review(run)
    _png_ok(run / "plots" / "curves_metadata+depth_rgb.png")


def test_report_reads_records_not_the_review():
    """No import cycle: report.py reads the run through records.py; only review.py imports report.py."""
    import subprocess
    import sys

    code = ("import sys, medfusion.report; assert 'medfusion.review' not in sys.modules, 'report imports review'; "
            "import medfusion.review as rv, medfusion.records as rc; "
            "assert rv.load_run is rc.load_run and rv.RunRecords is rc.RunRecords")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_explanations_section_only_once_explained_and_every_link_exists(tmp_path):
    run = write_run(tmp_path, healthy_jobs())
    run_review(run)
    assert "## Explanations" not in (run / "report.md").read_text()  # no explain/ folder yet
    ex = run / "explain"
    (ex / "metadata+depth_rgb").mkdir(parents=True)
    for name in ("metadata_importance.png", "modality_contribution.png", "metadata+depth_rgb/fold_0_true_I.png",
                 "metadata+depth_rgb/fold_1_true_R.png"):
        (ex / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    pd.DataFrame({"feature": ["Wound Score", "Age"], "qwk_drop_mean": [0.3, 0.01], "qwk_drop_std": [0.05, 0.02],
                  "qwk_drop_fold_min": [0.25, -0.01], "qwk_drop_fold_max": [0.35, 0.03], "n_folds": 2, "n_repeats": 5,
                  "baseline_qwk_mean": 0.5}).to_csv(ex / "metadata_importance.csv", index=False)
    pd.DataFrame({"combination": "metadata+depth_rgb", "fold": [0, 0, 1, 1], "branch": ["depth_rgb", "metadata"] * 2,
                  "forest_weight": [0.6, 0.6, 0.4, 0.4], "qwk_full": 0.6, "qwk_ablated": [0.5, 0.2, 0.4, 0.3],
                  "qwk_drop": [0.1, 0.4, 0.2, 0.3], "changed_decisions": 3, "n_val": 40}).to_csv(
        ex / "modality_contribution.csv", index=False)
    (ex / "metadata+depth_rgb" / "samples.csv").write_text("fold\n0\n")
    run_review(run)
    text = (run / "report.md").read_text()
    section = text[text.index("## Explanations"):]
    links = set(re.findall(r"\]\((explain/[^)]+)\)", section))
    assert links == {"explain/metadata_importance.png", "explain/metadata_importance.csv",
                     "explain/modality_contribution.png", "explain/modality_contribution.csv",
                     "explain/metadata+depth_rgb/samples.csv", "explain/metadata+depth_rgb/fold_0_true_I.png",
                     "explain/metadata+depth_rgb/fold_1_true_R.png"}
    assert all((run / link).is_file() for link in links)
    assert "| Wound Score | 0.3000 | 0.0500 | 0.250 to 0.350 |" in section
    # per branch: the mean over folds of the drop (0.1, 0.2 -> 0.15) and of the forest weight (0.6, 0.4 -> 0.5)
    assert "| metadata+depth_rgb | depth_rgb | +0.1500 | 0.500 | 2 |" in section
    assert "| metadata+depth_rgb | metadata | +0.3500 | 0.500 | 2 |" in section
