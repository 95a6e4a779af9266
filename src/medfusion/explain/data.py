"""A finished run read back for explaining: its config, dataset, folds, crops and forest inputs per fold.

The dataset is loaded as `--mode predict` loads it and cut to the samples of `folds.json`, in
load order, which is the search's order (its subsampling and held-out split only drop rows), so
the forest's saved probabilities (`forest/fold_<k>.npz`: train rows, then validation rows, in
that order) line up with the fold's samples; a mismatch stops with the file's name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("medfusion")


@dataclass
class ExplainRun:
    run_dir: Path
    cfg: object
    manifest: object
    assignment: dict
    crops: dict = field(default_factory=dict)

    def fold(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        from medfusion.data.folds import fold_indices

        return fold_indices(self.manifest, self.assignment, k)

    def forest_inputs(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(training rows, validation rows) of the forest probabilities fold k's models were given."""
        from medfusion.runs import read_run_arrays
        from medfusion.training.checkpoint import load_arrays

        path = self.run_dir / "forest" / f"fold_{k}.npz"
        arrays = read_run_arrays(path, load_arrays)
        tr, va = self.fold(k)
        p_tr, p_va = arrays["train"][0], arrays["val"][0]
        if len(p_tr) != len(tr) or len(p_va) != len(va):
            raise ValueError(f"{path} holds {len(p_tr)} training / {len(p_va)} validation rows, folds.json gives "
                             f"fold {k} {len(tr)} / {len(va)}: the dataset changed since the run")
        return p_tr.astype(np.float32), p_va.astype(np.float32)

    def load_crops(self, modalities) -> dict:
        from medfusion.predict import load_all_crops

        missing = [m for m in modalities if m not in self.crops]
        self.crops.update(load_all_crops(self.cfg, self.manifest, missing))
        return self.crops

    def inputs(self, k: int, combination: str, idx: np.ndarray, which: str) -> dict:
        """The model inputs of samples `idx` (positions in the manifest) of fold k; which: train | val."""
        from medfusion.constants import image_modalities_of

        mods = image_modalities_of(combination)
        crops = self.load_crops(mods)
        x = {m: crops[m][idx].astype(np.float32) for m in mods}
        if "metadata" in combination.split("+"):
            rows = self.fold(k)[0 if which == "train" else 1]
            p = dict(zip(rows, self.forest_inputs(k)[0 if which == "train" else 1]))
            x["metadata"] = np.stack([p[i] for i in idx]).astype(np.float32)
        return x


def open_run(run_dir: Path) -> ExplainRun:
    """The run's config (as written), its dataset cut to folds.json, and the fold assignment."""
    from medfusion.config import load_config
    from medfusion.data.dfu import load_dfu
    from medfusion.runs import read_run_json
    from medfusion.search import resolve_combinations

    run_dir = Path(run_dir)
    for name in ("config.yaml", "folds.json", "summary.csv"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"run folder {str(run_dir)!r} has no {name}: --mode explain needs a finished "
                                    "search (python main.py --mode search --run_name NAME finishes it)")
    cfg = load_config(run_dir / "config.yaml", {"runtime.logs_dir": str(run_dir.parent),
                                                "runtime.run_name": run_dir.name, "search.folds_file": ""})
    assignment = read_run_json(run_dir / "folds.json")
    modalities = sorted({m for c in resolve_combinations(cfg) for m in c.split("+")})
    manifest = load_dfu(Path(cfg.data.data_dir), cfg.data, log, modalities=modalities)
    ids = manifest.samples["sample_id"]
    unknown = sorted(set(assignment) - set(ids))
    if unknown:
        raise ValueError(f"{run_dir / 'folds.json'} names {len(unknown)} sample(s) the dataset {cfg.data.data_dir!r} "
                         f"does not have (e.g. {unknown[:3]}): the data changed since the run")
    manifest = manifest.subset(ids.isin(set(assignment)).to_numpy())
    return ExplainRun(run_dir, cfg, manifest, assignment)
