from pathlib import Path

import pytest
import yaml

from medfusion.cli import FLAG_KEYS, build_parser, resolve_config
from medfusion.config import ConfigError, load_config, parse_set, unfreeze_layers
from medfusion.constants import all_combinations, canonical_combination


def test_defaults_and_yaml_override(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"train": {"stage2": {"lr": 3e-5}}, "search": {"cv_folds": 4}}))
    cfg = load_config(path)
    assert cfg.train.stage2.lr == pytest.approx(3e-5)
    assert cfg.train.stage1.lr == pytest.approx(1e-3)  # untouched default
    assert cfg.search.cv_folds == 4
    assert cfg.runtime.run_name == "exp"  # derived from the config file name


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"learning_rate": 0.1}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "train.learning_rate" in msg and "batch_size" in msg and "stage2" in msg


@pytest.mark.parametrize("key,value,fragment", [
    ("train.stage2.lr", -1e-5, "train.stage2.lr"),
    ("train.max_alpha_ratio", 0.5, "train.max_alpha_ratio"),
    ("data.image_size", 0, "data.image_size"),
    ("search.modalities", ["metadata", "xray"], "xray"),
    ("train.batch_size", "big", "train.batch_size"),
    ("runtime.executor", "spark", "runtime.executor"),
    ("runtime.job_retries", -1, "runtime.job_retries"),
    ("runtime.gpus_per_job", -2, "runtime.gpus_per_job"),
])
def test_bad_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(None, {key: value})


def test_unfreeze_has_no_never_value():
    assert unfreeze_layers("all") is None
    assert unfreeze_layers("20") == 20
    for bad in ("0", "none", "never", "-3"):
        with pytest.raises(ConfigError, match="stage2.epochs"):
            unfreeze_layers(bad)


def test_parse_set_types():
    assert parse_set("train.stage2.lr=1e-5") == ("train.stage2.lr", 1e-5)
    assert parse_set("search.cv_folds=3") == ("search.cv_folds", 3)
    assert parse_set("train.augment=false") == ("train.augment", False)
    with pytest.raises(ConfigError):
        parse_set("no_equals_sign")


ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
DEFAULT = str(ROOT / "configs" / "default.yaml")


def test_cli_flags_and_spellings(tmp_path):
    args = build_parser().parse_args(["--config", DEMO, "--cv-folds", "4", "--data_percentage", "50",
                                      "--modalities", "metadata,depth_rgb", "--set", "train.stage1.epochs=3",
                                      "--run_name", "x"])
    cfg = resolve_config(args)
    assert cfg.search.cv_folds == 4 and cfg.search.data_percentage == 50.0
    assert cfg.search.modalities == ("metadata", "depth_rgb")
    assert cfg.train.stage1.epochs == 3 and cfg.runtime.run_name == "x"
    args = build_parser().parse_args(["--config", DEMO, "--cv_folds", "2"])
    assert resolve_config(args).search.cv_folds == 2


def _flag_cases(tmp_path):
    """flag -> (config key, value on the command line or None for a switch, expected config value); written out
    here, not derived from cli.FLAG_KEYS, so a flag wired to the wrong key fails."""
    folds = tmp_path / "folds.json"
    folds.write_text("{}")
    patients = tmp_path / "test_patients.txt"
    patients.write_text("3\n")
    return {
        "data_dir": ("data.data_dir", str(tmp_path / "data"), str(tmp_path / "data")),
        "cv_folds": ("search.cv_folds", "4", 4),
        "data_percentage": ("search.data_percentage", "50", 50.0),
        "modalities": ("search.modalities", "metadata,thermal_map", ("metadata", "thermal_map")),
        "combinations": ("search.combinations", "metadata+depth_rgb,depth_rgb", ("metadata+depth_rgb", "depth_rgb")),
        "seed": ("search.seed", "11", 11),
        "run_name": ("runtime.run_name", "flagged", "flagged"),
        "device_mode": ("runtime.device_mode", "single", "single"),
        "gpus": ("runtime.gpus", "0,1", ("0", "1")),
        "cpu_replicas": ("runtime.cpu_replicas", "3", 3),
        "verbosity": ("runtime.verbosity", "3", 3),
        "resume_mode": ("runtime.resume_mode", "fresh", "fresh"),
        "deterministic": ("runtime.deterministic", None, True),
        "folds": ("search.folds_file", str(folds), str(folds)),
        "selection": ("search.selection", "outer", "outer"),
        "test_fraction": ("search.test_fraction", "0.25", 0.25),
        "test_patients": ("search.test_patients_file", str(patients), str(patients)),
        "executor": ("runtime.executor", "ray", "ray"),
        "ray_address": ("runtime.ray_address", "ray://head:10001", "ray://head:10001"),
        "cpus_per_job": ("runtime.cpus_per_job", "4", 4),
        "gpus_per_job": ("runtime.gpus_per_job", "2", 2),
        "memory_per_job_gb": ("runtime.memory_per_job_gb", "10.5", 10.5),
        "job_retries": ("runtime.job_retries", "3", 3),
    }


def _get(cfg, key):
    section, *rest = key.split(".")
    value = getattr(cfg, section)
    for part in rest:
        value = getattr(value, part)
    return value


def test_every_flag_and_its_dash_alias_reaches_its_config_key(tmp_path):
    cases = _flag_cases(tmp_path)
    assert set(cases) == set(FLAG_KEYS), "a flag without a test case here (or a case for a removed flag)"
    base = resolve_config(build_parser().parse_args(["--config", DEMO]))
    for flag, (key, value, expected) in cases.items():
        assert FLAG_KEYS[flag] == key, flag
        assert _get(base, key) != expected, f"{flag}: the expected value is already the default"
        spellings = [f"--{flag}"] + ([f"--{flag.replace('_', '-')}"] if "_" in flag else [])
        for spelling in spellings:
            argv = ["--config", DEMO, spelling] + ([] if value is None else [value])
            cfg = resolve_config(build_parser().parse_args(argv))
            assert _get(cfg, key) == expected, (spelling, _get(cfg, key))


@pytest.mark.parametrize("key,flag,yaml_value,flag_value,set_value", [
    ("search.cv_folds", "--cv-folds", 3, "4", 5),
    ("search.seed", "--seed", 1, "2", 3),
    ("runtime.run_name", "--run_name", "from_yaml", "from_flag", "from_set"),
    ("search.data_percentage", "--data_percentage", 80.0, "60", 40.0),
])
def test_precedence_yaml_then_flag_then_set(tmp_path, key, flag, yaml_value, flag_value, set_value):
    section, name = key.split(".")
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({section: {name: yaml_value}}))
    parse = lambda *argv: resolve_config(build_parser().parse_args(["--config", str(path), *argv]))  # noqa: E731
    assert _get(parse(), key) == yaml_value
    assert _get(parse(flag, flag_value), key) == type(yaml_value)(flag_value)
    both = parse(flag, flag_value, "--set", f"{key}={set_value}")
    assert _get(both, key) == set_value
    # order on the command line does not matter: --set wins either way
    assert _get(parse("--set", f"{key}={set_value}", flag, flag_value), key) == set_value
    # the last --set of a key wins
    assert _get(parse("--set", f"{key}={yaml_value}", "--set", f"{key}={set_value}"), key) == set_value


def test_shipped_configs_load():
    assert load_config(DEFAULT).model.backbone == "efficientnet_b3"
    demo = load_config(DEMO)
    assert demo.model.backbone == "tiny" and demo.data.demo


def test_canonical_combinations():
    assert canonical_combination(["thermal_map", "metadata", "depth_rgb"]) == "metadata+depth_rgb+thermal_map"
    combos = all_combinations(["thermal_map", "metadata", "depth_rgb"])
    assert len(combos) == 7 and combos[:3] == ["metadata", "depth_rgb", "thermal_map"]
    assert combos[-1] == "metadata+depth_rgb+thermal_map"
    with pytest.raises(ValueError, match="unknown modality"):
        canonical_combination(["metadata", "ct"])


# ----------------------------------------------------------------------------- validation gaps (robust input)


@pytest.mark.parametrize("key,value,fragment", [
    ("train.stage1.lr", 0, "train.stage1.lr"),
    ("train.pretrain.lr", -0.001, "train.pretrain.lr"),
    ("train.max_alpha_ratio", 0.99, "must be >= 1"),
    ("data.image_size", 8, "data.image_size"),
    ("data.box_margin", -0.1, "data.box_margin"),
    ("search.cv_folds", 1, "search.cv_folds"),
    ("search.data_percentage", 0, "search.data_percentage"),
    ("search.data_percentage", 150, "search.data_percentage"),
    ("search.seed", -1, "search.seed"),
    ("forest.max_depth", 0, "forest.max_depth"),
    ("forest.class_weight", "inverse", "forest.class_weight"),
    ("runtime.gpus", "0,x", "runtime.gpus"),
    ("runtime.verbosity", 7, "runtime.verbosity"),
    ("data.label_column", " ", "data.label_column"),
    ("data.metadata_csv", "", "data.metadata_csv"),
    ("data.feature_columns", [1, "Age"], "data.feature_columns"),
    ("search.combinations", ["metadata+ct"], "unknown modality 'ct'"),
    ("model.dropout", 1.0, "model.dropout"),
])
def test_out_of_range_values_name_the_key(key, value, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("+", r"\+")):
        load_config(None, {key: value})


@pytest.mark.parametrize("key,value", [("search.cv_folds", "five"), ("train.augment", "maybe"),
                                       ("data.folders", "depth_rgb"), ("train.stage2", 3),
                                       ("train.stage2.lr", [1e-5])])
def test_wrong_types_name_the_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, {key: value})


def test_unknown_nested_key_and_unknown_section():
    with pytest.raises(ConfigError, match=r"'train\.stage2\.learning_rate'.*epochs, lr, patience"):
        load_config(None, {"train.stage2.learning_rate": 1e-5})
    with pytest.raises(ConfigError, match="'trainer'.*valid keys under the top level"):
        load_config(None, {"trainer.x": 1})


def test_unknown_backbone_lists_the_registered_ones():
    with pytest.raises(ConfigError) as exc:
        load_config(None, {"model.backbone": "resnet50"})
    msg = str(exc.value)
    assert "'resnet50'" in msg and "efficientnet_b3" in msg and "tiny" in msg


def test_builtin_backbone_names_match_the_registry():
    from medfusion.config import BUILTIN_BACKBONES
    from medfusion.models.backbones import BACKBONES

    assert set(BUILTIN_BACKBONES) <= set(BACKBONES)


def test_weights_path_must_exist(tmp_path):
    missing = tmp_path / "nowhere" / "b3.weights.h5"
    with pytest.raises(ConfigError) as exc:
        load_config(None, {"model.weights": str(missing)})
    assert "model.weights" in str(exc.value) and str(missing) in str(exc.value)
    present = tmp_path / "b3.weights.h5"
    present.write_bytes(b"")  # existence is checked here; whether it fits the backbone is checked at build time
    assert load_config(None, {"model.weights": str(present)}).model.weights == str(present)
    for ok in ("none", "imagenet", "None"):
        assert load_config(None, {"model.weights": ok}).model.weights == ok


def test_feature_and_exclude_columns_default_empty_and_load():
    cfg = load_config(None)
    assert cfg.data.feature_columns == () and cfg.data.exclude_columns == ()
    cfg = load_config(None, {"data.feature_columns": ["Age", "Weight (Kg)"], "data.exclude_columns": "Odor"})
    assert cfg.data.feature_columns == ("Age", "Weight (Kg)") and cfg.data.exclude_columns == ("Odor",)
