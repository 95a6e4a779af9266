"""Peak RSS that one fusion job's training adds on top of the crops: Stage 1 and Stage 2 of a real model.

    python bench/stage_memory.py [--backbone efficientnet_b3] [--size 224] [--samples 48]

bench/peak_rss.sh measures a whole search at the real size with the tiny backbone (a search with
EfficientNetB3 at 224 px takes hours on 2 CPU cores). This measures what the backbone adds: the
three-image-branch fusion model (metadata+depth_rgb+depth_map+thermal_map, weights=None) trained one
epoch of Stage 1 (frozen, feature cache on) and one of Stage 2 (unfrozen) through run_stage with
a checkpoint, on `--samples` synthetic crops held as one array per modality and passed as Rows, as
a search does. Prints the peak RSS after start-up, after building the model, and after each stage.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

MODALITIES = ("depth_rgb", "depth_map", "thermal_map")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_b3")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--samples", type=int, default=48, help="training samples (a quarter as many validate)")
    p.add_argument("--batch", type=int, default=16, help="per-replica batch (the default config's)")
    args = p.parse_args(argv)
    import keras
    import tensorflow as tf

    from medfusion.config import ModelConfig, StageConfig
    from medfusion.data.rows import Rows
    from medfusion.models.fusion import build_fusion_model
    from medfusion.models.losses import focal_alpha
    from medfusion.training.checkpoint import StageCheckpoint
    from medfusion.training.stages import run_stage, set_backbones_trainable

    print(f"start-up (TensorFlow imported): peak RSS {peak_gb():.2f} GB", flush=True)
    n, n_val, rng = args.samples, max(args.batch, args.samples // 4), np.random.default_rng(0)
    crops = {m: rng.integers(0, 255, (n + n_val, args.size, args.size, 3), dtype=np.uint8) for m in MODALITIES}
    tr, va = np.arange(n), np.arange(n, n + n_val)
    y = np.arange(n + n_val) % 3
    meta = rng.dirichlet([1, 1, 1], n + n_val).astype(np.float32)
    x = lambda idx: {**{m: Rows(crops[m], idx) for m in MODALITIES}, "metadata": meta[idx]}  # noqa: E731
    crop_gb = sum(c.nbytes for c in crops.values()) / 1e9
    print(f"crops: {n + n_val} samples x {len(MODALITIES)} modalities at {args.size} px = {crop_gb:.2f} GB; "
          f"peak RSS {peak_gb():.2f} GB", flush=True)
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = build_fusion_model("metadata+" + "+".join(MODALITIES), ModelConfig(backbone=args.backbone, weights="none"),
                               args.size)
    print(f"model built ({args.backbone}@{args.size}, three image branches): peak RSS {peak_gb():.2f} GB", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for stage, trainable in (("stage1", False), ("stage2", True)):
            set_backbones_trainable(model, trainable)
            t0 = time.time()
            r = run_stage(stage, model, strategy, (x(tr), y[tr]), (x(va), y[va]), StageConfig(epochs=1, lr=1e-4, patience=9),
                          focal_alpha(y[tr]), 2.0, args.batch, 0, ["flip"], checkpoint=StageCheckpoint(Path(tmp) / stage))
            print(f"{stage} ({'unfrozen' if trainable else 'frozen'}; {r.steps_per_epoch} steps of {r.batch}, "
                  f"feature cache {'on' if (r.feature_cache or {}).get('used') else 'off'}): {time.time() - t0:.0f} s, "
                  f"peak RSS {peak_gb():.2f} GB", flush=True)


if __name__ == "__main__":
    main()
