"""data.maps and train.augment keys: defaults per modality, validation naming the key, older run configs."""

import pytest

from medfusion.config import ConfigError, augment_list, config_to_dict, load_config, result_differences


def test_partial_map_settings_keep_each_modality_s_defaults():
    cfg = load_config(None, {"data.maps.thermal_map.rule": "absolute"})
    t, d = cfg.data.maps.thermal_map, cfg.data.maps.depth_map
    assert (t.rule, t.scale, t.window, t.absolute_range, t.invalid_value) == ("absolute", 0.01, 5.0, (20.0, 40.0), None)
    assert (d.rule, d.scale, d.window, d.invalid_value) == ("relative", 1.0, 30.0, 0)


@pytest.mark.parametrize("key,value,match", [
    ("data.maps.depth_map.rule", "percentile", "data.maps.depth_map.rule"),
    ("data.maps.depth_map.scale", 0, "data.maps.depth_map.scale"),
    ("data.maps.thermal_map.absolute_range", [40, 20], "absolute_range"),
    ("data.maps.thermal_map.box_scale", [1.0], "box_scale"),
    ("data.maps.depth_map.window_mm", 30, "valid keys under data.maps.depth_map"),
    ("train.augment", "flip,spin", "unknown augmentation 'spin'"),
])
def test_bad_values_name_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, {key: value})


def test_augment_list_accepts_older_booleans():
    assert augment_list(True) == ("flip",) and augment_list("false") == () and augment_list(None) == ()
    assert augment_list("rotate, zoom,rotate") == ("rotate", "zoom")
    assert load_config(None, {"train.augment": False}).train.augment == ()


def test_an_older_run_config_resumes_without_differences():
    cfg = load_config(None, {})
    saved = config_to_dict(cfg)
    saved["train"]["augment"] = True  # written before train.augment was a list
    del saved["data"]["maps"]  # written before data.maps existed
    assert result_differences(saved, cfg) == []
    saved["train"]["augment"] = False
    assert [d[0] for d in result_differences(saved, cfg)] == ["train.augment"]
