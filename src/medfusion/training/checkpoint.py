"""Per-stage checkpoints so an interrupted stage resumes from its last completed epoch.

A stage folder holds `progress-<epoch>.npz` + `progress.json` (after every epoch: model variables,
optimizer variables, the best-epoch weights, and the early-stopping state in the json, which names
its arrays file and is written last, so a kill mid-write leaves the previous pair) and, once the
stage has finished, `final.npz` + `done.json` (the weights the stage ended with and its
StageResult). Variables are stored in model order with their shapes checked on load, so a
checkpoint from a different architecture is refused instead of half-loaded. Model
variables include Keras' seed-generator states, so dropout continues the same random
stream after a resume.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from medfusion.runs import atomic_write_json, crash_point


class CheckpointError(RuntimeError):
    pass


def save_arrays(path: Path, groups: dict[str, list]) -> None:
    """Write lists of arrays (one list per group name) atomically to an .npz file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {}
    for group, arrays in groups.items():
        for i, a in enumerate(arrays):
            payload[f"{group}__{i:05d}"] = np.asarray(a)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_arrays(path: Path) -> dict[str, list]:
    with np.load(path) as data:
        groups: dict[str, list] = {}
        for key in sorted(data.files):
            group, _, _ = key.rpartition("__")
            groups.setdefault(group, []).append(data[key])
    return groups


def assign(variables, arrays, what: str) -> None:
    if len(variables) != len(arrays):
        raise CheckpointError(f"{what}: checkpoint holds {len(arrays)} tensors, the model has {len(variables)}")
    for v, a in zip(variables, arrays):
        if tuple(v.shape) != tuple(a.shape):
            raise CheckpointError(f"{what}: tensor {v.path} has shape {tuple(v.shape)}, checkpoint {a.shape}")
    for v, a in zip(variables, arrays):
        v.assign(a)


def values(variables) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in variables]


class StageCheckpoint:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    # -- finished stage
    def completed(self) -> dict | None:
        done, final = self.folder / "done.json", self.folder / "final.npz"
        if done.is_file() and final.is_file():
            return json.loads(done.read_text())
        return None

    def save_final(self, model, result: dict) -> None:
        save_arrays(self.folder / "final.npz", {"model": values(model.variables)})
        atomic_write_json(self.folder / "done.json", result)  # written last: it vouches for final.npz
        for path in [self.folder / "progress.json", *self.folder.glob("progress*.npz")]:
            path.unlink(missing_ok=True)

    def load_final(self, model) -> None:
        assign(model.variables, load_arrays(self.folder / "final.npz")["model"], f"checkpoint {self.folder}")

    # -- stage in progress
    def _arrays_file(self, info: dict) -> Path:
        return self.folder / info.get("arrays", "progress.npz")  # "progress.npz": written before the pairing

    def progress(self) -> dict | None:
        meta = self.folder / "progress.json"
        if not meta.is_file():
            return None
        info = json.loads(meta.read_text())
        return info if self._arrays_file(info).is_file() else None

    def save_progress(self, model, info: dict, best_weights: list | None) -> None:
        """Arrays first, under a name of their own; then progress.json, which names them, by rename.

        A kill between the two leaves the previous pair intact (the json still names the previous
        arrays), so a resume never pairs one epoch's weights with another epoch's counters.
        """
        groups = {"model": values(model.variables), "optimizer": values(model.optimizer.variables)}
        if best_weights is not None:
            groups["best"] = best_weights
        name = f"progress-{int(info['epoch']):04d}.npz"
        save_arrays(self.folder / name, groups)
        crash_point("checkpoint_write")
        atomic_write_json(self.folder / "progress.json", {**info, "arrays": name})
        for old in self.folder.glob("progress*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def restore_progress(self, model) -> list | None:
        """Load model and optimizer variables; returns the saved best-epoch weights."""
        groups = load_arrays(self._arrays_file(json.loads((self.folder / "progress.json").read_text())))
        model.optimizer.build(model.trainable_variables)
        assign(model.variables, groups["model"], f"checkpoint {self.folder} (model)")
        assign(model.optimizer.variables, groups["optimizer"], f"checkpoint {self.folder} (optimizer)")
        return groups.get("best")
