"""A metadata-only dataset: metadata.csv alone -> a Manifest whose samples are visits.

The public part of the reference study's data is the clinical table; a user who has only it
can still run the metadata search (`--modalities metadata` or `--combinations metadata`). No
box file or image folder is read. Every metadata row (one wound visit, duplicates dropped as
in a full load) is one sample; its sample_id is the visit key as the file names write it
(`P{patient:03d}{appt:02d}{dfu}`, e.g. P257001), so samples and visits coincide and per-view
and per-visit scores are equal. Unlike a search with images, visits without any frame count
too. Every metadata check of the full loader runs (read_metadata: keys, labels, columns,
placeholders, label leaks). The image columns the Manifest carries are left empty (no path,
no box), and `report["metadata_only"]` is True so that later stages skip image statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES, IMAGE_MODALITIES
from medfusion.data.manifest import BOX_FIELDS, Manifest
from medfusion.data.metadata import KEY_COLUMNS, blank, read_metadata

MATCH_RULE = "metadata_only"


def visit_key(patient: int, appt: int, dfu: int) -> str:
    """The visit key image file names carry: P + patient (3 digits) + appointment (2) + DFU number (1)."""
    return f"P{int(patient):03d}{int(appt):02d}{int(dfu)}"


def load_metadata_only(root: Path, data_cfg: DataConfig, log: logging.Logger) -> Manifest:
    """Read `root/<data.metadata_csv>` into a Manifest of one sample per visit (see the module docstring)."""
    report: dict = {"metadata_only": True}
    meta, features = read_metadata(root / data_cfg.metadata_csv, data_cfg, log, report)
    keys = meta[list(KEY_COLUMNS)].to_numpy(dtype=np.int64)
    visits = [visit_key(*k) for k in keys]
    samples = pd.DataFrame({"sample_id": visits, "patient": keys[:, 0], "visit": visits,
                            "label": meta["__label"].to_numpy(dtype=np.int64), "match_rule": MATCH_RULE,
                            "appt": keys[:, 1], "dfu": keys[:, 2], "box_number": 0})
    for m in IMAGE_MODALITIES:  # the Manifest's image columns, empty: nothing of an image is read
        samples[f"{m}_path"] = None
        for f in BOX_FIELDS:
            samples[f"{m}_{f}"] = pd.array([pd.NA] * len(samples), dtype="Int64")
    samples = pd.concat([samples, meta[features].reset_index(drop=True)], axis=1)
    missing = {c: int(blank(meta[c]).sum()) for c in features}
    report.update({
        "match_rules": {}, "skipped": {}, "thermal_unusable": {}, "unreadable_files": {}, "frame_sizes": {},
        "n_depth_frames": 0, "n_thermal_frames": 0, "n_metadata_rows": int(len(meta)),
        "n_samples": int(len(samples)), "n_visits": int(len(samples)),
        "n_patients": int(samples["patient"].nunique()), "visits_without_samples": 0,
        "class_counts": {c: int((samples["label"] == i).sum()) for i, c in enumerate(CLASSES)},
        "missing_values": {"n_rows": int(len(meta)), "columns": dict(sorted(
            ((c, n) for c, n in missing.items() if n), key=lambda kv: (-kv[1], kv[0])))},
    })
    log.info("metadata-only dataset %s: %d visits (one sample each), %d patients, %d feature columns; classes %s; "
             "no box file or image folder read", root / data_cfg.metadata_csv, len(samples),
             report["n_patients"], len(features), report["class_counts"])
    manifest = Manifest(samples, features, report)
    manifest.validate()
    return manifest
