"""Environment problems: an unusable logs folder, a full disk."""

import errno
import subprocess
import sys
from pathlib import Path

import medfusion.search
from medfusion import cli

ROOT = Path(__file__).resolve().parents[1]


def test_logs_folder_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the logs folder should be")
    cmd = [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "configs/demo.yaml"),
           "--set", f"runtime.logs_dir={blocker}", "--set", "data.demo_patients=24",
           "--set", f"data.data_dir={tmp_path / 'data'}", "--set", f"data.demo_dir={tmp_path / 'data'}",
           "--cv_folds", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2
    assert str(blocker) in proc.stderr and "runtime.logs_dir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_full_disk_says_how_to_resume(monkeypatch, capsys, tmp_path):
    def full_disk(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "logs" / "results.csv"))

    monkeypatch.setattr(medfusion.search.Search, "run", full_disk)
    # in-process, TensorFlow has long started (other tests ran ops): configure_strategy would change the visible
    # devices too late (on a machine with a GPU that raises). The strategy is not what this test is about.
    import medfusion.training.devices as devices
    import tensorflow as tf

    monkeypatch.setattr(devices, "configure_strategy", lambda rt: tf.distribute.OneDeviceStrategy("/cpu:0"))
    rc = cli.main(["--config", str(ROOT / "configs/demo.yaml"), "--device_mode", "cpu", "--run_name", "full",
                   "--set", f"runtime.logs_dir={tmp_path / 'logs'}"])
    assert rc == 2
    out = capsys.readouterr().err
    assert "disk is full" in out and "results.csv" in out and "--resume_mode auto" in out
