"""Lean checkpoints: only what changes is written, and a SIGKILLed stage resumes bit for bit (deterministic)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medfusion.training.checkpoint import load_arrays
from tests.harness import DETERMINISTIC_ENV

SCRIPT = Path(__file__).with_name("lean_resume_script.py")
ROOT = Path(__file__).resolve().parents[2]
TINY_CONV3_KERNEL = (3, 3, 32, 64)  # the tiny backbone's largest tensor (models/backbones.py)


def _run(folder: Path, out: Path, crash: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **DETERMINISTIC_ENV}
    env.pop("MEDFUSION_CRASH_AT", None)
    if crash:
        env["MEDFUSION_CRASH_AT"] = crash
    return subprocess.run([sys.executable, str(SCRIPT), str(folder), str(out)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)


def _load(out: Path):
    with np.load(out) as z:
        results = json.loads(str(z["results"]))
        weights = [z[f"arr_{i}"] for i in range(len(z.files) - 1)]
    return weights, results


@pytest.mark.slow
def test_killed_stages_resume_bit_exact_from_lean_checkpoints(tmp_path):
    ref = _run(tmp_path / "a", tmp_path / "a.npz")
    assert ref.returncode == 0, ref.stderr[-3000:]
    # killed after Stage 1's 2nd epoch (checkpointed), then after Stage 2's 3rd (last checkpoint: epoch 2)
    killed = _run(tmp_path / "b", tmp_path / "b.npz", crash="epoch_stage1:2")
    assert killed.returncode == -9, killed.stderr[-3000:]
    info = json.loads((tmp_path / "b" / "stage1" / "progress.json").read_text())
    progress = load_arrays(tmp_path / "b" / "stage1" / "progress-0002.npz")
    best = load_arrays(tmp_path / "b" / "stage1" / info["best_arrays"])["best"]
    assert info["best_arrays"] == f"best-{info['best']['best_epoch']:04d}.npz"
    shapes = [a.shape for a in progress["model"]] + [a.shape for a in best]
    assert TINY_CONV3_KERNEL not in shapes  # the frozen backbone is not written every epoch
    assert json.loads((tmp_path / "b" / "stage1" / "progress.json").read_text())["feature_cache"] is True
    killed = _run(tmp_path / "b", tmp_path / "b.npz", crash="epoch_stage2:3")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert json.loads((tmp_path / "b" / "stage2" / "progress.json").read_text())["epoch"] == 2  # every 2 epochs
    stage2 = load_arrays(tmp_path / "b" / "stage2" / "progress-0002.npz")
    assert TINY_CONV3_KERNEL in [a.shape for a in stage2["model"]]  # Stage 2 trains the backbone: it is written
    resumed = _run(tmp_path / "b", tmp_path / "b.npz")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 2" in resumed.stderr

    (wa, ra), (wb, rb) = _load(tmp_path / "a.npz"), _load(tmp_path / "b.npz")
    assert len(wa) == len(wb)
    for a, b in zip(wa, wb):
        np.testing.assert_array_equal(a, b)
    for sa, sb in zip(ra, rb):
        assert sa["history"] == sb["history"] and sa["best_epoch"] == sb["best_epoch"]
    s1, s2 = ra
    assert s1["feature_cache"]["used"] and not s2["feature_cache"]["used"]
    assert s1["checkpoint"]["saves"] == 4 and s2["checkpoint"]["saves"] == 2
    assert 0 < s1["checkpoint"]["bytes_per_save"] < s2["checkpoint"]["bytes_per_save"]


def test_best_values_are_rewritten_only_when_the_best_epoch_changes(tmp_path, tiny_cfg):
    import keras

    from medfusion.models.fusion import build_fusion_model
    from medfusion.training.checkpoint import StageCheckpoint, changing_weights

    model = build_fusion_model("metadata+depth_rgb", tiny_cfg, 16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    ckpt = StageCheckpoint(tmp_path / "s")
    best = [v.numpy() for v in changing_weights(model)]
    state = lambda e: {"best": {"best": 0.5, "best_epoch": e, "wait": 0, "stopped_early": False}}  # noqa: E731
    first = ckpt.save_progress(model, {"epoch": 1, **state(1)}, best)
    second = ckpt.save_progress(model, {"epoch": 2, **state(1)}, best)  # no improvement: best-0001 kept
    best_bytes = (tmp_path / "s" / "best-0001.npz").stat().st_size
    assert first - second == best_bytes > 0
    third = ckpt.save_progress(model, {"epoch": 3, **state(3)}, best)
    assert third == first
    assert sorted(p.name for p in (tmp_path / "s").glob("*.npz")) == ["best-0003.npz", "progress-0003.npz"]
    assert ckpt.progress()["best_arrays"] == "best-0003.npz"
