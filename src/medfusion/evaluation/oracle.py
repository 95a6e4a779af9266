"""The Bayes oracle a synthetic dataset ships (oracle.csv): a ceiling to read the scores against."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medfusion.constants import CLASSES
from medfusion.models.metrics import score_predictions
from medfusion.runs import atomic_write_csv, read_run_csv

log = logging.getLogger("medfusion")


class OracleReference:
    """Scores the shipped oracle on each fold's validation samples; oracle_reference.csv in the run folder."""

    def __init__(self, data_dir, run_dir: Path, modalities):
        self.path = Path(run_dir) / "oracle_reference.csv"
        self.modalities = sorted(modalities)
        self.rows: list[dict] = []
        self.table = self._load(Path(data_dir) / "oracle.csv")

    @staticmethod
    def _load(path: Path):
        if not path.is_file():
            return None
        oracle = pd.read_csv(path)
        if "sample_id" not in oracle.columns:
            log.warning("%s has no sample_id column: not a medfusion oracle file, ignored", path)
            return None
        return oracle.set_index("sample_id")

    def score_fold(self, k: int, ids: pd.Series, y) -> None:
        if self.table is None:
            return
        if not ids.isin(self.table.index).all():
            log.warning("oracle.csv does not cover every sample; oracle reference skipped")
            self.table = None
            return
        o = self.table.loc[ids.to_numpy()]
        self.rows = [r for r in self.rows if r["fold"] != k]
        for name, prefix in [("oracle:all", "")] + [(f"oracle:{m}", f"{m}_") for m in self.modalities]:
            cols = [f"{prefix}p_{c}" for c in CLASSES]
            if all(c in o.columns for c in cols):
                self.rows.append({"reference": name, "fold": k, "qwk": score_predictions(y, o[cols].to_numpy())["qwk"]})
        atomic_write_csv(self.path, pd.DataFrame(self.rows))

    def summary(self):
        if not self.rows and self.path.is_file():
            self.rows = read_run_csv(self.path).to_dict("records")
        if not self.rows:
            return None
        return pd.DataFrame(self.rows).groupby("reference")["qwk"].mean()
