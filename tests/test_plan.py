"""The plan: which jobs a search needs, what each waits for, and the critical path (no data, no TensorFlow)."""

import pytest

from medfusion.config import load_config
from medfusion.plan import Job, check_plan, critical_path, describe_plan, fold_jobs, plan_jobs, resolve_combinations
from tests.harness import ROOT

DEMO = str(ROOT / "configs" / "demo.yaml")


def test_a_fold_needs_one_forest_one_pretraining_per_image_modality_and_its_combinations():
    jobs = fold_jobs(1, ["metadata", "depth_rgb", "thermal_map", "metadata+depth_rgb+thermal_map"])
    assert [j.id for j in jobs] == [
        "forest/fold_1", "pretrain/fold_1/depth_rgb", "pretrain/fold_1/thermal_map", "combination/fold_1/metadata",
        "combination/fold_1/depth_rgb", "combination/fold_1/thermal_map",
        "combination/fold_1/metadata+depth_rgb+thermal_map"]
    deps = {j.id: j.deps for j in jobs}
    assert deps["combination/fold_1/metadata"] == ("forest/fold_1",)
    assert deps["combination/fold_1/depth_rgb"] == ("pretrain/fold_1/depth_rgb",)
    assert deps["combination/fold_1/metadata+depth_rgb+thermal_map"] == (
        "forest/fold_1", "pretrain/fold_1/depth_rgb", "pretrain/fold_1/thermal_map")
    check_plan(jobs)


def test_a_fold_with_only_image_combinations_left_has_no_forest_job():
    jobs = fold_jobs(0, ["thermal_map"])
    assert [j.kind for j in jobs] == ["pretrain", "combination"]


def test_check_plan_refuses_a_job_before_what_it_reads_and_duplicates():
    a, b = Job("forest", 0), Job("combination", 0, "metadata", ("forest/fold_0",))
    with pytest.raises(ValueError, match="needs"):
        check_plan([b, a])
    with pytest.raises(ValueError, match="twice"):
        check_plan([a, a])


def test_critical_path_follows_measured_times():
    jobs = plan_jobs({0: ["metadata", "depth_rgb", "metadata+depth_rgb"]})
    seconds = {"forest/fold_0": 2, "pretrain/fold_0/depth_rgb": 30, "combination/fold_0/metadata": 1,
               "combination/fold_0/depth_rgb": 10, "combination/fold_0/metadata+depth_rgb": 12}
    path, length = critical_path(jobs, seconds)
    assert path == ["pretrain/fold_0/depth_rgb", "combination/fold_0/metadata+depth_rgb"] and length == 42
    assert "critical path (42 s)" in describe_plan(jobs, seconds)


def test_the_default_config_plans_every_combination_of_every_fold():
    cfg = load_config(str(ROOT / "configs" / "default.yaml"))
    combos = resolve_combinations(cfg)
    n_img = len([m for m in cfg.search.modalities if m != "metadata"])
    assert len(combos) == 2 ** len(cfg.search.modalities) - 1
    jobs = plan_jobs({k: combos for k in range(cfg.search.cv_folds)})
    check_plan(jobs)
    text = describe_plan(jobs)
    assert text.startswith(f"{cfg.search.cv_folds * (1 + n_img + len(combos))} jobs: {cfg.search.cv_folds} forest, "
                           f"{cfg.search.cv_folds * n_img} pretrain, {cfg.search.cv_folds * len(combos)} combination")
    assert "dependency depth 2" in text


def test_plan_mode_prints_the_graph_without_data(tmp_path, capsys):
    from medfusion import cli

    rc = cli.main(["--mode", "plan", "--config", DEMO, "--cv_folds", "3", "--set", f"runtime.logs_dir={tmp_path}",
                   "--combinations", "metadata+thermal_map"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "3 combinations x 3 folds" in err and "15 jobs: 3 forest, 3 pretrain, 9 combination" in err
