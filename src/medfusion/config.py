"""Run configuration: frozen dataclasses loaded from YAML, with --set overrides and validation.

One resolved Config drives a whole run and is written to logs/<run>/config.yaml before
training, so a run can always be explained (and, later, resumed) from its folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from medfusion.yamlio import load_yaml
from medfusion.constants import DEFAULT_LABEL_COLUMN, IMAGE_MODALITIES


RESUME_MODES = ("auto", "fresh", "from_models", "from_predictions")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")  # runtime.precision (training/precision.py)
JIT_MODES = ("auto", "true", "false")  # runtime.jit_compile
# Keys that may differ between a run and its resumption: they do not change what is computed.
NON_RESULT_KEYS = frozenset({"data.demo_dir", "data.labels_required", "runtime.run_name", "runtime.logs_dir", "runtime.device_mode", "runtime.gpus",
                             "runtime.cpu_replicas", "runtime.verbosity", "runtime.resume_mode",
                             "runtime.deterministic", "train.checkpoint_every",
                             "runtime.executor", "runtime.ray_address", "runtime.cpus_per_job", "runtime.memory_per_job_gb",
                             "runtime.gpus_per_job", "runtime.job_retries"})
EXECUTORS = ("inline", "ray")  # runtime.executor (executors.py)
# runtime.precision and runtime.jit_compile ARE result-affecting: float16 and XLA's fused ops change the numbers


class ConfigError(ValueError):
    """A config value or key a user must fix; the message names it."""


# 16-bit map normalisation rules (data/maps.py; README "Map rules")
MAP_RULES = ("relative", "absolute", "minmax_frame")
# training augmentations (data/pipeline.py); `train.augment: true` (older configs) means ("flip",)
AUGMENTATIONS = ("flip", "rotate", "shift", "zoom")


@dataclass(frozen=True)
class MapConfig:
    """How one 16-bit map modality becomes a crop (data/maps.py). Physical unit: mm (depth), degC (thermal)."""

    rule: str = "relative"  # relative | absolute | minmax_frame
    scale: float = 1.0  # physical units per 16-bit step
    window: float = 30.0  # relative: median of the skin ring +- window (physical units) -> [1, 255]
    absolute_range: tuple = (0.0, 2000.0)  # absolute: [lo, hi] in physical units -> [1, 255]
    invalid_value: Optional[int] = 0  # raw value meaning "no data" (none: every value is valid)
    ring: float = 0.5  # skin ring: the box enlarged by this fraction of its width/height per side, minus the box
    box_scale: tuple = (1.0, 1.0)  # (x, y) box scale about the map frame's centre, after the size-ratio mapping
    box_margin_px: int = 0  # then the box is enlarged by this many map pixels per side


@dataclass(frozen=True)
class DepthMapConfig(MapConfig):
    """depth_map defaults: millimetres, 0 = invalid, +-30 mm around the surrounding skin."""


@dataclass(frozen=True)
class ThermalMapConfig(MapConfig):
    """thermal_map defaults: centi-degrees C, no invalid value, +-5 degC around the surrounding skin."""

    scale: float = 0.01
    window: float = 5.0
    absolute_range: tuple = (20.0, 40.0)
    invalid_value: Optional[int] = None


@dataclass(frozen=True)
class MapsConfig:
    depth_map: DepthMapConfig = field(default_factory=DepthMapConfig)
    thermal_map: ThermalMapConfig = field(default_factory=ThermalMapConfig)


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = "data/demo"
    demo: bool = False  # generate the embedded demo dataset when data_dir is demo_dir and holds no dataset
    demo_dir: str = "data/demo"  # the only folder the demo is ever generated into
    demo_seed: int = 7
    demo_patients: int = 120
    metadata_csv: str = "metadata.csv"
    depth_boxes_csv: str = "bounding_boxes_depth.csv"
    thermal_boxes_csv: str = "bounding_boxes_thermal.csv"
    folders: dict = field(default_factory=lambda: {m: m for m in IMAGE_MODALITIES})
    label_column: str = DEFAULT_LABEL_COLUMN
    image_size: int = 64
    box_margin: float = 0.15  # fraction of the box size added on each side before cropping
    # metadata features: empty = every eligible column (not an identifier, free text or label-derived);
    # a label-leaking column here is an error, and so is a column the metadata file does not have
    feature_columns: tuple = ()
    exclude_columns: tuple = ()  # dropped from the features (names must exist in the metadata file)
    # a frame whose header declares more pixels is skipped before decoding (100 MP: above any real camera here)
    max_frame_pixels: int = 100_000_000
    # false only for --mode predict on new patients: a metadata file without the label column is read unlabelled
    labels_required: bool = True
    maps: MapsConfig = field(default_factory=MapsConfig)  # 16-bit map rules and box transforms, per map modality


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "efficientnet_b3"
    weights: str = "none"  # none | imagenet | path to a .weights.h5 / .h5 file
    head_units: int = 64
    dropout: float = 0.3
    fusion_init_rf_weight: float = 0.7
    # Adam moves a parameter by about lr per step whatever its gradient; the single fusion
    # logit is multiplied by this so it can move within a stage at the heads' learning rate.
    fusion_logit_scale: float = 10.0


@dataclass(frozen=True)
class ForestConfig:
    n_estimators: int = 300
    max_depth: Optional[int] = None
    min_samples_leaf: int = 2
    inner_folds: int = 5
    class_weight: Optional[str] = "balanced"


@dataclass(frozen=True)
class StageConfig:
    epochs: int = 30
    lr: float = 1e-3
    patience: int = 6


@dataclass(frozen=True)
class PretrainConfig(StageConfig):
    """Image pre-training. From-scratch backbones (model.weights: none) train the whole model,
    BatchNorm included, for `epochs` at `lr`. Pretrained weights follow the keras-io fine-tuning
    recipe: `warmup_epochs` at `warmup_lr` train the new head on a frozen backbone (inference
    mode), then `epochs` at `finetune_lr` train the unfrozen backbone with BatchNorm frozen.
    `patience` applies to every phase."""
    warmup_epochs: int = 5  # pretrained weights only; 0 = unfreeze at once (not recommended)
    warmup_lr: float = 1e-3
    finetune_lr: float = 1e-5  # pretrained weights only: the backbone's own, lower LR


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 16  # per replica; the global batch is this times the replica count
    focal_gamma: float = 2.0
    max_alpha_ratio: float = 3.0  # cap on max/min focal alpha; 0 disables the cap (review flags it)
    augment: tuple = ("flip",)  # any of AUGMENTATIONS; true = [flip], false = [] (older configs)
    pretrain: PretrainConfig = field(default_factory=lambda: PretrainConfig(epochs=30, lr=1e-3, patience=6))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(epochs=30, lr=1e-3, patience=6))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(epochs=15, lr=1e-5, patience=5))
    # Stage 2 unfreezing: "all", or a positive integer N = the top N weight-carrying (non-BatchNorm) backbone
    # layers. There is deliberately no value meaning "never": to skip Stage 2 set stage2.epochs: 0.
    unfreeze: str = "all"
    decision: str = "argmax"  # argmax | ordinal_thresholds (two cut points fit on the selection split)
    checkpoint_every: int = 1  # per-epoch stage checkpoints every N epochs (and after the last); resume from the last
    # none | temperature: one temperature fit on the selection split's probabilities (log loss), applied to
    # the selection and validation probabilities before the decision rule (evaluation/calibration.calibrate_job)
    calibrate: str = "none"


@dataclass(frozen=True)
class SearchConfig:
    modalities: tuple = ("metadata", "depth_rgb", "thermal_map")
    combinations: tuple = ()  # empty: every non-empty combination of `modalities`
    cv_folds: int = 5
    data_percentage: float = 100.0
    seed: int = 42
    # inner: a patient-level part of each training fold makes every choice (best epochs, Stage 2 kept,
    # fusion weight, decision rule) and the reported fold only scores; outer: the reference study's
    # protocol (the reported fold chooses), for comparison only
    selection: str = "inner"
    selection_fraction: float = 0.2  # share of each training fold's patients held out for selection
    folds_file: str = ""  # --folds: a fold assignment to use instead of computing one
    bootstrap_resamples: int = 2000  # patient-level bootstrap for intervals and paired comparisons
    # held-out test patients, set aside before folding (never in a fold): a fraction, or a file of patients
    test_fraction: float = 0.0
    test_patients_file: str = ""


@dataclass(frozen=True)
class RuntimeConfig:
    run_name: str = ""  # empty: derived from the config file name
    logs_dir: str = "logs"
    device_mode: str = "single"  # cpu | single | multi | custom
    gpus: tuple = ()
    cpu_replicas: int = 1
    verbosity: int = 1
    resume_mode: str = "auto"  # auto | fresh | from_models | from_predictions
    deterministic: bool = False  # TensorFlow op determinism (slower); seeds are always set
    # Keras dtype policy (training/precision.py): auto = mixed_float16 on a GPU of compute capability >= 7.0, else
    # float32; softmax outputs, the fusion layer and the loss stay float32 in every policy
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    jit_compile: str = "auto"  # auto | true | false: XLA, passed to compile (auto: on with a GPU, off on CPU)
    # where jobs run (executors.py): inline = one by one in this process; ray = Ray tasks (docs/ray.md)
    executor: str = "inline"
    ray_address: str = ""  # empty: $RAY_ADDRESS, else a new local instance; "auto", host:port, ray://: a cluster
    cpus_per_job: int = 0  # 0: 1 without GPUs, else the cluster's CPUs per GPU
    gpus_per_job: int = -1  # -1: 1 when the cluster has GPUs, else 0
    memory_per_job_gb: float = 0.0  # Ray memory reserved per job (0: none; jobs are then packed by CPUs/GPUs only)
    job_retries: int = 1  # a job that raises is run again this many times, then reported


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    forest: ForestConfig = field(default_factory=ForestConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


# ----------------------------------------------------------------------------- building


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or isinstance(tp, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], key)
    if key == "train.augment":
        return augment_list(value, key)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    if tp is tuple:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]  # keeps inner spaces: "Weight (Kg)"
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return tuple(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(_valid_keys(cls)))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(_valid_keys(cls))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    """Plain, YAML-safe dict (tuples become lists)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def parse_set(item: str) -> tuple[str, Any]:
    """'train.stage2.lr=1e-5' -> ('train.stage2.lr', 1e-05); values parsed as YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. train.stage2.lr=1e-5), got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value {raw!r} is not a valid YAML value; quote it") from None
    if isinstance(value, str):  # YAML reads 1e-5 as a string; try a number first
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Read a YAML config (or the defaults), apply dotted-key overrides, validate."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}; "
                              "pass --config PATH to a YAML file")
        try:
            tree = load_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte offset {exc.start}); "
                              "re-save it as UTF-8") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (data:, model:, ...), "
                              f"got a {type(tree).__name__}: {str(tree)[:80]!r}")
        tree = {k: ({} if v is None else v) for k, v in tree.items()}  # `data:` with nothing under it
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree)
    if not cfg.runtime.run_name:
        stem = Path(path).stem if path is not None else "default"
        cfg = replace(cfg, "runtime.run_name", stem)
    validate(cfg)
    return cfg


def replace(cfg: Config, dotted: str, value: Any) -> Config:
    """Return a copy of cfg with one dotted key changed."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: replace(getattr(cfg, head), rest, value)})


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and k != "folders":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def result_differences(saved: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """(key, saved value, current value) for every result-affecting key that differs.

    A key the saved config lacks (written before the key existed) counts as its default value.
    """
    old, new = flatten(saved), flatten(config_to_dict(cfg))
    defaults = flatten(config_to_dict(Config()))
    old = {**{k: v for k, v in defaults.items() if k not in old}, **old}
    if "train.augment" in old:  # `augment: true` of older runs is [flip]
        old["train.augment"] = list(augment_list(old["train.augment"]))
    keys = sorted((set(old) | set(new)) - NON_RESULT_KEYS)
    return [(k, old.get(k, "<absent>"), new.get(k, "<absent>")) for k in keys if old.get(k, "<absent>") != new.get(k, "<absent>")]


def config_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# validation lives in config_checks.py; imported last, since it reads the dataclasses above
from medfusion.config_checks import BUILTIN_BACKBONES, augment_list, unfreeze_layers, validate  # noqa: E402,F401
