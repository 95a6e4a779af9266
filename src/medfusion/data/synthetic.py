"""The embedded demo dataset: a small synthetic DFU study in exactly the DATA_FORMAT.md layout,
plus a Bayes oracle (`oracle.csv`) that says how well each modality and their fusion can do.

Latent signal. Class y in (I, P, R) is drawn i.i.d. per visit from PRIOR (the real balance);
the ordinal class means are MU = (-1, 0, +1). Three conditionally independent (given y)
latents carry the signal, one per source:

* z_meta ~ N(MU[y], SIGMA["metadata"]) per visit, written noiselessly (4-decimal rounding)
  as `Wound Score` = 12 + 3 z (never missing) and `Wound Centre Temperature Normalized (°C)`
  = 0.3 + 0.6 z (often missing at visit 0, like the real temperatures).
* z_depth ~ N(MU[y], SIGMA["depth"]) per depth frame: the wound blob's colour in depth_rgb and
  its depth below the surrounding skin in depth_map are linear in t = clip((z + 2.5) / 5, 0, 1)
  (a wide pixel range per unit of z, so a small CNN learns it in a few epochs; clipping touches
  < 2% of frames).
* z_thermal ~ N(MU[y], SIGMA["thermal"]) per thermal frame: the wound's temperature minus the
  surrounding skin's in thermal_map, and its colour in thermal_rgb, are linear in t.

Frames vary the way real frames do, independently of the class (so the oracle stays exact):
the camera distance (the skin at 450-1150 mm, the floor 250-600 mm behind it), a slight tilt of
the foot, clusters and a sprinkle of invalid 0 mm pixels and an invalid band of varying width,
room temperature (19-26 °C) and skin temperature (6-9 °C above it) per visit, and in some frames
an unrelated near object (depth) or hot object (thermal) away from the foot. The class signal
lives only in the wound relative to the skin around it, which maps.py's `relative` rule reads;
whole-frame min-max scaling (`minmax_frame`) mixes the nuisances in. One depth map is dead (all
invalid), as a sensor sometimes delivers: the loader skips it by name (`map_box_no_data`).
Every other metadata column is label-free noise, apart from the leaky `Healing Phase` /
`Phase Confidence (%)` columns.

The oracle is computed after the files are written, from `load_dfu` on the generated folder, so
its sample ids and depth->thermal frame matching are exactly the loader's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medfusion.config import DataConfig
from medfusion.constants import CLASSES
from medfusion.data.synthetic_frames import (DEAD_DEPTH_FRAME, DEPTH_WH, THERMAL_REF_BOX, THERMAL_WH, VIEWS,
                                             other_choice, place_boxes, render_frame)
from medfusion.data.synthetic_metadata import COLUMN_ORDER, patient_fields, visit_fields, wound_fields

PRIOR = np.array([0.31, 0.56, 0.13])
MU = np.array([-1.0, 0.0, 1.0])
# chosen by Monte Carlo: each single source alone gives QWK ~0.55, all three ~0.79
SIGMA = {"metadata": 0.75, "depth": 0.75, "thermal": 0.75}
ORACLE_MODALITIES = ("metadata", "depth_rgb", "depth_map", "thermal_rgb", "thermal_map")
SCENARIOS = ("exact", "relax_angle", "relax_zoom", "relax_debridement", "none")  # how a depth view finds its thermal
BOX_CSV_COLUMNS = ["Filename", "Patient#", "Appt#", "DFU#", "DebriStat", "Camera", "Angle", "Bounding Box Number",
                   "Xmin", "Ymin", "Xmax", "Ymax"]


def posterior(zs, sigmas) -> np.ndarray:
    """P(y | z_1..z_k) for independent Gaussian observations; zs: list of (N,) arrays."""
    lp = np.tile(np.log(PRIOR), (len(zs[0]), 1))
    for z, s in zip(zs, sigmas):
        lp = lp - 0.5 * ((np.asarray(z, float)[:, None] - MU[None, :]) / s) ** 2
    lp -= lp.max(axis=1, keepdims=True)
    p = np.exp(lp)
    return p / p.sum(axis=1, keepdims=True)


# ----------------------------------------------------------------------------- generation


class _Study:
    """The study drawn from ONE random stream, in a fixed order: patients, visits, views, frames.

    Every draw happens in the order of the first release's single function, so the demo stays bit-identical
    (tests/data/test_synthetic.py pins a digest of the small demo); frames are rendered later from the seeds recorded in `jobs`.
    """

    def __init__(self, rng):
        self.rng = rng
        self.meta_rows, self.depth_box_rows, self.thermal_box_rows = [], [], []
        self.z_meta, self.z_depth, self.z_thermal = {}, {}, {}
        self.jobs = []  # (kind, name, boxes, z, seed) rendered later
        self.forced = list(SCENARIOS)  # the first single-view visits show every scenario once
        self.used_names = set()

    def frame_name(self, p, a, d, view, cam):
        while True:
            name = f"{int(self.rng.integers(1, 1000))}_P{p:03d}{a:02d}{d}{view[0]}{cam}{view[1]}{view[2]}.png"
            if name not in self.used_names:
                self.used_names.add(name)
                return name

    def add_patient(self, p: int) -> None:
        rng = self.rng
        pf = patient_fields(rng)
        n_wounds = 1 if rng.random() < 0.8 else 2
        n_visits = int(rng.integers(2, 5))
        wounds = {d: wound_fields(rng) for d in range(1, n_wounds + 1)}
        days = 0
        for a in range(n_visits):
            days = 0 if a == 0 else days + int(rng.integers(10, 45))
            for d in range(1, n_wounds + 1):
                y = int(rng.choice(3, p=PRIOR))
                zm = round(float(rng.normal(MU[y], SIGMA["metadata"])), 4)
                self.z_meta[(p, a, d)] = zm
                self.meta_rows.append({
                    "Patient#": p, "Appt#": a, "DFU#": d, "Appt Days": days,
                    "Healing Phase Abs": CLASSES[y],
                    "Healing Phase": CLASSES[y] + str(rng.choice(["-", "", "+"])),
                    "Phase Confidence (%)": int(rng.integers(50, 101)),
                    **pf, **wounds[d], **visit_fields(rng, a, zm),
                })
                self.add_views(p, a, d, y)

    def add_views(self, p, a, d, y) -> None:
        """The depth views of one visit, each with its thermal frame (or none) by a drawn scenario."""
        rng = self.rng
        n_views = 1 if rng.random() < 0.75 else 2
        views = [VIEWS[i] for i in rng.choice(len(VIEWS), size=n_views, replace=False)]
        thermal_views = []
        for view in views:
            if n_views == 1:
                scen = self.forced.pop(0) if self.forced else str(rng.choice(
                    list(SCENARIOS), p=[0.80, 0.07, 0.06, 0.06, 0.01]))
            else:
                scen = "exact" if rng.random() < 0.85 else "skip"
            tv = self._thermal_view(scen, view)
            n_boxes = 2 if rng.random() < 0.08 else 1
            dname = self.frame_name(p, a, d, view, "D")
            dboxes = place_boxes(rng, n_boxes, DEPTH_WH)
            self.z_depth[dname] = float(rng.normal(MU[y], SIGMA["depth"]))
            self.jobs.append(("D", dname, dboxes, self.z_depth[dname], int(rng.integers(2**31))))
            if rng.random() >= 0.01:  # a rare depth frame has no box row
                for k, b in enumerate(dboxes, start=1):
                    self.depth_box_rows.append((dname, str(p), a, d, view[0], "D", view[1] + view[2], k, *b))
            if tv is not None and tv not in thermal_views:
                thermal_views.append(tv)
                self.add_thermal(p, a, d, y, tv, n_boxes if tv == view else 1)
        if not thermal_views and n_views == 2:  # keep the visit usable
            tv = (views[0][0], other_choice(rng, "RML", views[0][1]), views[0][2])
            self.add_thermal(p, a, d, y, tv, 1)

    def _thermal_view(self, scen: str, view):
        """The thermal frame's view for a depth view under scenario `scen` (None: no thermal frame)."""
        rng = self.rng
        deb, ang, zoom = view
        if scen == "exact":
            return view
        if scen == "relax_angle":
            return (deb, other_choice(rng, "RML", ang), zoom)
        if scen == "relax_zoom":
            return (deb, str(rng.choice(list("RML"))), other_choice(rng, "ZW", zoom))
        if scen == "relax_debridement":
            return (other_choice(rng, "BA", deb), str(rng.choice(list("RML"))), str(rng.choice(list("ZW"))))
        return None

    def add_thermal(self, p, a, d, y, tv, n_boxes: int) -> None:
        rng = self.rng
        tname = self.frame_name(p, a, d, tv, "T")
        tboxes = place_boxes(rng, n_boxes, THERMAL_WH, avoid=THERMAL_REF_BOX)
        self.z_thermal[tname] = float(rng.normal(MU[y], SIGMA["thermal"]))
        self.jobs.append(("T", tname, tboxes, self.z_thermal[tname], int(rng.integers(2**31))))
        for k, b in enumerate(tboxes, start=1):
            self.thermal_box_rows.append((tname, f"{p:03d}", a, d, tv[0], "T", tv[1] + tv[2], k, *b))

    def write_tables(self, root: Path) -> None:
        """metadata.csv (with two duplicated visit rows, as in the real data) and the two box CSVs."""
        for i in self.rng.choice(len(self.meta_rows), size=2, replace=False):  # the loader keeps the first
            self.meta_rows.append(dict(self.meta_rows[int(i)]))
        meta = pd.DataFrame(self.meta_rows)
        meta.insert(0, "ID", np.arange(1, len(meta) + 1))
        cols = COLUMN_ORDER + [c for c in meta.columns if c not in COLUMN_ORDER]
        meta[cols].to_csv(root / "metadata.csv", index=False, encoding="utf-8-sig", lineterminator="\n")
        for rows, name in ((self.depth_box_rows, "bounding_boxes_depth.csv"),
                           (self.thermal_box_rows, "bounding_boxes_thermal.csv")):
            pd.DataFrame(rows, columns=BOX_CSV_COLUMNS).to_csv(root / name, index=False, lineterminator="\n")


# patient numbers are drawn from 1..DEMO_PATIENT_POOL (the demo's random stream depends on it); a larger
# study (bench/peak_rss.sh: real size, ~3,100 samples) draws from every 3-digit number the file names allow
DEMO_PATIENT_POOL = 299
MAX_PATIENTS = 999


def _patient_numbers(rng: np.random.Generator, n_patients: int) -> np.ndarray:
    if not 1 <= n_patients <= MAX_PATIENTS:
        raise ValueError(f"n_patients={n_patients}: the file names hold a 3-digit patient number, so a synthetic "
                         f"study has 1 to {MAX_PATIENTS} patients")
    pool = DEMO_PATIENT_POOL if n_patients <= DEMO_PATIENT_POOL else MAX_PATIENTS
    return np.sort(rng.choice(np.arange(1, pool + 1), size=n_patients, replace=False))


def _generate_into(root: Path, seed: int, n_patients: int, log: logging.Logger) -> dict:
    rng = np.random.default_rng(seed)
    for folder in ("depth_rgb", "depth_map", "thermal_rgb", "thermal_map"):
        (root / folder).mkdir(parents=True)
    study = _Study(rng)
    for p in _patient_numbers(rng, n_patients):
        study.add_patient(int(p))
    study.write_tables(root)
    depth_names = [j[1] for j in study.jobs if j[0] == "D"]
    dead = depth_names[DEAD_DEPTH_FRAME] if len(depth_names) > DEAD_DEPTH_FRAME else None
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        list(pool.map(partial(render_frame, root, seed, dead), study.jobs))
    return {"z_meta": study.z_meta, "z_depth": study.z_depth, "z_thermal": study.z_thermal}


def _write_oracle(root: Path, latents: dict) -> pd.DataFrame:
    from medfusion.data.dfu import load_dfu, parse_frame_name

    quiet = logging.getLogger("medfusion.data.synthetic.oracle")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    man = load_dfu(root, DataConfig(), quiet)
    s = man.samples
    dnames = [Path(p).name for p in s["depth_rgb_path"]]
    tnames = [Path(p).name for p in s["thermal_rgb_path"]]
    zm = np.array([latents["z_meta"][parse_frame_name(n).visit] for n in dnames])
    zd = np.array([latents["z_depth"][n] for n in dnames])
    zt = np.array([latents["z_thermal"][n] for n in tnames])
    sm, sd, st = SIGMA["metadata"], SIGMA["depth"], SIGMA["thermal"]
    out = pd.DataFrame({"sample_id": s["sample_id"].to_numpy(), "label": s["label"].to_numpy()})
    parts = {
        "": posterior([zm, zd, zt], [sm, sd, st]),
        "metadata_": posterior([zm], [sm]),
        "depth_rgb_": posterior([zd], [sd]),
        "depth_map_": posterior([zd], [sd]),
        "thermal_rgb_": posterior([zt], [st]),
        "thermal_map_": posterior([zt], [st]),
    }
    for prefix, p in parts.items():
        for j, c in enumerate(CLASSES):
            out[f"{prefix}p_{c}"] = p[:, j]
    out.to_csv(root / "oracle.csv", index=False, float_format="%.6f", lineterminator="\n")
    return out


# bump when the generated data changes: 2 = frames in physical units varying like real ones (2026-12)
DEMO_GENERATOR = 2
DEMO_STAMP = "demo.json"


def generate_demo(out_dir, seed: int = 7, n_patients: int = 120, log: logging.Logger | None = None) -> Path:
    """Write the demo dataset (DATA_FORMAT.md layout + oracle.csv) into out_dir, atomically.

    Generates into a temporary folder next to out_dir and renames it, so an interrupted run never
    leaves a half dataset. Refuses a non-empty out_dir.
    """
    log = log or logging.getLogger("medfusion.data.synthetic")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{str(out)!r} exists and is not empty; the demo dataset is only generated into "
                              "a new or empty folder (delete it, or set data.demo_dir to another folder)")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        latents = _generate_into(tmp, seed, n_patients, log)
        _write_oracle(tmp, latents)
        (tmp / DEMO_STAMP).write_text(json.dumps(_demo_stamp(seed, n_patients)) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("demo dataset (seed %d, %d patients) written to %s: %.1f MB in %.1fs",
             seed, n_patients, out, size / 1e6, time.time() - t0)
    return out


def _demo_stamp(seed: int, n_patients: int) -> dict:
    return {"generator": DEMO_GENERATOR, "seed": int(seed), "n_patients": int(n_patients)}


def ensure_demo(out_dir, seed: int = 7, n_patients: int = 120, log: logging.Logger | None = None) -> Path:
    """Generate the demo into out_dir only when out_dir/metadata.csv is missing; never overwrites.

    A folder made by another generator version or with other settings (an older checkout's demo) is
    used as it is, with a warning that says how to get the current one.
    """
    log = log or logging.getLogger("medfusion.data.synthetic")
    out = Path(out_dir)
    if (out / "metadata.csv").is_file():
        try:
            found = json.loads((out / DEMO_STAMP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            found = None
        if found != _demo_stamp(seed, n_patients):
            log.warning("demo dataset at %s was made %s, not by this medfusion's demo generator %s: it is used as it "
                        "is and its scores will differ from docs/benchmarks.md; delete the folder to regenerate it",
                        out, f"with {found}" if found else "by an older medfusion (no demo.json)",
                        _demo_stamp(seed, n_patients))
        else:
            log.info("demo dataset found at %s (not regenerated)", out)
        return out
    log.info("generating the demo dataset into %s (seed %d, %d patients)", out, seed, n_patients)
    return generate_demo(out, seed=seed, n_patients=n_patients, log=log)
