"""Dataset check: load and validate a dataset without training, and say what a user needs to know
before a long run (`python main.py --mode check_data --data_dir PATH`; a search prints the short
form before training).

What is checked (docs/data_problems.md explains every message):

* everything `load_dfu` checks (files, columns, labels, boxes, frame headers; see dfu.py), with
  its skip counts and first file names;
* classes: a class with no sample is a problem; a class with fewer patients than folds a warning;
* splits, computed exactly as the search will (`subsample_patients` with --data_percentage and
  the seed, then `make_folds`): too few patients for --cv_folds, a --data_percentage that leaves
  too little, a fold whose training part lacks a class are problems; a validation part without a
  class is a warning;
* the metadata modality with no feature column left is a problem;
* damaged image data is a problem, because a search would stop at that file: without `decode`
  (the check every search runs before its run folder exists) every referenced colour frame's IHDR /
  PLTE / IDAT chunks are checked against their CRC-32 (integrity.py: one read, no decoding) and a
  map the loader failed to decode is named (the loader decodes every map a sample uses); with
  `decode=True` (check_data mode) every referenced image file is decoded once (a thread pool,
  nothing cached). A search itself decodes each frame
  once, in `images.load_crops`, which caches the crops.

`DatasetCheck.ok` is False exactly when `problems` is non-empty.
The summaries' text is written by check_summary.py.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfusion.constants import CLASSES, IMAGE_MODALITIES, MODALITIES
from medfusion.data.check_summary import N_SHOWN, full_summary, short_summary
from medfusion.data.manifest import Manifest



@dataclass
class DatasetCheck:
    ok: bool
    problems: list[str]  # reasons the dataset cannot be used as configured
    manifest: Manifest | None  # the loaded manifest (all patients, before --data_percentage), if it loaded
    warnings: list[str] = field(default_factory=list)  # worth knowing, not blocking
    data_dir: str = ""
    stats: dict = field(default_factory=dict)
    assignment: dict | None = None  # sample_id -> fold as the search will compute it, when it could

    def summary(self, short: bool = False) -> str:
        return short_summary(self) if short else full_summary(self)


# ----------------------------------------------------------------------------- checking


def _search_modalities(cfg) -> set:
    """The modalities the search will use: those of the explicit combinations, else search.modalities."""
    if cfg.search.combinations:
        mods = {m.strip() for comb in cfg.search.combinations for m in str(comb).split("+")}
    else:
        mods = set(cfg.search.modalities)
    return mods & set(MODALITIES)


def _referenced(manifest: Manifest, modalities=IMAGE_MODALITIES) -> dict[str, int]:
    """Every distinct image file of `modalities` the manifest references -> the number of samples using it."""
    s = manifest.samples
    uses: dict[str, int] = {}
    for m in modalities:
        for p, n in s[f"{m}_path"].value_counts(sort=False).items():
            uses[str(p)] = uses.get(str(p), 0) + int(n)
    return uses


def _damage_problems(manifest: Manifest, log: logging.Logger, stats: dict) -> list[str]:
    """Frames a search would stop at, found before any run folder exists: a colour frame whose PNG chunks fail
    their CRC (integrity.py, no decoding), or a map the loader could not decode (it decodes every map file a
    sample uses, MapFrames.keep, so maps need no second look). check_data decodes everything instead."""
    from medfusion.data.integrity import png_damage
    from medfusion.data.maps import MAP_MODALITIES

    rgb = _referenced(manifest, [m for m in IMAGE_MODALITIES if m not in MAP_MODALITIES])
    maps = _referenced(manifest, MAP_MODALITIES)
    undecodable = manifest.report.get("undecodable_maps", {})
    failures = [(p, why, rgb[p]) for p in sorted(rgb) if (why := png_damage(p))]
    failures += [(p, undecodable[p], maps[p]) for p in sorted(maps) if p in undecodable]
    log.info("data check: %d colour frames checked for damaged image data (PNG chunk checksums), %d maps decoded "
             "by the loader; %d damaged", len(rgb), len(maps), len(failures))
    stats["damaged_files"] = [{"file": p, "error": e, "samples": n} for p, e, n in failures]
    if not failures:
        return []
    shown = "; ".join(e for _, e, _ in failures[:N_SHOWN])
    return [f"{len(failures)} image file(s) used by {sum(n for _, _, n in failures)} sample(s) have damaged image "
            f"data that a decoder refuses; a search would stop at the first one. Replace or delete them: {shown}"
            + (" ..." if len(failures) > N_SHOWN else "")
            + ". (`--mode check_data` decodes every frame and lists all damage)"]


def _decode_all(manifest: Manifest, log: logging.Logger) -> list[tuple[str, str, int]]:
    """Decode every distinct image file the manifest references; (path, error, n_samples) per failure."""
    from medfusion.data.images import read_frame

    uses = _referenced(manifest)
    paths = sorted(uses)

    def one(p):
        try:
            read_frame(p)
            return None
        except (OSError, ValueError) as exc:
            return p, str(exc)

    failures = []
    workers = max(1, min(4, os.cpu_count() or 1))
    n = len(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, res in enumerate(pool.map(one, paths), start=1):
            if res is not None:
                failures.append((res[0], res[1], uses[res[0]]))
            if n >= 200 and i % max(1, n // 4) == 0:
                log.info("check_data: %d/%d image files decoded", i, n)
    log.info("check_data: decoded %d image files, %d failed", n, len(failures))
    return failures


def _load(cfg, log: logging.Logger, data_dir: Path) -> Manifest:
    """The manifest a search would load (the demo generated first when it is the configured data)."""
    from medfusion.data.dfu import load_dfu

    if cfg.data.demo and is_demo_dir(cfg.data):
        from medfusion.data.synthetic import ensure_demo

        ensure_demo(data_dir, seed=cfg.data.demo_seed, n_patients=cfg.data.demo_patients, log=log)
    elif cfg.data.demo and not data_dir.is_dir():
        raise FileNotFoundError(
            f"data directory {str(data_dir)!r} not found. The demo dataset is generated only into data.demo_dir "
            f"({cfg.data.demo_dir!r}), never into another folder: check the path, or leave out --data_dir to "
            "use the demo")
    return load_dfu(data_dir, cfg.data, log, modalities=_search_modalities(cfg))


def _stats(manifest: Manifest) -> dict:
    from medfusion.data.folds import class_patient_counts, patient_labels

    s = manifest.samples
    stats: dict = {"n_samples": len(manifest), "n_visits": int(s["visit"].nunique()),
                   "n_patients": int(s["patient"].nunique()), "n_features": len(manifest.feature_columns)}
    stats["classes_sample"] = manifest.class_counts()
    visit_labels = s.groupby("visit")["label"].first().to_numpy()
    stats["classes_visit"] = dict(zip(CLASSES, np.bincount(visit_labels, minlength=len(CLASSES)).tolist()))
    plab = patient_labels(manifest).to_numpy()
    stats["classes_patient"] = dict(zip(CLASSES, np.bincount(plab, minlength=len(CLASSES)).tolist()))
    stats["patients_with_class"] = class_patient_counts(manifest)
    stats["box_sizes"] = {} if manifest.report.get("metadata_only") else _box_sizes(manifest)
    return stats


def _content_problems(cfg, manifest: Manifest, stats: dict) -> list[str]:
    """Classes without a sample, no feature column for the metadata modality, Appt# numbered from 1."""
    problems = []
    for c, n in stats["classes_sample"].items():
        if n == 0:
            problems.append(f"class {c} has no samples: a 3-class model cannot be trained or scored on it; "
                            f"check the label column {cfg.data.label_column!r} and the skipped frames above")
    if "metadata" in _search_modalities(cfg) and not manifest.feature_columns:
        problems.append("the search uses the metadata modality but no metadata feature column is left "
                        "(see data.feature_columns / data.exclude_columns and the empty columns dropped)")
    if manifest.report.get("appt_numbering"):
        problems.append(manifest.report["appt_numbering"])
    return problems


def _split_checks(cfg, manifest: Manifest, stats: dict) -> tuple[list[str], list[str], dict | None]:
    """(problems, warnings, assignment) of the splits, made exactly as the search will make them."""
    from medfusion.data.folds import (check_class_patients, check_fold_classes, fold_class_counts, make_folds,
                                      subsample_patients)

    n_folds, pct, seed = cfg.search.cv_folds, cfg.search.data_percentage, cfg.search.seed
    problems, warnings, assignment = [], [], None
    stats["split"] = {"cv_folds": n_folds, "data_percentage": pct, "seed": seed}
    if stats["n_patients"] < n_folds:
        problems.append(f"{stats['n_patients']} patients cannot fill {n_folds} folds (every fold needs its own "
                        f"patients): lower --cv_folds to at most {stats['n_patients']}")
        return problems, warnings, assignment
    try:
        sub = subsample_patients(manifest, pct, seed, n_folds=n_folds)
    except ValueError as exc:
        return [str(exc)], warnings, assignment
    stats["split"].update(n_samples=len(sub), n_patients=int(sub.samples["patient"].nunique()))
    lost = [c for c, n in sub.class_counts().items() if n == 0 and stats["classes_sample"][c] > 0]
    if lost:
        problems.append(f"--data_percentage {pct:g} leaves no sample of class {', '.join(lost)}; raise it")
    warnings += check_class_patients(sub, n_folds)
    try:
        assignment = make_folds(sub, n_folds, seed)
        stats["folds"] = fold_class_counts(sub, assignment, n_folds)
        warnings += check_fold_classes(sub, assignment, n_folds)
    except (ValueError, RuntimeError) as exc:
        problems.append(str(exc))
    return problems, warnings, assignment


def _image_warnings(rep: dict) -> list[str]:
    warnings = []
    for key, what in (("depth_boxes", "depth"), ("thermal_boxes", "thermal")):
        b = rep.get(key, {})
        if b.get("small_box"):
            warnings.append(f"{b['small_box']} {what} box(es) are smaller than 8 px on a side (kept; their crops "
                            f"are mostly upscaled), e.g. {', '.join(b['examples']['small_box'][:3])}")
        if b.get("patient_mismatch"):
            warnings.append(f"{b['patient_mismatch']} {what} box row(s) have a Patient# that contradicts their file "
                            f"name and were skipped (the box may belong to another frame), e.g. "
                            f"{', '.join(b['examples']['patient_mismatch'][:3])}: correct the Patient# or the "
                            f"Filename in {b['file']}")
    jpeg = rep.get("jpeg_as_png", {})
    if jpeg.get("count"):
        warnings.append(f"{jpeg['count']} image file(s) hold JPEG data under a .png name (read by their content, but "
                        f"JPEG is lossy and 8-bit: a depth or thermal map saved so has lost its physical units), e.g. "
                        f"{', '.join(jpeg['examples'][:3])}: export them from the source as PNG")
    n_unreadable = sum(e["count"] for e in rep.get("unreadable_files", {}).values())
    if n_unreadable:
        warnings.append(f"{n_unreadable} image file(s) are missing, empty, not images or cut short; their frames "
                        "were skipped (see 'unreadable image files')")
    return warnings


def _decode_problems(manifest: Manifest, log: logging.Logger, stats: dict) -> list[str]:
    failures = _decode_all(manifest, log)
    stats["decode_failures"] = [{"file": p, "error": e, "samples": n} for p, e, n in failures]
    stats["decoded"] = True
    if not failures:
        return []
    shown = "; ".join(e for _, e, _ in failures[:N_SHOWN])
    return [f"{len(failures)} image file(s) used by {sum(n for _, _, n in failures)} sample(s) pass the header "
            f"check but cannot be decoded (damaged image data); a search would stop at the first one. Replace "
            f"or delete them: {shown}" + (" ..." if len(failures) > N_SHOWN else "")]


def check_dataset(cfg, log: logging.Logger | None = None, *, decode: bool = False) -> DatasetCheck:
    """Load the configured dataset and check it for a search with this config (see the module docstring).

    Never raises for bad data: every reason the dataset cannot be used becomes a line in `problems`.
    """
    log = log or logging.getLogger("medfusion.data.check")
    data_dir = Path(cfg.data.data_dir)
    try:
        manifest = _load(cfg, log, data_dir)
    except (OSError, ValueError) as exc:
        return DatasetCheck(False, [str(exc)], None, data_dir=str(data_dir))
    rep = manifest.report
    stats = _stats(manifest)
    problems = _content_problems(cfg, manifest, stats)
    split_problems, warnings, assignment = _split_checks(cfg, manifest, stats)
    problems += split_problems
    warnings += _metadata_warnings(rep, cfg.data.metadata_csv) + _image_warnings(rep)
    if not rep.get("metadata_only"):  # the full decode finds everything the checksums find
        problems += _decode_problems(manifest, log, stats) if decode else _damage_problems(manifest, log, stats)
    return DatasetCheck(not problems, problems, manifest, warnings, str(data_dir), stats, assignment)


def _metadata_warnings(rep: dict, name: str) -> list[str]:
    """metadata.csv choices a user should confirm: conflicting duplicated visits, text columns holding numbers,
    rows with fewer fields than the header."""
    out = []
    if rep.get("duplicate_visits_conflicting_labels"):
        out.append(f"{rep['duplicate_visits_conflicting_labels']} duplicated visit row(s) of {name} carry another "
                   f"label than the first row of the same (Patient#, Appt#, DFU#), which is the one used: "
                   f"{'; '.join(rep.get('duplicate_visits_conflict_examples', []))}. Correct or delete the wrong row")
    for col, n in rep.get("column_types", {}).get("text_with_numbers", {}).items():
        out.append(f"column {col!r} of {name} is read as text (categories) although {n['numbers']} of its "
                   f"{n['filled']} values are numbers: correct its text values if it is a measurement, or list it in "
                   "data.exclude_columns")
    short = rep.get("metadata_short_rows") or []
    if short:
        out.append(f"{len(short)} row(s) of {name} have fewer fields than its header (missing trailing cells read as "
                   f"empty): rows {', '.join(map(str, short[:N_SHOWN]))}" + (" ..." if len(short) > N_SHOWN else ""))
    return out


def is_demo_dir(data_cfg) -> bool:
    """True when data_dir is the configured demo folder, the only place the demo is generated into."""
    return Path(data_cfg.data_dir).resolve() == Path(data_cfg.demo_dir).resolve()


def run_check_data(cfg, log: logging.Logger) -> int:
    """`--mode check_data`: check and decode everything, print the full summary (at every verbosity).

    Returns 0 when the dataset can be used as configured, 1 otherwise (the reasons are in the summary).
    """
    check = check_dataset(cfg, log, decode=True)
    log.warning("%s", check.summary())
    return 0 if check.ok else 1


# ----------------------------------------------------------------------------- statistics


def _box_sizes(manifest: Manifest) -> dict:
    out = {}
    s = manifest.samples
    for m in IMAGE_MODALITIES:
        cols = [f"{m}_path", f"{m}_xmin", f"{m}_ymin", f"{m}_xmax", f"{m}_ymax"]
        u = s[cols].drop_duplicates()
        w = (u[f"{m}_xmax"] - u[f"{m}_xmin"]).to_numpy()
        h = (u[f"{m}_ymax"] - u[f"{m}_ymin"]).to_numpy()
        out[m] = {"n_boxes": int(len(u)),
                  "width": [int(w.min()), float(np.median(w)), int(w.max())] if len(u) else [],
                  "height": [int(h.min()), float(np.median(h)), int(h.max())] if len(u) else []}
    return out
