"""A search on a dataset that would silently corrupt the study stops before any run folder exists (issue 13,
items 1, 2, 3 and 7 end to end): one message naming the file, column, row or value; the logs folder and the
shared pre-training cache are left exactly as they were."""

import hashlib
from pathlib import Path

import pytest

from medfusion import cli
from medfusion.constants import PRETRAIN_CACHE_DIR
from tests.data.conftest import B1, build_layout, meta_row

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def _dataset(tmp_path) -> Path:
    labels = "IPRIPR"
    meta = [meta_row(p, p, 0, 1, labels[p - 1], age=50 + p) for p in range(1, 7)]
    depth = {f"{p}_P{p:03d}001ADMW.png": [(1, B1)] for p in range(1, 7)}
    thermal = {f"{10 + p}_P{p:03d}001ATMW.png": [(1, B1)] for p in range(1, 7)}
    return build_layout(tmp_path / "data", meta, depth, thermal)


def _edit_meta(root: Path, old: str, new: str, count: int = 1) -> None:
    p = root / "metadata.csv"
    text = p.read_text(encoding="utf-8-sig")
    assert old in text
    p.write_text("\ufeff" + text.replace(old, new, count), encoding="utf-8")


def _duplicated_label(root):
    _edit_meta(root, "Empty Col", "Healing Phase Abs")


def _stray_text(root):
    p = root / "metadata.csv"
    lines = p.read_text(encoding="utf-8-sig").splitlines()
    lines[3] = lines[3].replace(",53,", ",fifty-three,")  # Age of patient 3
    p.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")


def _swapped_boxes(root):
    d, t = root / "bounding_boxes_depth.csv", root / "bounding_boxes_thermal.csv"
    d_text, t_text = d.read_text(), t.read_text()
    d.write_text(t_text)
    t.write_text(d_text)


def _cut_short(root):
    p = root / "metadata.csv"
    p.write_bytes(p.read_bytes().rstrip(b"\r\n")[:-8])


def _negative_appt(root):
    _edit_meta(root, "4,4,0,1,", "4,4,-1,1,")


CASES = [
    (_duplicated_label, ["metadata.csv", "duplicated column name", "'Healing Phase Abs' is column 6 and 13"]),
    (_stray_text, ["column 'Age' holds numbers in 5 rows but 1 value(s) that are not numbers", "row 3 'fifty-three'"]),
    (_swapped_boxes, ["look swapped", "bounding_boxes_depth.csv", "bounding_boxes_thermal.csv"]),
    (_cut_short, ["metadata.csv", "looks cut short: its last row 6 (line 7)"]),
    (_negative_appt, ["row 4 (line 5 counting the header) has Appt#='-1', outside 0..99"]),
]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("damage,fragments", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_search_on_a_corrupting_dataset_stops_before_any_run_folder(tmp_path, capsys, monkeypatch, damage, fragments):
    import tensorflow as tf

    from medfusion.training import devices

    # in-process, TensorFlow has started: the real set-up would change visible devices (an error on a GPU machine)
    monkeypatch.setattr(devices, "configure_strategy", lambda rt: tf.distribute.OneDeviceStrategy("/cpu:0"))
    root = _dataset(tmp_path)
    damage(root)
    logs = tmp_path / "logs"
    entry = logs / PRETRAIN_CACHE_DIR / "0123456789abcdef"
    entry.mkdir(parents=True)
    (entry / "done.json").write_text('{"best_epoch": 3}')
    before = _snapshot(logs)
    rc = cli.main(["--config", DEMO, "--data_dir", str(root), "--cv_folds", "2", "--run_name", "r",
                   "--device_mode", "cpu", "--set", f"runtime.logs_dir={logs}", "--set", "data.demo=false"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    for fragment in fragments:
        assert fragment in err, err[-2000:]
    assert "Traceback" not in err
    assert _snapshot(logs) == before and not (logs / "r").exists()
