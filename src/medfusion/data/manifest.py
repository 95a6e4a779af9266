"""The Manifest: one row per sample, the single table every later stage reads.

Columns of `Manifest.samples` (a pandas DataFrame, default RangeIndex):
  sample_id  str, unique (depth view key + box number, e.g. "P0070012AMW_1")
  patient    int, the grouping key for every split
  visit      str, "P{patient:03d}{appt:02d}{dfu}" (the metadata row this sample uses)
  label      int, index into constants.CLASSES (0=I, 1=P, 2=R)
  match_rule str, how the thermal frame was matched to the depth frame
  for each image modality m: f"{m}_path" (str, absolute file path) and the box in that
  frame's pixels as ints f"{m}_xmin", f"{m}_ymin", f"{m}_xmax", f"{m}_ymax"
  the metadata feature columns (raw, unencoded) named in `feature_columns`
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medfusion.constants import CLASSES, IMAGE_MODALITIES

BOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class Manifest:
    samples: pd.DataFrame
    feature_columns: list
    report: dict = field(default_factory=dict)  # loader counts: match rules, skipped frames by reason, ...

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples["label"].to_numpy(dtype=np.int64)

    @property
    def patients(self) -> np.ndarray:
        return self.samples["patient"].to_numpy()

    def box(self, modality: str, i: int) -> tuple[int, int, int, int]:
        row = self.samples.iloc[i]
        return tuple(int(row[f"{modality}_{k}"]) for k in BOX_FIELDS)

    def subset(self, mask_or_index) -> "Manifest":
        """Rows selected by a boolean mask or positional indices, index reset."""
        sel = np.asarray(mask_or_index)
        rows = self.samples[sel] if sel.dtype == bool else self.samples.iloc[sel]
        return Manifest(rows.reset_index(drop=True), list(self.feature_columns), dict(self.report))

    def class_counts(self) -> dict:
        counts = np.bincount(self.labels, minlength=len(CLASSES))
        return {c: int(n) for c, n in zip(CLASSES, counts)}

    def validate(self) -> None:
        """Structural check used by tests and before training."""
        required = ["sample_id", "patient", "visit", "label", "match_rule"]
        for m in IMAGE_MODALITIES:
            required += [f"{m}_path"] + [f"{m}_{k}" for k in BOX_FIELDS]
        missing = [c for c in required + list(self.feature_columns) if c not in self.samples.columns]
        if missing:
            raise ValueError(f"manifest is missing columns: {missing}")
        if self.samples["sample_id"].duplicated().any():
            dup = self.samples.loc[self.samples["sample_id"].duplicated(), "sample_id"].iloc[0]
            raise ValueError(f"manifest has duplicated sample_id {dup!r}")
