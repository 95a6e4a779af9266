"""Model bundles: what one finished job needs to predict a new patient, in one folder.

    bundles/<combination>/fold_<k>/
      model.keras      the fusion model (absent for metadata-only); keras.saving.load_model reads it
      metadata.joblib  the fitted metadata pipeline (preprocessing + forest), when the combination has metadata
      bundle.json      medfusion version, classes, combination, crop and map settings, the config that made
                       it, the decision rule, the fusion weight, and the sha256 of each file

A bundle made by another medfusion version, or by a config whose result-affecting keys differ
from the run's, is refused with the reason: its numbers would not mean what the run says.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfusion import __version__
from medfusion.config import NON_RESULT_KEYS, config_to_dict, flatten
from medfusion.constants import CLASSES
from medfusion.runs import atomic_write_json, file_record

BUNDLE_FORMAT = 1
MODEL_FILE, FOREST_FILE, INFO_FILE = "model.keras", "metadata.joblib", "bundle.json"
# where the data lives, how verbose a run is: not part of what a bundle computes
_IGNORED = NON_RESULT_KEYS | {"data.data_dir", "data.demo", "data.demo_seed", "data.demo_patients",
                              "search.folds_file", "search.test_fraction", "search.test_patients_file"}


class BundleError(ValueError):
    """A bundle that cannot be used; the message names it and why."""


def bundle_dir(run_dir: Path, combination: str, fold: int) -> Path:
    return Path(run_dir) / "bundles" / combination / f"fold_{fold}"


def config_slice(cfg) -> dict:
    """The flattened, result-affecting config keys a bundle records and is checked against."""
    return {k: v for k, v in flatten(config_to_dict(cfg)).items() if k not in _IGNORED}


def save_bundle(run_dir: Path, combination: str, fold: int, cfg, model=None, forest_file: Path | None = None,
                **info) -> list[str]:
    """Write one job's bundle; returns its files relative to the run folder (for state.json)."""
    folder = bundle_dir(run_dir, combination, fold)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if model is not None:
        tmp = folder / f".{MODEL_FILE}.tmp.keras"
        _clean_copy(model, combination, cfg).save(tmp)
        os.replace(tmp, folder / MODEL_FILE)
        files[MODEL_FILE] = file_record(folder / MODEL_FILE)["sha256"]
    if forest_file is not None:
        _link_or_copy(Path(forest_file), folder / FOREST_FILE)
        files[FOREST_FILE] = file_record(folder / FOREST_FILE)["sha256"]
    record = {"format": BUNDLE_FORMAT, "medfusion_version": __version__, "combination": combination, "fold": fold,
              "classes": list(CLASSES), "modalities": combination.split("+"),
              "image": {"image_size": cfg.data.image_size, "box_margin": cfg.data.box_margin,
                        "maps": config_to_dict(cfg.data).get("maps")},
              "config": config_slice(cfg), "files": files, **info}
    atomic_write_json(folder / INFO_FILE, record)
    return [str((folder / f).relative_to(run_dir)) for f in [*files, INFO_FILE]]


def _clean_copy(model, combination: str, cfg):
    """The model rebuilt by its builder with the trained weights copied in, for saving.

    Training may call the model's layers in other graphs (the Stage 1 feature cache's head model
    cuts the graph at the pools); those extra nodes break Keras' serialisation of the original
    model ("could not find node key"). A fresh build holds exactly the graph predict reloads.
    """
    from medfusion.models.fusion import build_fusion_model

    clean = build_fusion_model(combination, cfg.model, cfg.data.image_size)
    clean.set_weights(model.get_weights())
    return clean


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link where the file system allows it (forests are large and immutable), else a copy."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@dataclass
class Bundle:
    folder: Path
    info: dict
    model: object = None  # keras.Model or None
    forest: object = None  # fitted sklearn Pipeline or None

    def metadata_proba(self, features) -> np.ndarray:
        from medfusion.models.random_forest import MetadataForest

        return MetadataForest._proba3(self.forest, features)


def read_bundle_info(folder: Path) -> dict:
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no bundle in {str(folder)!r} ({INFO_FILE} missing): the job did not finish, or the run "
                          "predates bundles; rerun it with --resume_mode auto") from None
    except ValueError as exc:
        raise BundleError(f"bundle file {str(path)!r} is not valid JSON ({exc}): it was cut short or edited") from None


def bundle_problem(info: dict, cfg) -> str | None:
    """Why a bundle may not be used with this config and this medfusion, or None."""
    if info.get("format") != BUNDLE_FORMAT:
        return f"bundle format {info.get('format')!r}, this medfusion reads format {BUNDLE_FORMAT}"
    if info.get("medfusion_version") != __version__:
        return (f"made by medfusion {info.get('medfusion_version')!r}, this is medfusion {__version__!r}: "
                "install that version, or rerun the search")
    want, have = config_slice(cfg), info.get("config", {})
    # a key the bundle lacks was added to medfusion after it was made: it had that key's default
    have = {**{k: v for k, v in config_slice(type(cfg)()).items() if k not in have}, **have}
    diffs = sorted(k for k in set(want) | set(have) if want.get(k, "<absent>") != have.get(k, "<absent>"))
    if diffs:
        k = diffs[0]
        return (f"made with another config: {len(diffs)} key(s) differ, e.g. {k}: bundle has "
                f"{have.get(k, '<absent>')!r}, the run has {want.get(k, '<absent>')!r}")
    return None


def load_bundle(folder: Path, cfg) -> Bundle:
    """Load and check a bundle: files present with their recorded checksums, version and config matching."""
    import joblib
    import keras

    folder = Path(folder)
    info = read_bundle_info(folder)
    problem = bundle_problem(info, cfg)
    if problem:
        raise BundleError(f"bundle {str(folder)!r} refused: {problem}")
    for name, sha in info.get("files", {}).items():
        path = folder / name
        if not path.is_file() or file_record(path)["sha256"] != sha:
            raise BundleError(f"bundle file {str(path)!r} is missing or does not match its recorded checksum; "
                              "rerun the job (--resume_mode auto redoes it)")
    model = keras.saving.load_model(folder / MODEL_FILE, compile=False) if MODEL_FILE in info["files"] else None
    forest = joblib.load(folder / FOREST_FILE) if FOREST_FILE in info["files"] else None
    return Bundle(folder, info, model, forest)
