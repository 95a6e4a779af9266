"""Session-wide fixtures: one tiny dataset and one finished tiny search that many tests read.

Tests that change a run folder copy it first (`copy_run`), so the shared search stays as it
finished and the suite pays for it once.
"""

from __future__ import annotations

import shutil

import pytest

from medfusion.data.synthetic import generate_demo
from tests.harness import run_search


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """24 demo patients in the real DFU layout (seed 3)."""
    return generate_demo(tmp_path_factory.mktemp("tiny_data") / "tiny", seed=3, n_patients=24)


@pytest.fixture(scope="session")
def tiny_search(tmp_path_factory, tiny_data):
    """A finished 2-fold search of metadata+depth_rgb (and its baselines) on tiny_data: (run folder, process)."""
    logs = tmp_path_factory.mktemp("tiny_search") / "logs"
    return run_search(logs, tiny_data, "--combinations", "metadata+depth_rgb", run_name="shared")


@pytest.fixture
def copy_run(tmp_path, tiny_search):
    """A private copy of the shared search's logs folder; returns the copied run folder."""
    run, _ = tiny_search
    logs = tmp_path / "logs"
    shutil.copytree(run.parent, logs)
    return logs / run.name
