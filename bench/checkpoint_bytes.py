"""Bytes of one per-epoch stage checkpoint, before (every variable) and after (lean), no training.

    python bench/checkpoint_bytes.py [--backbone efficientnet_b3] [--size 224]

Builds the three-image-branch fusion model (metadata+depth_rgb+depth_map+thermal_map, weights=None),
freezes it as Stage 1 and as Stage 2 do, builds Adam's slots, and writes one checkpoint of each kind:
"before" = what medfusion wrote every epoch until lean checkpoints (all model variables, all
optimizer variables, best-epoch copies of all weights); "lean" = StageCheckpoint.save_progress
(variables of layers that are not frozen, optimizer, best-epoch values of what trains), and a
second lean one after an epoch that did not improve (the best-epoch file is not rewritten).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_b3")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    import keras

    from medfusion.config import ModelConfig
    from medfusion.models.fusion import build_fusion_model
    from medfusion.training.checkpoint import StageCheckpoint, changing_weights, save_arrays, values
    from medfusion.training.stages import set_backbones_trainable

    model = build_fusion_model("metadata+depth_rgb+depth_map+thermal_map",
                               ModelConfig(backbone=args.backbone, weights="none"), args.size)
    print(f"{args.backbone}@{args.size}, three image branches: {sum(v.numpy().size for v in model.variables):,} "
          "variables' elements in the model")
    print(f"{'stage':<8}{'before MB':>11}{'lean MB':>10}{'ratio':>8}{'lean, no new best MB':>22}")
    for stage, trainable in (("stage1", False), ("stage2", True)):
        set_backbones_trainable(model, trainable)
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        with tempfile.TemporaryDirectory() as tmp:
            before = save_arrays(Path(tmp) / "before.npz", {"model": values(model.variables),
                                                             "optimizer": values(model.optimizer.variables),
                                                             "best": model.get_weights()})
            (Path(tmp) / "before.npz").unlink()
            ckpt, best = StageCheckpoint(Path(tmp) / stage), [v.numpy() for v in changing_weights(model)]
            state = {"best": 0.5, "best_epoch": 1, "wait": 0, "stopped_early": False}
            lean = ckpt.save_progress(model, {"epoch": 1, "best": state}, best)
            same_best = ckpt.save_progress(model, {"epoch": 2, "best": state}, best)  # epoch 2 did not improve
        print(f"{stage:<8}{before / 1e6:>11.1f}{lean / 1e6:>10.1f}{before / lean:>8.1f}{same_best / 1e6:>22.1f}",
              flush=True)


if __name__ == "__main__":
    main()
