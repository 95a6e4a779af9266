"""Validation of a Config: each key's range, with a message that names the key and what to use.

Imported by config.py (which re-exports `validate`, `augment_list`, `unfreeze_layers`), never directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medfusion.config import (AUGMENTATIONS, EXECUTORS, JIT_MODES, MAP_RULES, PRECISIONS, RESUME_MODES, Config,
                              ConfigError, DataConfig, ForestConfig, MapConfig, ModelConfig, RuntimeConfig,
                              SearchConfig, TrainConfig)
from medfusion.constants import IMAGE_MODALITIES, LEAKY_COLUMNS, MODALITIES, PRETRAIN_CACHE_DIR, canonical_combination


def _check(cond: bool, key: str, value: Any, want: str) -> None:
    if not cond:
        raise ConfigError(f"config key {key!r} = {value!r} is out of range: {want}")


# Backbones registered by medfusion.models.backbones at import. A name outside this set is checked
# against the live registry (importing it loads TensorFlow, so the common case avoids that);
# tests/test_config.py keeps the two in step.
BUILTIN_BACKBONES = ("efficientnet_b3", "efficientnet_b0", "tiny")


def _check_backbone(name: str) -> None:
    if name in BUILTIN_BACKBONES:
        return
    from medfusion.models.backbones import BACKBONES  # lazy: imports keras / TensorFlow

    if name not in BACKBONES:
        raise ConfigError(f"config key 'model.backbone' = {name!r} is not a registered backbone; "
                          f"registered: {', '.join(sorted(BACKBONES))}")


def _check_weights(weights: str) -> None:
    w = str(weights).strip()
    if w.lower() in ("none", "", "null", "imagenet"):
        return
    p = Path(w).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"config key 'model.weights' = {w!r}: no such file ({str(p.resolve())!r}); use 'none', 'imagenet' or "
            "the path to an existing .weights.h5 / .h5 file (relative paths start at the working directory)"
        )


def _check_names(values, key: str) -> None:
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"config key {key!r} must be a list of non-empty names, got {v!r} in {list(values)!r}")


def validate(cfg: Config) -> None:
    """Every key's value in range, else a ConfigError naming the key; sections in config order."""
    _validate_data(cfg.data)
    _validate_model(cfg.model, cfg.forest)
    _validate_train(cfg.train)
    _validate_search(cfg.search)
    _validate_runtime(cfg.runtime)


def _validate_data(d: DataConfig) -> None:
    _check(bool(str(d.data_dir).strip()), "data.data_dir", d.data_dir, "a dataset folder")
    for key in ("metadata_csv", "depth_boxes_csv", "thermal_boxes_csv", "label_column"):
        _check(bool(str(getattr(d, key)).strip()), f"data.{key}", getattr(d, key), "must not be empty")
    for mod, folder in d.folders.items():
        _check(isinstance(folder, str) and bool(folder.strip()), f"data.folders.{mod}", folder, "a folder name")
    _check_names(d.feature_columns, "data.feature_columns")
    _check_names(d.exclude_columns, "data.exclude_columns")
    leaky = set(LEAKY_COLUMNS) | {d.label_column}
    for c in d.feature_columns:
        if c.strip() in leaky:
            raise ConfigError(
                f"config key 'data.feature_columns' requests {c.strip()!r}, which "
                f"{'is the label' if c.strip() == d.label_column else 'is derived from the label'} and would leak it; "
                f"remove it (never features: {', '.join(repr(x) for x in sorted(leaky))})"
            )
    _check(d.demo_seed >= 0, "data.demo_seed", d.demo_seed, "must be >= 0")
    _check(d.image_size >= 16, "data.image_size", d.image_size, "must be at least 16 pixels")
    _check(d.box_margin >= 0, "data.box_margin", d.box_margin, "must be >= 0")
    _check(d.demo_patients >= 10, "data.demo_patients", d.demo_patients, "must be >= 10")
    _check(bool(str(d.demo_dir).strip()), "data.demo_dir", d.demo_dir, "a folder name")
    _check(d.max_frame_pixels >= 1, "data.max_frame_pixels", d.max_frame_pixels, "must be >= 1")
    unknown_folders = set(d.folders) - set(IMAGE_MODALITIES)
    _check(not unknown_folders, "data.folders", sorted(unknown_folders), f"keys must be among {IMAGE_MODALITIES}")
    _check_distinct_inputs(d)
    for mod in ("depth_map", "thermal_map"):
        _check_map(getattr(d.maps, mod), f"data.maps.{mod}")


def _validate_model(m: ModelConfig, f: ForestConfig) -> None:
    _check_backbone(m.backbone)
    _check_weights(m.weights)
    _check(m.head_units >= 1, "model.head_units", m.head_units, "must be >= 1")
    _check(0 <= m.dropout < 1, "model.dropout", m.dropout, "must be in [0, 1)")
    _check(0 < m.fusion_init_rf_weight < 1, "model.fusion_init_rf_weight", m.fusion_init_rf_weight, "must be in (0, 1)")
    _check(m.fusion_logit_scale > 0, "model.fusion_logit_scale", m.fusion_logit_scale, "must be > 0")
    _check(f.n_estimators >= 1, "forest.n_estimators", f.n_estimators, "must be >= 1")
    _check(f.inner_folds >= 2, "forest.inner_folds", f.inner_folds, "must be >= 2")
    _check(f.min_samples_leaf >= 1, "forest.min_samples_leaf", f.min_samples_leaf, "must be >= 1")
    _check(f.max_depth is None or f.max_depth >= 1, "forest.max_depth", f.max_depth, "must be >= 1 (or none)")
    _check(f.class_weight in (None, "balanced", "balanced_subsample"), "forest.class_weight", f.class_weight,
           "one of balanced, balanced_subsample, none")


def _validate_train(t: TrainConfig) -> None:
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.focal_gamma >= 0, "train.focal_gamma", t.focal_gamma, "must be >= 0")
    _check(t.max_alpha_ratio == 0 or t.max_alpha_ratio >= 1, "train.max_alpha_ratio", t.max_alpha_ratio,
           "must be >= 1 (or 0 to disable the cap)")
    for name in ("pretrain", "stage1", "stage2"):
        st = getattr(t, name)
        _check(st.epochs >= 0, f"train.{name}.epochs", st.epochs, "must be >= 0")
        _check(st.lr > 0, f"train.{name}.lr", st.lr, "must be > 0")
        _check(st.patience >= 1, f"train.{name}.patience", st.patience, "must be >= 1")
    _check(t.pretrain.warmup_epochs >= 0, "train.pretrain.warmup_epochs", t.pretrain.warmup_epochs, "must be >= 0")
    _check(t.pretrain.warmup_lr > 0, "train.pretrain.warmup_lr", t.pretrain.warmup_lr, "must be > 0")
    _check(t.pretrain.finetune_lr > 0, "train.pretrain.finetune_lr", t.pretrain.finetune_lr, "must be > 0")
    _check(t.stage1.epochs >= 1, "train.stage1.epochs", t.stage1.epochs, "must be >= 1 (Stage 1 trains the fusion head)")
    unfreeze_layers(t.unfreeze)  # raises on a bad value
    augment_list(t.augment, "train.augment")
    _check(t.decision in ("argmax", "ordinal_thresholds"), "train.decision", t.decision,
           "argmax or ordinal_thresholds")
    _check(t.calibrate in ("none", "temperature"), "train.calibrate", t.calibrate, "none or temperature")
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", t.checkpoint_every, "must be >= 1 (epochs between checkpoints)")


def _validate_search(s: SearchConfig) -> None:
    for mod in s.modalities:
        _check(mod in MODALITIES, "search.modalities", mod, f"valid modalities: {', '.join(MODALITIES)}")
    _check(len(s.modalities) >= 1, "search.modalities", s.modalities, "needs at least one modality")
    for comb in s.combinations:
        try:
            canonical_combination(str(comb).split("+"))
        except ValueError as exc:
            raise ConfigError(f"config key 'search.combinations': {exc}") from None
    _check(s.cv_folds >= 2, "search.cv_folds", s.cv_folds, "must be >= 2")
    _check(s.selection in ("inner", "outer"), "search.selection", s.selection, "inner or outer")
    _check(0 < s.selection_fraction < 0.5, "search.selection_fraction", s.selection_fraction, "must be in (0, 0.5)")
    _check(0 <= s.test_fraction < 0.5, "search.test_fraction", s.test_fraction, "must be in [0, 0.5)")
    _check(not (s.test_fraction and s.test_patients_file), "search.test_fraction", s.test_fraction,
           "use either --test_fraction or --test_patients, not both")
    _check(not s.test_patients_file or Path(s.test_patients_file).expanduser().is_file(), "search.test_patients_file",
           s.test_patients_file, "an existing file of patient numbers")
    _check(s.bootstrap_resamples >= 100, "search.bootstrap_resamples", s.bootstrap_resamples, "must be >= 100")
    _check(not s.folds_file or Path(s.folds_file).expanduser().is_file(), "search.folds_file", s.folds_file,
           "an existing JSON file (sample_id -> fold or patient -> fold)")
    _check(0 <= s.seed < 2**32, "search.seed", s.seed, "must be in [0, 2**32)")
    _check(0 < s.data_percentage <= 100, "search.data_percentage", s.data_percentage, "must be in (0, 100]")


def _validate_runtime(r: RuntimeConfig) -> None:
    _check(r.device_mode in ("cpu", "single", "multi", "custom"), "runtime.device_mode", r.device_mode,
           "one of cpu, single, multi, custom")
    _check(r.device_mode != "custom" or len(r.gpus) > 0, "runtime.gpus", r.gpus, "--device_mode custom needs --gpus, e.g. 0,1")
    for g in r.gpus:
        _check(str(g).strip().isdigit(), "runtime.gpus", list(r.gpus), "GPU indices, e.g. 0,1")
    _check(r.cpu_replicas >= 1, "runtime.cpu_replicas", r.cpu_replicas, "must be >= 1")
    _check(0 <= r.verbosity <= 3, "runtime.verbosity", r.verbosity, "must be 0-3")
    _check(r.resume_mode in RESUME_MODES, "runtime.resume_mode", r.resume_mode, f"one of {', '.join(RESUME_MODES)}")
    _check(str(r.precision).lower() in PRECISIONS, "runtime.precision", r.precision, f"one of {', '.join(PRECISIONS)}")
    _check(str(r.jit_compile).lower() in JIT_MODES, "runtime.jit_compile", r.jit_compile, f"one of {', '.join(JIT_MODES)}")
    _check(r.executor in EXECUTORS, "runtime.executor", r.executor, f"one of {', '.join(EXECUTORS)}")
    _check(r.cpus_per_job >= 0, "runtime.cpus_per_job", r.cpus_per_job, "must be >= 0 (0: automatic)")
    _check(r.gpus_per_job >= -1, "runtime.gpus_per_job", r.gpus_per_job, "must be >= 0, or -1 for automatic")
    _check(r.job_retries >= 0, "runtime.job_retries", r.job_retries, "must be >= 0")
    _check(r.memory_per_job_gb >= 0, "runtime.memory_per_job_gb", r.memory_per_job_gb, "must be >= 0 (0: reserve none)")
    _check_run_name(r.run_name)


def _check_distinct_inputs(d: DataConfig) -> None:
    """Two modalities reading one folder (or the two box files one file) would silently train one on the other."""
    folders = {m: str(d.folders.get(m, m)).strip().rstrip("/") for m in IMAGE_MODALITIES}
    for i, a in enumerate(IMAGE_MODALITIES):
        for b in IMAGE_MODALITIES[i + 1:]:
            if folders[a] == folders[b]:
                raise ConfigError(f"config key 'data.folders': {a} and {b} both read the folder {folders[a]!r}; "
                                  "every image modality needs its own folder")
    if str(d.depth_boxes_csv).strip() == str(d.thermal_boxes_csv).strip():
        raise ConfigError(f"config keys 'data.depth_boxes_csv' and 'data.thermal_boxes_csv' both name "
                          f"{d.depth_boxes_csv!r}; the depth and thermal boxes come from two files")


def augment_list(value: Any, key: str = "train.augment") -> tuple:
    """train.augment as a tuple of AUGMENTATIONS; true/false (older configs and run folders) = (flip,) / ()."""
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no")):
        return ("flip",) if str(value).strip().lower() in ("true", "yes") else ()
    if value is None:
        return ()
    names = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"config key {key!r} must be a list of augmentations ({', '.join(AUGMENTATIONS)}) or "
                          f"true/false, got {value!r}")
    for n in names:
        if n not in AUGMENTATIONS:
            raise ConfigError(f"config key {key!r}: unknown augmentation {n!r}; valid: {', '.join(AUGMENTATIONS)} "
                              "(true = [flip], false = [])")
    return tuple(dict.fromkeys(names))


def _check_map(mc: MapConfig, key: str) -> None:
    """One map modality's rule, units and box transform (README 'Map rules')."""
    _check(mc.rule in MAP_RULES, f"{key}.rule", mc.rule, f"one of {', '.join(MAP_RULES)}")
    _check(mc.scale > 0, f"{key}.scale", mc.scale, "physical units per 16-bit step, > 0")
    _check(mc.window > 0, f"{key}.window", mc.window, "> 0 (half-width of the window, physical units)")
    r = mc.absolute_range
    ok = len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r) and r[0] < r[1]
    _check(ok, f"{key}.absolute_range", list(r), "[lo, hi] in physical units with lo < hi")
    _check(mc.invalid_value is None or 0 <= mc.invalid_value <= 65535, f"{key}.invalid_value", mc.invalid_value,
           "a raw 16-bit value (0..65535) or none")
    _check(0 < mc.ring <= 5, f"{key}.ring", mc.ring, "in (0, 5]: fraction of the box size per side")
    bs = mc.box_scale
    ok = len(bs) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in bs)
    _check(ok, f"{key}.box_scale", list(bs), "[x, y], two numbers > 0")
    _check(mc.box_margin_px >= 0, f"{key}.box_margin_px", mc.box_margin_px, "must be >= 0")


def _check_run_name(name: str) -> None:
    """A plain folder name under logs/ that cannot collide with medfusion's own folders there."""
    bad = [c for c in name if c in '/\\:*?"<>|' or ord(c) < 32]
    _check(bool(name) and not bad and name == name.strip(), "runtime.run_name", name,
           "a plain folder name (no path separators, control characters or surrounding spaces)")
    if name.startswith("."):
        raise ConfigError(
            f"config key 'runtime.run_name' = {name!r} is reserved: names starting with '.' belong to medfusion "
            f"(e.g. the shared pre-training cache {PRETRAIN_CACHE_DIR!r} under the logs folder) and such a run "
            "would move that folder aside; choose another --run_name")


def unfreeze_layers(value: str) -> int | None:
    """'all' -> None (every layer); 'N' -> N > 0. Anything meaning 'never' is rejected."""
    v = str(value).strip().lower()
    if v == "all":
        return None
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n <= 0:
        raise ConfigError(
            f"config key 'train.unfreeze' = {value!r}: use 'all' or a positive number of top backbone "
            "layers; to skip Stage 2 entirely set train.stage2.epochs: 0"
        )
    return n
