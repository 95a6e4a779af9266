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
    }
    for what, k in changed.items():
        assert k != base, f"the pre-training key ignores the {what}"
    assert len(set(changed.values())) == len(changed)
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


def test_single_without_a_gpu_warns_and_runs_on_the_cpu(caplog):
    import logging

    from medfusion.config import RuntimeConfig
    from medfusion.training.devices import configure_strategy

    _skip_with_a_gpu()
    with caplog.at_level(logging.WARNING, logger="medfusion"):
        strategy = configure_strategy(RuntimeConfig(device_mode="single"))
    assert strategy.num_replicas_in_sync == 1 and "CPU" in strategy.extended.worker_devices[0].upper()
    assert "--device_mode single: no GPU visible, running on the CPU" in caplog.text


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
