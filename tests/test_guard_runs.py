"""Command lines and run folders that would silently damage a study (issue 13, items 4-6): a mistyped
--data_dir, reserved run names, run-folder files that cannot be read back."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from medfusion import cli
from medfusion.config import ConfigError, config_yaml, load_config
from medfusion.constants import PRETRAIN_CACHE_DIR
from medfusion.data.check import check_dataset
from medfusion.runs import RunFolderError, RunState, check_run_folder, prepare_run_dir, read_run_csv
from tests.data.conftest import B1, build_layout, meta_row

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def dataset(tmp_path):
    """Six patients, one visit each, labels I, P, R twice: usable with --cv_folds 2."""
    labels = "IPRIPR"
    meta = [meta_row(p, p, 0, 1, labels[p - 1], age=50 + p) for p in range(1, 7)]
    depth = {f"{p}_P{p:03d}001ADMW.png": [(1, B1)] for p in range(1, 7)}
    thermal = {f"{10 + p}_P{p:03d}001ATMW.png": [(1, B1)] for p in range(1, 7)}
    return build_layout(tmp_path / "data", meta, depth, thermal)


# ----------------------------------------------------------------------------- item 4: --data_dir and the demo


@pytest.mark.parametrize("mode", ["check_data", "search"])
def test_missing_data_dir_is_an_error_even_with_the_demo_config(tmp_path, capsys, mode):
    typo = tmp_path / "dat" / "dfu"
    rc = cli.main(["--mode", mode, "--config", DEMO, "--data_dir", str(typo),
                   "--set", f"runtime.logs_dir={tmp_path / 'logs'}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--data_dir {str(typo)!r} does not exist" in err and "data.demo_dir" in err
    assert not (tmp_path / "dat").exists() and not (tmp_path / "logs").exists()  # nothing generated, no run folder


def test_data_dir_that_is_a_file_is_named(tmp_path, capsys):
    f = tmp_path / "metadata.csv"
    f.write_text("x\n")
    assert cli.main(["--mode", "check_data", "--config", DEMO, "--data_dir", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_demo_is_generated_only_into_the_demo_folder(tmp_path, monkeypatch):
    import medfusion.data.synthetic as synthetic

    calls = []
    monkeypatch.setattr(synthetic, "ensure_demo", lambda out, **kw: calls.append(Path(out)))
    elsewhere = tmp_path / "elsewhere"
    cfg = load_config(DEMO, {"data.data_dir": str(elsewhere), "data.demo_dir": str(tmp_path / "demo")})
    check = check_dataset(cfg)
    assert not check.ok and calls == [] and not elsewhere.exists()
    assert f"data directory {str(elsewhere)!r} not found" in check.problems[0]
    assert "generated only into data.demo_dir" in check.problems[0]
    cfg = load_config(DEMO, {"data.data_dir": str(tmp_path / "demo"), "data.demo_dir": str(tmp_path / "demo")})
    check_dataset(cfg)
    assert calls == [tmp_path / "demo"]


# ----------------------------------------------------------------------------- item 5: reserved run names


@pytest.mark.parametrize("name", [PRETRAIN_CACHE_DIR, ".hidden", "a/b", "x\\y", " demo", "demo "])
def test_reserved_or_unsafe_run_names_are_refused(name):
    with pytest.raises(ConfigError) as exc:
        load_config(DEMO, {"runtime.run_name": name})
    msg = str(exc.value)
    assert f"'runtime.run_name' = {name!r}" in msg
    assert ("is reserved" in msg and "choose another --run_name" in msg) if name.startswith(".") \
        else "a plain folder name" in msg


def test_run_named_like_the_cache_leaves_the_cache_alone(tmp_path, capsys):
    logs = tmp_path / "logs"
    entry = logs / PRETRAIN_CACHE_DIR / "0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "done.json").write_text('{"best_epoch": 3}')
    before = _snapshot(logs)
    rc = cli.main(["--config", DEMO, "--run_name", PRETRAIN_CACHE_DIR, "--set", f"runtime.logs_dir={logs}"])
    err = capsys.readouterr().err
    assert rc == 2 and "is reserved" in err and PRETRAIN_CACHE_DIR in err
    assert _snapshot(logs) == before  # not moved aside, nothing added
    with pytest.raises(ValueError, match="reserved"):
        prepare_run_dir(logs, PRETRAIN_CACHE_DIR, __import__("logging").getLogger("t"))
    assert _snapshot(logs) == before


# ----------------------------------------------------------------------------- item 6: unreadable run files

DAMAGE = [
    ("state.json", '{"version": 1, "jobs": {"metadata|fold_0": {"comb', "is not valid JSON"),
    ("state.json", "", "is empty"),
    ("state.json", "[1, 2]", "expected an object with a 'jobs' mapping"),
    ("state.json", '{"jobs": {"metadata|fold_0": {"combination": "metadata", "fold": 0, "files": {"a": 1}}}}',
     "the record of 'a' lacks its size or checksum"),
    ("folds.json", '{"P001001AMW_1": 0, "P002001AMW_1": "one"}', "no valid fold number, e.g. 'P002001AMW_1': 'one'"),
    ("folds.json", "\x00\x00\x00", "is not valid JSON"),
    ("config.yaml", "data: [unclosed\n", "is not valid YAML"),
    ("config.yaml", "- just\n- a list\n", "does not hold a mapping of config sections"),
    ("config.yaml", b"\xff\xfe d\x00a\x00", "is not UTF-8 text"),
]


def _run_folder(tmp_path, cfg) -> Path:
    run = Path(cfg.runtime.logs_dir) / cfg.runtime.run_name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config_yaml(cfg))
    (run / "state.json").write_text('{"version": 1, "jobs": {}}')
    (run / "folds.json").write_text('{"P001001AMW_1": 0, "P002001AMW_1": 1}')
    (run / "run.log").write_text("earlier attempt\n")
    return run


@pytest.mark.parametrize("name,content,what", DAMAGE)
def test_unreadable_run_file_is_named_with_how_to_continue_and_nothing_changes(tmp_path, name, content, what):
    cfg = load_config(DEMO, {"runtime.logs_dir": str(tmp_path / "logs"), "runtime.run_name": "r"})
    run = _run_folder(tmp_path, cfg)
    (run / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _snapshot(tmp_path / "logs")
    with pytest.raises(RunFolderError) as exc:
        check_run_folder(run)
    msg = str(exc.value)
    assert str(run / name) in msg and what in msg and "--resume_mode fresh" in msg and "--run_name" in msg
    assert _snapshot(tmp_path / "logs") == before
    if name == "state.json":
        with pytest.raises(RunFolderError, match="state.json"):
            RunState(run)


def test_unreadable_predictions_file_is_named(tmp_path):
    p = tmp_path / "fold_0.csv"
    p.write_text('sample_id,p_I\n"unterminated,0.1\n')
    with pytest.raises(RunFolderError) as exc:
        read_run_csv(p)
    assert str(p) in str(exc.value) and "not a readable CSV table" in str(exc.value)


def _search_args(tmp_path, dataset, *extra):
    return ["--config", DEMO, "--data_dir", str(dataset), "--cv_folds", "2", "--run_name", "r", "--set",
            f"runtime.logs_dir={tmp_path / 'logs'}", "--set", "data.demo=false", *extra]


@pytest.mark.parametrize("verbosity,traceback", [("1", False), ("3", True)])
def test_search_on_a_damaged_run_stops_with_one_message(tmp_path, dataset, verbosity, traceback):
    """In a subprocess, as a user runs it (TensorFlow's logging outlives an in-process capture)."""
    cfg = cli.resolve_config(cli.build_parser().parse_args(_search_args(tmp_path, dataset)))
    run = _run_folder(tmp_path, cfg)
    (run / "state.json").write_text('{"jobs": ')
    before = _snapshot(tmp_path / "logs")
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *_search_args(tmp_path, dataset, "--verbosity",
                                                                                 verbosity)],
                          capture_output=True, text=True, timeout=600)
    err = proc.stderr
    assert proc.returncode == 2, err[-2000:]
    assert f"run file {str(run / 'state.json')!r} is not valid JSON" in err and "--resume_mode fresh" in err
    assert ("Traceback" in err) is traceback
    assert _snapshot(tmp_path / "logs") == before


def test_fresh_resume_keeps_the_damaged_folder_aside(tmp_path, dataset):
    from medfusion.run_folder import open_run
    from medfusion.store import RunLock

    cfg = load_config(DEMO, {"runtime.logs_dir": str(tmp_path / "logs"), "runtime.run_name": "r",
                             "runtime.resume_mode": "fresh"})
    run = _run_folder(tmp_path, cfg)
    (run / "folds.json").write_text("{")
    with RunLock(cfg.runtime.logs_dir, "r") as lock:
        assert open_run(cfg, run, lock) is False
    aside = [p for p in (tmp_path / "logs").iterdir() if p.name.startswith("r.")]
    assert len(aside) == 1 and (aside[0] / "folds.json").read_text() == "{"
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    check_run_folder(run)  # the new folder reads back


# ----------------------------------------------------------------------------- damaged cache and checkpoints


def _stage_folder(folder: Path, done_json: str, npz: bytes | None = None) -> Path:
    import numpy as np

    folder.mkdir(parents=True)
    (folder / "done.json").write_text(done_json)
    if npz is None:
        np.savez(folder / "final.npz", model__00000=np.arange(6.0))
    else:
        (folder / "final.npz").write_bytes(npz)
    return folder


@pytest.mark.parametrize("done_json,npz,fragment", [
    ("{", None, "done.json: JSONDecodeError"),
    ('{"best_epoch": 2}', b"PK\x03\x04 cut", "final.npz: BadZipFile"),
])
def test_damaged_pretraining_cache_entry_is_moved_aside_not_trusted(tmp_path, caplog, done_json, npz, fragment):
    from medfusion.jobs import set_aside_if_damaged
    from medfusion.runs import stage_folder_problem

    cache = tmp_path / "logs" / PRETRAIN_CACHE_DIR
    good = _stage_folder(cache / "aaaaaaaaaaaaaaaa", '{"best_epoch": 2}')
    bad = _stage_folder(cache / "bbbbbbbbbbbbbbbb", done_json, npz)
    assert stage_folder_problem(good) is None and fragment in stage_folder_problem(bad)
    with caplog.at_level("WARNING", logger="medfusion"):
        set_aside_if_damaged(good, "pre-training cache entry")
        set_aside_if_damaged(bad, "pre-training cache entry")
    assert good.is_dir() and not bad.exists()
    aside = [p for p in cache.iterdir() if p.name.startswith("bbbbbbbbbbbbbbbb.damaged-")]
    assert len(aside) == 1 and (aside[0] / "done.json").read_text() == done_json  # kept, not deleted
    assert f"pre-training cache entry {bad} is damaged ({fragment}" in caplog.text


def test_rescoring_from_an_edited_prediction_file_names_it(tmp_path):
    from medfusion.recompute import rescore_from_predictions
    from medfusion.search import Search

    cfg = load_config(DEMO, {"runtime.logs_dir": str(tmp_path / "logs"), "runtime.run_name": "r",
                             "runtime.resume_mode": "from_predictions"})
    run = _run_folder(tmp_path, cfg)
    pred = run / "predictions" / "metadata" / "fold_0.csv"
    pred.parent.mkdir(parents=True)
    pred.write_text("sample_id,patient,y_true,p_I,p_P,p_R\nP001001AMW_1,1,0,0.7,0.2,0.1\n")
    (run / "jobs" / "metadata").mkdir(parents=True)
    (run / "jobs" / "metadata" / "fold_0.json").write_text('{"combination": "metadata", "fold": 0}')
    search = Search(cfg, None)
    search.state = RunState(run)
    search.state.mark_done("metadata", 0, ["predictions/metadata/fold_0.csv", "jobs/metadata/fold_0.json"])
    pred.write_text("sample_id,patient,y_true\nP001001AMW_1,1,0\n")  # edited by hand afterwards
    with pytest.raises(RunFolderError) as exc:
        rescore_from_predictions(search)
    msg = str(exc.value)
    assert "predictions/metadata/fold_0.csv does not match its recorded checksum" in msg
    assert "--resume_mode auto" in msg and "--resume_mode fresh" in msg


@pytest.mark.parametrize("file_at,fragment", [
    ("logs", "the logs folder {!r} is a file, not a folder; pass a folder with --set runtime.logs_dir=PATH"),
    ("logs/r", "the run folder {!r} is a file, not a folder; move the file away or choose another --run_name"),
])
def test_a_file_where_the_logs_or_run_folder_should_be_is_named(tmp_path, file_at, fragment):
    import logging

    target = tmp_path / file_at
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("not a folder")
    before = _snapshot(tmp_path)
    with pytest.raises(OSError) as exc:
        prepare_run_dir(tmp_path / "logs", "r", logging.getLogger("t"))
    assert fragment.format(str(target)) in str(exc.value)
    assert _snapshot(tmp_path) == before
