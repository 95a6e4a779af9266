"""Training throughput: one stage through medfusion's pipeline (run_stage) vs a bare `model.fit`.

    python bench/throughput.py                       # CPU set: tiny@32, efficientnet_b3@64
    python bench/throughput.py --gpu                 # + efficientnet_b3@224 in each precision, XLA on/off
    python bench/throughput.py --cases tiny@32 --stage1

Both sides train the same fusion model (metadata + one image branch, backbone unfrozen with
BatchNorm frozen, as in Stage 2; weights=None, nothing downloaded) on the same in-memory
tensors with the same optimizer, loss and global batch. run_stage adds what a search runs:
the stateless shuffled/flipped stream, the kappa metric, a validation pass per epoch (on
VAL_FRACTION of the samples) and a checkpoint per epoch. Samples/s counts training samples of
the steady epochs (the first, which traces, is left out); ratio = bare / pipeline samples/s
(goal <= 1.10); the no-ckpt columns are run_stage without a checkpoint, to show what the
per-epoch checkpoint costs. `--stage1` adds Stage 1 (frozen backbone, flips) with the feature cache on and off.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

VAL_FRACTION = 0.125
CPU_CASES = ("tiny@32", "efficientnet_b3@64")
GPU_CASE = "efficientnet_b3@224"


class EpochTimes(logging.Handler):
    """Times of run_stage's per-epoch log lines ("[stage] epoch k/E ...")."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.times: list[float] = []

    def emit(self, record):
        if "] epoch %d/%d" in str(record.msg):
            self.times.append(record.created)


def _steady(times: list[float], start: float) -> float:
    """Median epoch duration, the first (tracing) epoch left out."""
    deltas = np.diff([start, *times]).tolist()
    return statistics.median(deltas[1:] if len(deltas) > 1 else deltas)


def _data(n: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = {"depth_rgb": rng.integers(0, 255, (n, size, size, 3)).astype(np.uint8),
         "metadata": rng.dirichlet([1, 1, 1], n).astype(np.float32)}
    return x, y


def _model(backbone: str, size: int, strategy):
    import keras

    from medfusion.config import ModelConfig
    from medfusion.models.fusion import build_fusion_model

    keras.utils.set_random_seed(0)
    with strategy.scope():
        return build_fusion_model("metadata+depth_rgb", ModelConfig(backbone=backbone, weights="none",
                                                                    head_units=128, dropout=0.3), size)


def pipeline_epoch(backbone, size, n, batch, epochs, strategy, jit, frozen=False, cache=True, save=True,
                   rows=True) -> dict:
    """Steady epoch time of run_stage (with a checkpoint per epoch) and its training samples/s."""
    from medfusion.config import StageConfig
    from medfusion.models.losses import focal_alpha
    from medfusion.training.checkpoint import StageCheckpoint
    from medfusion.training.stages import run_stage, set_backbones_trainable

    from medfusion.data.rows import Rows

    x, y = _data(n, size)
    n_val = max(batch, int(n * VAL_FRACTION))
    xv, yv = _data(n_val, size, seed=1)
    if rows:  # as a search passes them: rows of the run's arrays, gathered batch by batch (data/rows.py)
        x["depth_rgb"], xv["depth_rgb"] = Rows.all_of(x["depth_rgb"]), Rows.all_of(xv["depth_rgb"])
    model = _model(backbone, size, strategy)
    set_backbones_trainable(model, not frozen)
    handler = EpochTimes()
    logging.getLogger("medfusion").addHandler(handler)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            r = run_stage("bench", model, strategy, (x, y), (xv, yv), StageConfig(epochs=epochs, lr=1e-4, patience=99),
                          focal_alpha(y), 2.0, batch, 0, ["flip"], checkpoint=StageCheckpoint(Path(tmp) / "s") if save else None,
                          jit_compile=jit, use_feature_cache=cache)
            total = time.time() - t0
    finally:
        logging.getLogger("medfusion").removeHandler(handler)
    epoch = _steady(handler.times, t0)  # the first epoch (traces; holds the cache's time) is left out
    samples = r.steps_per_epoch * r.batch
    return {"epoch_s": epoch, "samples_per_s": samples / epoch, "stage_s": total, "cache": r.feature_cache,
            "checkpoint_bytes_per_save": (r.checkpoint or {}).get("bytes_per_save")}


def bare_epoch(backbone, size, n, batch, epochs, strategy, jit) -> dict:
    """Steady epoch time of a bare model.fit on the same tensors, model, optimizer, loss and batch."""
    import keras

    from medfusion.data.pipeline import one_hot
    from medfusion.models.losses import focal_alpha, focal_loss
    from medfusion.training.stages import set_backbones_trainable

    x, y = _data(n, size)
    x = {k: v.astype(np.float32) for k, v in x.items()}
    model = _model(backbone, size, strategy)
    set_backbones_trainable(model, True)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=focal_loss(focal_alpha(y), 2.0), jit_compile=jit)
    times = []
    cb = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: times.append(time.time()))
    global_batch = batch * strategy.num_replicas_in_sync
    t0 = time.time()
    model.fit(x, one_hot(y), batch_size=global_batch, epochs=epochs, shuffle=True, verbose=0, callbacks=[cb])
    epoch = _steady(times, t0)
    return {"epoch_s": epoch, "samples_per_s": (n // global_batch * global_batch) / epoch}


def _interleaved(repeats: int, runs: tuple) -> list[dict]:
    """Each run `repeats` times in turn (so a slow spell of the machine hits every side); per run, the
    result of median samples/s."""
    results = [[] for _ in runs]
    for _ in range(max(1, repeats)):
        for out, run in zip(results, runs):
            out.append(run())
    return [sorted(r, key=lambda d: d["samples_per_s"])[len(r) // 2] for r in results]


def _case(text: str) -> tuple[str, int]:
    name, _, size = text.partition("@")
    return name, int(size)


def _sizes(backbone: str, size: int) -> tuple[int, int, int]:
    """(samples, per-replica batch, epochs): enough steady epochs to time, small enough for 2 CPU cores."""
    if backbone == "tiny":
        return 2048, 32, 5
    return (256, 16, 4) if size <= 64 else (1024, 32, 4)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CPU_CASES), help="comma-separated backbone@size")
    p.add_argument("--gpu", action="store_true", help=f"add {GPU_CASE} in each precision, XLA on and off")
    p.add_argument("--stage1", action="store_true", help="also Stage 1 with the feature cache on and off")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of each side, interleaved; the medians are reported (one run's ratio varies by +-0.15)")
    p.add_argument("--arrays", action="store_true",
                   help="feed the pipeline whole arrays (one constant per stream) instead of Rows (what the pipeline was fed before Rows)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("medfusion").setLevel(logging.INFO)
    logging.getLogger("medfusion").propagate = False
    import tensorflow as tf

    from medfusion.training import precision

    strategy = tf.distribute.get_strategy()
    runs = [(c, "float32", False) for c in args.cases.split(",") if c]
    if args.gpu:
        if not tf.config.list_physical_devices("GPU"):
            raise SystemExit("--gpu: no GPU visible to TensorFlow")
        runs += [(GPU_CASE, prec, jit) for prec in ("float32", "mixed_float16", "mixed_bfloat16") for jit in (False, True)]
    print(f"{'case':<22}{'precision':<16}{'xla':<5}{'pipeline/s':>11}{'bare/s':>9}{'ratio':>7}{'ckpt MB':>9}"
          f"{'no-ckpt/s':>11}{'ratio':>7}", flush=True)
    for case, prec, jit in runs:
        backbone, size = _case(case)
        n, batch, epochs = _sizes(backbone, size)
        precision.configure(SimpleNamespace(precision=prec, jit_compile=str(jit)))
        pipe, bare, lean = _interleaved(args.repeats, (
            lambda: pipeline_epoch(backbone, size, n, batch, epochs, strategy, jit, rows=not args.arrays),
            lambda: bare_epoch(backbone, size, n, batch, epochs, strategy, jit),
            lambda: pipeline_epoch(backbone, size, n, batch, epochs, strategy, jit, save=False, rows=not args.arrays)))
        ratio = bare["samples_per_s"] / pipe["samples_per_s"]
        print(f"{case:<22}{prec:<16}{'on' if jit else 'off':<5}{pipe['samples_per_s']:>11.1f}"
              f"{bare['samples_per_s']:>9.1f}{ratio:>7.2f}{(pipe['checkpoint_bytes_per_save'] or 0) / 1e6:>9.2f}"
              f"{lean['samples_per_s']:>11.1f}{bare['samples_per_s'] / lean['samples_per_s']:>7.2f}",
              flush=True)
        if args.stage1:
            for cache in (False, True):
                s1 = pipeline_epoch(backbone, size, n, batch, epochs, strategy, jit, frozen=True, cache=cache)
                print(f"  stage 1 cache {'on ' if cache else 'off'}: epoch {s1['epoch_s']:.2f}s, stage {s1['stage_s']:.1f}s "
                      f"({epochs} epochs; cache {s1['cache'].get('seconds', 0)}s)", flush=True)
    precision.configure(SimpleNamespace(precision="float32", jit_compile="false"))


if __name__ == "__main__":
    main()
