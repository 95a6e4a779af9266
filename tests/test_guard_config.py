"""Config files and command lines a new user gets wrong (issue 13's hunt): each stops with a message naming it."""

from pathlib import Path

import pytest

from medfusion.config import ConfigError, config_to_dict, load_config, parse_set, result_differences

ROOT = Path(__file__).resolve().parents[1]


def test_a_key_written_twice_is_refused_naming_it_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("search:\n  cv_folds: 3\n  seed: 1\n  cv_folds: 4\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert "dup.yaml" in msg and "the key 'cv_folds' appears twice (first on line 2)" in msg and "line 4" in msg


def test_a_section_written_twice_is_refused(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  batch_size: 8\nsearch:\n  cv_folds: 3\ntrain:\n  batch_size: 32\n")
    with pytest.raises(ConfigError, match="the key 'train' appears twice"):
        load_config(p)


@pytest.mark.parametrize("text,fragment", [("- a\n- b\n", "got a list"), ("just text\n", "got a str"),
                                           ("42\n", "got a int")])
def test_a_config_that_is_not_a_mapping_names_what_it_holds(tmp_path, text, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "must hold a mapping of sections" in str(exc.value) and fragment in str(exc.value)


def test_empty_section_counts_as_defaults_and_a_folder_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\nsearch:\n  cv_folds: 3\n")
    cfg = load_config(p, {"data.data_dir": "x"})
    assert cfg.data.data_dir == "x" and cfg.search.cv_folds == 3
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


def test_non_utf8_config_and_bad_set_value_are_config_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes("data:\n  data_dir: d\u00e9mo\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(p)
    with pytest.raises(ConfigError, match="not a valid YAML value; quote it"):
        parse_set("search.modalities=[metadata")


def test_a_run_written_before_a_key_existed_resumes_with_the_default():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    saved = config_to_dict(cfg)
    del saved["data"]["max_frame_pixels"], saved["data"]["demo_dir"]
    assert result_differences(saved, cfg) == []
    saved["data"]["max_frame_pixels"] = 5
    assert result_differences(saved, cfg) == [("data.max_frame_pixels", 5, cfg.data.max_frame_pixels)]


def test_a_dataset_file_named_oracle_csv_that_is_not_one_is_ignored(tmp_path, caplog):
    from medfusion.search import Search

    (tmp_path / "oracle.csv").write_text("a,b\n1,2\n")
    cfg = load_config(ROOT / "configs" / "demo.yaml", {"data.data_dir": str(tmp_path)})
    assert Search(cfg, None).oracle_ref.table is None
    assert "has no sample_id column" in caplog.text


def test_two_modalities_reading_one_folder_are_refused():
    with pytest.raises(ConfigError) as exc:
        load_config(None, {"data.folders": {"depth_map": "depth_rgb/"}})
    assert "depth_rgb and depth_map both read the folder 'depth_rgb'" in str(exc.value)
    with pytest.raises(ConfigError, match="both name 'boxes.csv'"):
        load_config(None, {"data.depth_boxes_csv": "boxes.csv", "data.thermal_boxes_csv": "boxes.csv"})
