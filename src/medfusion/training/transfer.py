"""Strict weight transfer from a pre-trained image model into a fusion model.

Layers are matched by name. Every weight-carrying source layer except the excluded ones
(`output`, whose classes and role differ) must exist in the target with identical
shapes, or the transfer aborts; after copying, the values are read back and compared,
so "loaded successfully but unused" cannot happen silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np


class TransferError(RuntimeError):
    pass


@dataclass
class TransferReport:
    source: str
    target: str
    matched: list = field(default_factory=list)  # [(layer, n_tensors)]
    missing: list = field(default_factory=list)  # source layers absent from the target
    shape_mismatch: list = field(default_factory=list)  # [(layer, tensor, source_shape, target_shape)]
    excluded: list = field(default_factory=list)
    verified: bool = False

    @property
    def n_tensors(self) -> int:
        return sum(n for _, n in self.matched)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.shape_mismatch and bool(self.matched)

    def summary(self) -> str:
        head = (f"transfer {self.source} -> {self.target}: {len(self.matched)} layers / {self.n_tensors} tensors matched, "
                f"{len(self.missing)} missing, {len(self.shape_mismatch)} shape mismatches, excluded {self.excluded}, "
                f"values verified: {self.verified}")
        lines = [head]
        lines += [f"  missing in target: {name}" for name in self.missing]
        lines += [f"  shape mismatch: {l}/{t}: source {s} vs target {d}" for l, t, s, d in self.shape_mismatch]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "matched_layers": len(self.matched),
                "matched_tensors": self.n_tensors, "missing": list(self.missing),
                "shape_mismatch": [[l, t, list(s), list(d)] for l, t, s, d in self.shape_mismatch],
                "excluded": list(self.excluded), "verified": self.verified}


def transfer_weights(source: keras.Model, target: keras.Model, exclude=("output",)) -> TransferReport:
    report = TransferReport(source.name, target.name)
    target_layers = {layer.name: layer for layer in target.layers}
    plan = []
    for layer in source.layers:
        if not layer.weights:
            continue
        if layer.name in exclude:
            report.excluded.append(layer.name)
            continue
        dst = target_layers.get(layer.name)
        if dst is None:
            report.missing.append(layer.name)
            continue
        src_w, dst_w = layer.weights, dst.weights
        if len(src_w) != len(dst_w):
            report.shape_mismatch.append((layer.name, "<count>", (len(src_w),), (len(dst_w),)))
            continue
        bad = [(layer.name, s.path, tuple(s.shape), tuple(d.shape)) for s, d in zip(src_w, dst_w)
               if tuple(s.shape) != tuple(d.shape)]
        if bad:
            report.shape_mismatch.extend(bad)
            continue
        plan.append((layer, dst))
        report.matched.append((layer.name, len(src_w)))
    if not report.ok:
        if not report.matched and not report.missing and not report.shape_mismatch:
            raise TransferError(f"nothing to transfer from {source.name} to {target.name}: no weight-carrying layers matched")
        raise TransferError("strict transfer aborted\n" + report.summary())
    for src, dst in plan:
        dst.set_weights(src.get_weights())
    for src, dst in plan:  # read back: the values must have arrived
        for s, d in zip(src.get_weights(), dst.get_weights()):
            if not np.array_equal(s, d):
                raise TransferError(f"transfer {source.name} -> {target.name}: layer {src.name} values did not arrive")
    report.verified = True
    return report
