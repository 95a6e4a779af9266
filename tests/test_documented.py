"""Documented behaviour that had no test (issue 14): the pre-training cache key, the device modes without a GPU,
the verbosity levels, --seed / --data_percentage / --modalities, SIGTERM, a changed dataset against folds.json and a
job redone when one of its files fails its checksum.

In-process where the behaviour allows it (cli.main with the search or the strategy set-up patched out); the two that
need a real search resume are marked slow and reuse the session's finished tiny search (`copy_run`).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from medfusion import cli
from medfusion.config import load_config, replace

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def _skip_with_a_gpu():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("checks the behaviour of a machine without a GPU")


@pytest.fixture
def cpu_strategy(monkeypatch):
    """cli.main in-process: TensorFlow has long started, so the strategy set-up must not touch the devices."""
    import tensorflow as tf

    import medfusion.training.devices as devices

    monkeypatch.setattr(devices, "configure_strategy", lambda rt: tf.distribute.OneDeviceStrategy("/cpu:0"))


class _UnhandledSigterm(BaseException):
    """Raised by the safety handler: SIGTERM reached this process without cli.main's handler in place."""


def _safety_handler(signum, frame):
    raise _UnhandledSigterm()


@pytest.fixture
def restore_sigterm():
    """cli.main installs a SIGTERM handler in this process; put the previous one back afterwards. Until cli.main
    replaces it, a safety handler stands in, so a missing handler fails the test instead of killing pytest."""
    previous = signal.signal(signal.SIGTERM, _safety_handler)
    yield
    signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- the pre-training cache key


def _fake_ctx(cfg, replicas=1, crops=None):
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(12)]
    return SimpleNamespace(
        cfg=cfg,
        crops={"depth_rgb": rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8) if crops is None else crops},
        manifest=SimpleNamespace(samples=pd.DataFrame({"sample_id": ids}), labels=np.arange(12) % 3),
        strategy=SimpleNamespace(num_replicas_in_sync=replicas))


def test_pretrain_key_changes_with_seed_image_size_augmentation_and_replicas():
    from medfusion.jobs import pretrain_key

    cfg = load_config(DEMO)
    tr, va = np.arange(8), np.arange(8, 12)
    key = lambda ctx, seed=1, tr=tr, va=va: pretrain_key(ctx, "depth_rgb", tr, va, seed)  # noqa: E731
    base = key(_fake_ctx(cfg))
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert key(_fake_ctx(cfg)) == base  # a pure function of its inputs
    changed = {
        "seed": key(_fake_ctx(cfg), seed=2),
        "image size": key(_fake_ctx(replace(cfg, "data.image_size", cfg.data.image_size * 2))),
        "augmentation": key(_fake_ctx(replace(cfg, "train.augment", ("flip", "rotate")))),
        "replicas": key(_fake_ctx(cfg, replicas=2)),
        "pre-training epochs": key(_fake_ctx(replace(cfg, "train.pretrain.epochs", cfg.train.pretrain.epochs + 1))),
        "batch size": key(_fake_ctx(replace(cfg, "train.batch_size", cfg.train.batch_size * 2))),
        "crops": key(_fake_ctx(cfg, crops=np.zeros((12, 8, 8, 3), np.uint8))),
        "validation samples": key(_fake_ctx(cfg), va=np.arange(9, 12)),
        "precision": key(_fake_ctx(replace(cfg, "runtime.precision", "mixed_float16"))),
        "XLA": key(_fake_ctx(replace(cfg, "runtime.jit_compile", "true"))),
    }
    for what, k in changed.items():
        assert k != base, f"the pre-training key ignores the {what}"
    assert len(set(changed.values())) == len(changed)
    # "auto" is keyed as the job's worker resolves it: a GPU worker's auto entry is a mixed_float16 entry,
    # never the float32 entry a CPU machine trained under the same configured value
    auto = replace(cfg, "runtime.precision", "auto")
    on_gpu = {"precision": "mixed_float16", "jit_compile": True}
    assert key(_fake_ctx(auto)) == key(_fake_ctx(replace(cfg, "runtime.precision", "float32")))  # this CPU
    gpu_key = pretrain_key(_fake_ctx(auto), "depth_rgb", tr, va, 1, numerics=on_gpu)
    assert gpu_key != key(_fake_ctx(auto))
    # settings that do not change the pre-training do not change the key (the cache is shared across runs)
    for dotted, value in (("runtime.run_name", "other"), ("runtime.verbosity", 3), ("train.stage2.lr", 3e-5),
                          ("search.cv_folds", 5)):
        assert key(_fake_ctx(replace(cfg, dotted, value))) == base, dotted


# ----------------------------------------------------------------------------- device modes without a GPU


@pytest.mark.parametrize("mode,gpus,message", [
    ("multi", (), "--device_mode multi found no GPU; use --device_mode cpu, or --cpu_replicas N"),
    ("custom", ("0",), "--gpus 0: GPU 0 does not exist (0 GPU(s) visible)"),
])
def test_multi_and_custom_without_a_gpu_stop_with_a_clear_error(mode, gpus, message, capsys, tmp_path,
                                                                 restore_sigterm):
    from medfusion.config import RuntimeConfig
    from medfusion.training.devices import DeviceError, configure_strategy

    _skip_with_a_gpu()
    with pytest.raises(DeviceError) as exc:
        configure_strategy(RuntimeConfig(device_mode=mode, gpus=gpus))
    assert message in str(exc.value)
    argv = ["--config", DEMO, "--device_mode", mode, "--run_name", "dev", "--set", f"runtime.logs_dir={tmp_path}"]
    rc = cli.main(argv + (["--gpus", ",".join(gpus)] if gpus else []))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "dev").exists()  # nothing written


def test_single_without_a_gpu_warns_and_runs_on_the_cpu():
    import logging

    from medfusion.config import RuntimeConfig
    from medfusion.training.devices import configure_strategy

    _skip_with_a_gpu()
    seen = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger("medfusion")  # cli.main (other tests) turns its propagation off: listen on it directly
    logger.addHandler(handler)
    try:
        strategy = configure_strategy(RuntimeConfig(device_mode="single"))
    finally:
        logger.removeHandler(handler)
    assert strategy.num_replicas_in_sync == 1 and "CPU" in strategy.extended.worker_devices[0].upper()
    assert "--device_mode single: no GPU visible, running on the CPU" in seen


# ----------------------------------------------------------------------------- verbosity


@pytest.mark.parametrize("verbosity", [0, 1, 2, 3])
def test_verbosity_levels(verbosity, monkeypatch, capsys, tmp_path, cpu_strategy, restore_sigterm):
    """README: 0 warnings (and errors) only; 1 (and 2) per job, stage and epoch lines; 3 debug lines and tracebacks."""
    import logging

    import medfusion.search

    def run(self):
        log = logging.getLogger("medfusion")
        log.debug("DEBUG-LINE")
        log.info("INFO-LINE")
        log.warning("WARNING-LINE")
        raise ValueError("planted failure")

    monkeypatch.setattr(medfusion.search.Search, "run", run)
    rc = cli.main(["--config", DEMO, "--run_name", "v", "--set", f"runtime.logs_dir={tmp_path}",
                   "--verbosity", str(verbosity)])
    err = capsys.readouterr().err
    assert rc == 2 and "WARNING-LINE" in err and "error: planted failure" in err
    assert ("INFO-LINE" in err) == (verbosity >= 1)
    assert ("DEBUG-LINE" in err) == (verbosity >= 3)
    assert ("Traceback" in err) == (verbosity >= 3)


# ----------------------------------------------------------------------------- --seed, --data_percentage, --modalities


def test_seed_and_data_percentage_reach_the_folds(tiny_data, capsys, restore_sigterm):
    from medfusion.data.check import check_dataset

    def check(*flags):
        args = cli.build_parser().parse_args(["--config", DEMO, "--data_dir", str(tiny_data), "--cv_folds", "3",
                                              "--set", "data.demo=false", *flags])
        return check_dataset(cli.resolve_config(args))

    a, b, half = check("--seed", "5"), check("--seed", "6"), check("--seed", "5", "--data_percentage", "50")
    assert a.ok and b.ok and half.ok
    patients = a.manifest.samples.set_index("sample_id")["patient"]
    assert len(a.assignment) == len(a.manifest) and patients.nunique() == 24
    assert a.assignment != b.assignment  # the seed moves patients between folds
    assert a.assignment == check("--seed", "5").assignment
    kept = {patients[s] for s in half.assignment}
    assert len(kept) == 12  # 50 % of the 24 patients, whole patients only
    assert set(half.assignment) == {s for s, p in patients.items() if p in kept}
    rc = cli.main(["--mode", "check_data", "--config", DEMO, "--data_dir", str(tiny_data), "--cv_folds", "3",
                   "--set", "data.demo=false", "--seed", "5", "--data_percentage", "50"])
    assert rc == 0
    assert "folds (--cv_folds 3, --data_percentage 50, seed 5:" in capsys.readouterr().err


def test_modalities_choose_the_combinations():
    from medfusion.search import resolve_combinations

    def combos(*flags):
        return resolve_combinations(cli.resolve_config(cli.build_parser().parse_args(["--config", DEMO, *flags])))

    assert combos("--modalities", "thermal_map,metadata") == ["metadata", "thermal_map", "metadata+thermal_map"]
    assert combos("--modalities", "depth_rgb") == ["depth_rgb"]
    assert len(combos("--modalities", "metadata,depth_rgb,depth_map,thermal_map")) == 15
    # --combinations: only those, plus their single-modality baselines
    assert combos("--combinations", "depth_rgb+metadata") == ["metadata", "depth_rgb", "metadata+depth_rgb"]


# ----------------------------------------------------------------------------- SIGTERM (a preempted node)


def test_sigterm_stops_cleanly_with_the_resume_command(monkeypatch, capsys, tmp_path, cpu_strategy,
                                                        restore_sigterm):
    import medfusion.search

    def run(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this
        raise AssertionError("SIGTERM did not interrupt the search")

    monkeypatch.setattr(medfusion.search.Search, "run", run)
    argv = ["--config", DEMO, "--run_name", "pre", "--set", f"runtime.logs_dir={tmp_path}", "--resume_mode", "fresh",
            "--cv_folds", "2"]
    t0 = time.time()
    try:
        rc = cli.main(argv)
    except _UnhandledSigterm:
        pytest.fail("cli.main installed no SIGTERM handler: a preempted node would die without the resume hint")
    err = capsys.readouterr().err
    assert rc == 130 and time.time() - t0 < 8
    assert "interrupted" in err and f"{tmp_path}/pre" in err
    # the same command, with --resume_mode auto instead of fresh
    expected = " ".join(["--config", DEMO, "--run_name", "pre", "--set", f"runtime.logs_dir={tmp_path}",
                         "--cv_folds", "2", "--resume_mode", "auto"])
    assert f"python main.py {expected}" in err
    assert "fresh" not in err.split("python main.py", 1)[1]


# ----------------------------------------------------------------------------- Ctrl-C on a running search


@pytest.mark.slow
def test_ctrl_c_during_training_exits_130_with_the_resume_command(tmp_path, tiny_data):
    import subprocess

    from tests.harness import ROOT as HARNESS_ROOT, search_command

    cmd = search_command(tmp_path / "logs", tiny_data, "--combinations", "depth_rgb", run_name="ctrl_c")
    out, err = open(tmp_path / "stdout", "w"), open(tmp_path / "stderr", "w")
    # a shell that starts this suite in the background hands SIGINT down as ignored, and Python then keeps it
    # ignored: restore the default so the child behaves as a search started from a terminal
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=HARNESS_ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while "epoch 1/" not in (tmp_path / "stderr").read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before it trained"
        assert time.time() < deadline, "no training epoch within 300 s"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
        err.close()
    text = (tmp_path / "stderr").read_text()
    assert rc == 130, text[-3000:]
    assert "interrupted: every finished job and the last completed epoch of the running stage are saved" in text, \
        text[-3000:]
    assert "Traceback" not in text, text[text.index("Traceback") - 500:][:4000]
    assert f"python main.py {' '.join(cmd[2:])} --resume_mode auto" in text, text[-3000:]
    assert (tmp_path / "logs" / "ctrl_c" / "config.yaml").is_file()


# ----------------------------------------------------------------------------- resuming a finished run


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_changed_dataset_is_refused_against_folds_json(copy_run, tiny_data, tmp_path, capsys, cpu_strategy,
                                                       restore_sigterm):
    """The run's dataset loses a patient after the run started: resuming auto stops, naming folds.json."""
    from tests.harness import FAST

    data = Path(shutil.copytree(tiny_data, tmp_path / "changed"))
    meta = pd.read_csv(data / "metadata.csv", encoding="utf-8-sig", dtype=str, keep_default_na=False)
    gone = meta["Patient#"].iloc[0]
    meta[meta["Patient#"] != gone].to_csv(data / "metadata.csv", index=False, encoding="utf-8-sig")
    config = copy_run / "config.yaml"
    assert str(tiny_data) in config.read_text()
    config.write_text(config.read_text().replace(str(tiny_data), str(data)))  # "the same folder, changed"
    before = {p: _sha256(p) for p in copy_run.rglob("*") if p.is_file() and p.name != "run.log"}
    rc = cli.main(["--mode", "search", "--config", DEMO, "--data_dir", str(data), "--cv_folds", "2",
                   "--run_name", copy_run.name, "--set", f"runtime.logs_dir={copy_run.parent}",
                   "--set", "data.demo=false", *FAST, "--combinations", "metadata+depth_rgb"])
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert f"{copy_run / 'folds.json'} does not match the dataset (0 new samples" in err
    assert "the data changed since the run started; use --resume_mode fresh or a new --run_name" in err
    assert "[stage1]" not in err and "epoch 1/" not in err  # nothing trained
    after = {p: _sha256(p) for p in copy_run.rglob("*") if p.is_file() and p.name != "run.log"}
    assert after == before  # nothing in the run folder changed


@pytest.mark.slow
def test_a_file_failing_its_checksum_redoes_only_its_job(copy_run, tiny_data):
    from tests.harness import rescored_from_predictions, run_search

    state = __import__("json").loads((copy_run / "state.json").read_text())
    jobs = {(j["combination"], int(j["fold"])) for j in state["jobs"].values() if j.get("status") == "done"}
    assert len(jobs) == 6, sorted(jobs)  # metadata, depth_rgb, metadata+depth_rgb x 2 folds
    victim = copy_run / "predictions" / "metadata+depth_rgb" / "fold_1.csv"
    pred = pd.read_csv(victim)
    pred.loc[0, ["p_I", "p_P", "p_R"]] = [0.98, 0.01, 0.01]  # still a valid prediction file, not the one recorded
    pred.to_csv(victim, index=False)
    others = {p: p.read_bytes() for p in (copy_run / "predictions").rglob("fold_*.csv")
              if p != victim and ":" not in p.parent.name and "-" not in p.parent.name}
    assert len(others) == 5

    _, proc = run_search(copy_run.parent, tiny_data, "--combinations", "metadata+depth_rgb", run_name=copy_run.name,
                         env={"TF_ENABLE_ONEDNN_OPTS": "0"})
    err = proc.stderr
    assert ("--- fold 1 job metadata+depth_rgb: recorded as finished but predictions/metadata+depth_rgb/fold_1.csv "
            "does not match its recorded checksum; redoing it") in err, err[-3000:]
    for combo, k in sorted(jobs - {("metadata+depth_rgb", 1)}):
        assert f"--- fold {k} job {combo}: finished earlier, outputs verified; skipped" in err, (combo, k)
    assert err.count("[stage1] lr=") == 1  # one job trained again (its pre-training came from the cache)
    for p, content in others.items():
        assert p.read_bytes() == content, p  # the verified jobs' files were not rewritten
    # the redone job vouches for its new file, and its results row scores that file
    state = __import__("json").loads((copy_run / "state.json").read_text())
    (job,) = [j for j in state["jobs"].values() if (j["combination"], int(j["fold"])) == ("metadata+depth_rgb", 1)]
    rec = job["files"]["predictions/metadata+depth_rgb/fold_1.csv"]
    assert rec["sha256"] == _sha256(victim) and rec["size"] == victim.stat().st_size
    assert not np.allclose(pd.read_csv(victim).loc[0, ["p_I", "p_P", "p_R"]].to_numpy(float), [0.98, 0.01, 0.01])
    results = pd.read_csv(copy_run / "results.csv")
    row = results[(results.combination == "metadata+depth_rgb") & (results.fold == 1)].iloc[0]
    want = rescored_from_predictions(copy_run, "metadata+depth_rgb", 1)
    assert abs(row.qwk - want["qwk"]) < 1e-5 and abs(row.visit_qwk - want["visit_qwk"]) < 1e-5  # csv: 6 decimals


def test_from_predictions_rescores_a_changed_prediction_file(copy_run, capsys, cpu_strategy, restore_sigterm):
    """from_predictions must score the prediction files, not copy the job records' metrics: one prediction file
    is changed (and state.json made to vouch for it, as if the job had written it), then that job's results row
    must equal sklearn's score of the changed file, while it differed from the old row."""
    import json

    from tests.harness import FAST, rescored_from_predictions

    victim = copy_run / "predictions" / "metadata+depth_rgb" / "fold_0.csv"
    pred = pd.read_csv(victim)
    cols = ["p_I", "p_P", "p_R"]
    pred[cols] = pred[cols].to_numpy()[:, ::-1]  # every row's I and R probabilities swapped
    pred.to_csv(victim, index=False)
    state = json.loads((copy_run / "state.json").read_text())
    for job in state["jobs"].values():
        rec = job["files"].get("predictions/metadata+depth_rgb/fold_0.csv")
        if rec is not None:
            rec.update(size=victim.stat().st_size, sha256=_sha256(victim))
    (copy_run / "state.json").write_text(json.dumps(state))
    old = pd.read_csv(copy_run / "results.csv").set_index(["combination", "fold"])
    want = rescored_from_predictions(copy_run, "metadata+depth_rgb", 0)
    assert abs(old.loc[("metadata+depth_rgb", 0), "qwk"] - want["qwk"]) > 1e-3  # the change is visible

    rc = cli.main(["--mode", "search", "--config", DEMO, "--cv_folds", "2", "--run_name", copy_run.name,
                   "--set", f"runtime.logs_dir={copy_run.parent}", "--set", "data.demo=false", *FAST,
                   "--combinations", "metadata+depth_rgb", "--resume_mode", "from_predictions",
                   "--data_dir", str(Path(__import__("yaml").safe_load((copy_run / "config.yaml").read_text())
                                          ["data"]["data_dir"]))])
    assert rc == 0, capsys.readouterr().err[-3000:]
    new = pd.read_csv(copy_run / "results.csv").set_index(["combination", "fold"])
    row = new.loc[("metadata+depth_rgb", 0)]
    assert abs(row["qwk"] - want["qwk"]) < 1e-5 and abs(row["visit_qwk"] - want["visit_qwk"]) < 1e-5  # 6 decimals
    for key in new.index:  # every other row as before
        if key != ("metadata+depth_rgb", 0) and ":" not in key[0]:
            assert new.loc[key, "qwk"] == pytest.approx(old.loc[key, "qwk"], abs=1e-12), key


def test_from_models_rewrites_predictions_results_and_summary(copy_run, capsys, cpu_strategy, restore_sigterm):
    """--resume_mode from_models: predictions recomputed from the saved bundles, then results.csv and summary.csv
    written again from them (here both were deleted, and one prediction file with them)."""
    import yaml

    from tests.harness import FAST, rescored_from_predictions

    first_results = pd.read_csv(copy_run / "results.csv")
    first_summary = pd.read_csv(copy_run / "summary.csv")
    victim = copy_run / "predictions" / "metadata+depth_rgb" / "fold_0.csv"
    before = pd.read_csv(victim)
    for p in (copy_run / "results.csv", copy_run / "summary.csv", victim):
        p.unlink()
    data_dir = yaml.safe_load((copy_run / "config.yaml").read_text())["data"]["data_dir"]
    rc = cli.main(["--mode", "search", "--config", DEMO, "--data_dir", data_dir, "--cv_folds", "2",
                   "--run_name", copy_run.name, "--set", f"runtime.logs_dir={copy_run.parent}",
                   "--set", "data.demo=false", *FAST, "--combinations", "metadata+depth_rgb",
                   "--resume_mode", "from_models"])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    assert "epoch 1/" not in err  # nothing trained
    after = pd.read_csv(victim)
    pd.testing.assert_frame_equal(before, after, atol=1e-5)
    results, summary = pd.read_csv(copy_run / "results.csv"), pd.read_csv(copy_run / "summary.csv")
    assert sorted(zip(results.combination, results.fold)) == sorted(zip(first_results.combination, first_results.fold))
    for row in results[~results.combination.str.contains(":")].itertuples():
        want = rescored_from_predictions(copy_run, row.combination, row.fold)
        assert abs(row.qwk - want["qwk"]) < 1e-5 and abs(row.visit_qwk - want["visit_qwk"]) < 1e-5, row
    merged = summary.merge(first_summary, on="combination", suffixes=("", "_first"))
    assert len(merged) == len(first_summary)
    np.testing.assert_allclose(merged["qwk_mean"], merged["qwk_mean_first"], atol=1e-5)
    np.testing.assert_allclose(merged["visit_qwk_mean"], merged["visit_qwk_mean_first"], atol=1e-5)
