"""Per-stage checkpoints so an interrupted stage resumes from its last completed epoch.

A stage folder holds `progress-<epoch>.npz`, `best-<epoch>.npz` + `progress.json` (every
`train.checkpoint_every` epochs: the model variables that change in this stage, optimizer
variables; the best-epoch values of what trains, rewritten only when the best epoch changes;
and the early-stopping state in the json, which names both arrays files and is written last, so a kill mid-write leaves the previous pair) and, once the stage has
finished, `final.npz` + `done.json` (every weight the stage ended with and its StageResult).

Lean: a variable of a frozen layer (a Stage 1 backbone, BatchNorm in Stage 2) cannot change
during the stage, so it is not written every epoch; a resume rebuilds it as the interrupted
attempt did (transfer, the previous stage's final.npz) and `frozen_fingerprint` (stored in the
json) refuses a resume whose frozen variables differ. Variables are stored in model order with
their shapes checked on load, so a checkpoint from a different architecture is refused instead
of half-loaded. They include Keras' seed-generator states, so dropout continues the same random
stream after a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from medfusion.runs import atomic_write_json
from medfusion.stopping import crash_point


class CheckpointError(RuntimeError):
    pass


LEAN_FORMAT = 2  # progress.json "format": 2 = lean (only what changes); absent = every variable (older medfusion)


def save_arrays(path: Path, groups: dict[str, list]) -> int:
    """Write lists of arrays (one list per group name) atomically to an .npz file; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {}
    for group, arrays in groups.items():
        for i, a in enumerate(arrays):
            payload[f"{group}__{i:05d}"] = np.asarray(a)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **payload)
        size = os.path.getsize(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return size


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


def _frozen_ids(model) -> set[int]:
    """ids of the variables owned by frozen layers (a frozen layer's sublayers are frozen too in Keras 3)."""
    return {id(v) for layer in model._flatten_layers(include_self=False) if not layer.trainable
            for v in layer.variables}


def changing_variables(model) -> list:
    """The model's variables a stage can change: all but frozen layers' (seed-generator states included)."""
    frozen = _frozen_ids(model)
    return [v for v in model.variables if id(v) not in frozen]


def changing_weights(model) -> list:
    """As changing_variables, over model.weights (no seed states): what best-epoch restore keeps and sets."""
    frozen = _frozen_ids(model)
    return [v for v in model.weights if id(v) not in frozen]


def frozen_fingerprint(model) -> str:
    """SHA-256 over the variables a lean checkpoint leaves out, so a resume on other frozen values is refused."""
    frozen = _frozen_ids(model)
    h = hashlib.sha256()
    for v in model.variables:
        if id(v) in frozen:
            h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()[:16]


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
        for path in [self.folder / "progress.json", *self.folder.glob("progress*.npz"), *self.folder.glob("best-*.npz")]:
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
        best = info.get("best_arrays")
        ok = self._arrays_file(info).is_file() and (not best or (self.folder / best).is_file())
        return info if ok else None

    def save_progress(self, model, info: dict, best_weights: list | None, trained=None) -> int:
        """Arrays first, under names of their own; then progress.json, which names them, by rename.

        `progress-<epoch>.npz` holds model's changing variables and the optimizer of `trained` (the
        model fit is training: `model` itself or the heads of a feature-cached Stage 1); the best-epoch
        values go to `best-<best epoch>.npz`, written only when the best epoch changed (most epochs of
        a long stage do not improve, and in Stage 2 they are a third of the bytes). A kill before the
        json leaves the previous set intact (the json still names it), so a resume never pairs one
        epoch's weights with another epoch's counters. Returns the bytes written.
        """
        trained = model if trained is None else trained
        previous = self.progress() or {}
        name = f"progress-{int(info['epoch']):04d}.npz"
        size = save_arrays(self.folder / name, {"model": values(changing_variables(model)),
                                                "optimizer": values(trained.optimizer.variables)})
        best_name = previous.get("best_arrays")
        if best_weights is not None and best_name != f"best-{int(info['best']['best_epoch']):04d}.npz":
            best_name = f"best-{int(info['best']['best_epoch']):04d}.npz"
            size += save_arrays(self.folder / best_name, {"best": best_weights})
        crash_point("checkpoint_write")
        atomic_write_json(self.folder / "progress.json", {**info, "arrays": name, "best_arrays": best_name,
                                                          "format": LEAN_FORMAT})
        for old in [*self.folder.glob("progress*.npz"), *self.folder.glob("best-*.npz")]:
            if old.name not in (name, best_name):
                old.unlink(missing_ok=True)
        return size

    def restore_progress(self, model, trained=None, fingerprint: str | None = None) -> list | None:
        """Load the changing variables and `trained`'s optimizer; returns the saved best-epoch values."""
        trained = model if trained is None else trained
        info = json.loads((self.folder / "progress.json").read_text())
        if info.get("format") != LEAN_FORMAT:
            raise CheckpointError(f"checkpoint {self.folder} was written by an older medfusion (every variable, every "
                                  "epoch); move the folder aside to train the stage again")
        if fingerprint is not None and info.get("frozen_fingerprint") not in (None, fingerprint):
            raise CheckpointError(f"checkpoint {self.folder}: the frozen weights it was trained on "
                                  f"({info['frozen_fingerprint']}) differ from this model's ({fingerprint}); "
                                  "move the folder aside to train the stage again")
        groups = load_arrays(self._arrays_file(info))
        trained.optimizer.build(trained.trainable_variables)
        assign(changing_variables(model), groups["model"], f"checkpoint {self.folder} (model)")
        assign(trained.optimizer.variables, groups["optimizer"], f"checkpoint {self.folder} (optimizer)")
        if info.get("best_arrays"):
            return load_arrays(self.folder / info["best_arrays"])["best"]
        return groups.get("best")
