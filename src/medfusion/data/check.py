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
* with `decode=True` (check_data mode) every image file the manifest references is decoded once
  (a thread pool, nothing cached): damage a header cannot show is a problem, because a search
  would stop at that file. A search does not decode here; its `images.load_crops` decodes each
  frame once and caches the crops.

`DatasetCheck.ok` is False exactly when `problems` is non-empty.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfusion.constants import CLASSES, IMAGE_MODALITIES, MODALITIES
from medfusion.data.manifest import Manifest

N_SHOWN = 5  # file names shown per reason
N_MISSING_SHOWN = 8  # metadata columns shown in the missing-value line


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
        return _short_summary(self) if short else _full_summary(self)


# ----------------------------------------------------------------------------- checking


def _search_modalities(cfg) -> set:
    """The modalities the search will use: those of the explicit combinations, else search.modalities."""
    if cfg.search.combinations:
        mods = {m.strip() for comb in cfg.search.combinations for m in str(comb).split("+")}
    else:
        mods = set(cfg.search.modalities)
    return mods & set(MODALITIES)


def _decode_all(manifest: Manifest, log: logging.Logger) -> list[tuple[str, str, int]]:
    """Decode every distinct image file the manifest references; (path, error, n_samples) per failure."""
    from medfusion.data.images import read_frame

    s = manifest.samples
    uses: dict[str, int] = {}
    for m in IMAGE_MODALITIES:
        for p, n in s[f"{m}_path"].value_counts(sort=False).items():
            uses[str(p)] = uses.get(str(p), 0) + int(n)
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


def check_dataset(cfg, log: logging.Logger | None = None, *, decode: bool = False) -> DatasetCheck:
    """Load the configured dataset and check it for a search with this config (see the module docstring).

    Never raises for bad data: every reason the dataset cannot be used becomes a line in `problems`.
    """
    from medfusion.data.dfu import load_dfu
    from medfusion.data.folds import (
        check_class_patients,
        check_fold_classes,
        class_patient_counts,
        fold_class_counts,
        make_folds,
        patient_labels,
        subsample_patients,
    )

    log = log or logging.getLogger("medfusion.data.check")
    data_dir = Path(cfg.data.data_dir)
    problems: list[str] = []
    warnings: list[str] = []
    try:
        if cfg.data.demo and is_demo_dir(cfg.data):
            from medfusion.data.synthetic import ensure_demo

            ensure_demo(data_dir, seed=cfg.data.demo_seed, n_patients=cfg.data.demo_patients, log=log)
        elif cfg.data.demo and not data_dir.is_dir():
            raise FileNotFoundError(
                f"data directory {str(data_dir)!r} not found. The demo dataset is generated only into data.demo_dir "
                f"({cfg.data.demo_dir!r}), never into another folder: check the path, or leave out --data_dir to "
                "use the demo")
        manifest = load_dfu(data_dir, cfg.data, log, modalities=_search_modalities(cfg))
    except (OSError, ValueError) as exc:
        return DatasetCheck(False, [str(exc)], None, data_dir=str(data_dir))

    rep = manifest.report
    s = manifest.samples
    stats: dict = {"n_samples": len(manifest), "n_visits": int(s["visit"].nunique()),
                   "n_patients": int(s["patient"].nunique()), "n_features": len(manifest.feature_columns)}
    stats["classes_sample"] = manifest.class_counts()
    visit_labels = s.groupby("visit")["label"].first().to_numpy()
    stats["classes_visit"] = dict(zip(CLASSES, np.bincount(visit_labels, minlength=len(CLASSES)).tolist()))
    plab = patient_labels(manifest).to_numpy()
    stats["classes_patient"] = dict(zip(CLASSES, np.bincount(plab, minlength=len(CLASSES)).tolist()))
    stats["patients_with_class"] = class_patient_counts(manifest)
    stats["box_sizes"] = {} if rep.get("metadata_only") else _box_sizes(manifest)

    for c, n in stats["classes_sample"].items():
        if n == 0:
            problems.append(f"class {c} has no samples: a 3-class model cannot be trained or scored on it; "
                            f"check the label column {cfg.data.label_column!r} and the skipped frames above")
    if "metadata" in _search_modalities(cfg) and not manifest.feature_columns:
        problems.append("the search uses the metadata modality but no metadata feature column is left "
                        "(see data.feature_columns / data.exclude_columns and the empty columns dropped)")

    if rep.get("appt_numbering"):
        problems.append(rep["appt_numbering"])

    # splits, as the search will make them
    n_folds, pct, seed = cfg.search.cv_folds, cfg.search.data_percentage, cfg.search.seed
    assignment = None
    stats["split"] = {"cv_folds": n_folds, "data_percentage": pct, "seed": seed}
    if stats["n_patients"] < n_folds:
        problems.append(f"{stats['n_patients']} patients cannot fill {n_folds} folds (every fold needs its own "
                        f"patients): lower --cv_folds to at most {stats['n_patients']}")
    else:
        try:
            sub = subsample_patients(manifest, pct, seed, n_folds=n_folds)
        except ValueError as exc:
            problems.append(str(exc))
            sub = None
        if sub is not None:
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

    warnings += _metadata_warnings(rep, cfg.data.metadata_csv)
    # image-side notes
    for key, what in (("depth_boxes", "depth"), ("thermal_boxes", "thermal")):
        b = rep.get(key, {})
        if b.get("small_box"):
            warnings.append(f"{b['small_box']} {what} box(es) are smaller than 8 px on a side (kept; their crops "
                            f"are mostly upscaled), e.g. {', '.join(b['examples']['small_box'][:3])}")
    n_unreadable = sum(e["count"] for e in rep.get("unreadable_files", {}).values())
    if n_unreadable:
        warnings.append(f"{n_unreadable} image file(s) are missing, empty, not images or cut short; their frames "
                        "were skipped (see 'unreadable image files')")
    if decode and not rep.get("metadata_only"):
        failures = _decode_all(manifest, log)
        stats["decode_failures"] = [{"file": p, "error": e, "samples": n} for p, e, n in failures]
        if failures:
            shown = "; ".join(e for _, e, _ in failures[:N_SHOWN])
            problems.append(
                f"{len(failures)} image file(s) used by {sum(n for _, _, n in failures)} sample(s) pass the header "
                f"check but cannot be decoded (damaged image data); a search would stop at the first one. Replace "
                f"or delete them: {shown}" + (" ..." if len(failures) > N_SHOWN else ""))
        stats["decoded"] = True
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


# ----------------------------------------------------------------------------- formatting


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


def _pct(counts: dict) -> str:
    total = max(1, sum(counts.values()))
    return ", ".join(f"{c} {n} ({100.0 * n / total:.1f}%)" for c, n in counts.items())


def _reasons(block: dict) -> list[str]:
    return [f"{reason} {e['count']}: {', '.join(map(str, e['examples'][:N_SHOWN]))}"
            + (" ..." if e["count"] > N_SHOWN else "") for reason, e in block.items()]


def _full_summary(c: DatasetCheck) -> str:
    lines = [f"Dataset check: {c.data_dir}"]
    m = c.manifest
    if m is not None:
        st, rep = c.stats, m.report
        source = (f"from {rep.get('n_metadata_rows', '?')} metadata rows; metadata only: one sample per visit, no "
                  "box file or image folder read" if rep.get("metadata_only") else
                  f"from {rep.get('n_metadata_rows', '?')} metadata rows, {rep.get('n_depth_frames', '?')} depth "
                  f"and {rep.get('n_thermal_frames', '?')} thermal frames")
        lines.append(f"  {st['n_samples']} samples, {st['n_visits']} visits, {st['n_patients']} patients; "
                     f"{st['n_features']} metadata feature columns ({source})")
        lines.append(f"  classes per sample:  {_pct(st['classes_sample'])}")
        lines.append(f"  classes per visit:   {_pct(st['classes_visit'])}")
        lines.append(f"  classes per patient: {_pct(st['classes_patient'])} (majority class); patients with any "
                     f"sample of a class: {', '.join(f'{k} {v}' for k, v in st['patients_with_class'].items())}")
        images = not rep.get("metadata_only")  # a metadata-only dataset has no frame to report on
        if images:
            lines.append("  samples by view-matching rule: "
                         + ", ".join(f"{k} {v}" for k, v in rep.get("match_rules", {}).items()))
        for title, block in (("depth frames skipped", rep.get("skipped", {})),
                             ("thermal frames unusable", rep.get("thermal_unusable", {})),
                             ("unreadable image files", rep.get("unreadable_files", {}))) if images else ():
            total = sum(e["count"] for e in block.values())
            lines.append(f"  {title}: {total}")
            lines += [f"    {r}" for r in _reasons(block)]
        unused = rep.get("thermal_frames_unused", {})
        if unused.get("count"):
            lines.append(f"  usable thermal frames no depth frame matched: {unused['count']}, e.g. "
                         f"{', '.join(unused['examples'][:N_SHOWN])}")
        for key, what in (("depth_boxes", "depth"), ("thermal_boxes", "thermal")):
            b = rep.get(key)
            if not b:
                continue
            parts = [f"{k} {b[k]}" for k in ("invalid_box", "duplicate_box", "unparseable_name", "wrong_camera",
                                             "outside_frame", "clipped", "small_box", "frames_not_found") if b.get(k)]
            lines.append(f"  {what} box rows: {b['rows']} rows, {b['frames']} frames with a valid box"
                         + (f"; {', '.join(parts)}" if parts else "; no problems"))
            for k in ("invalid_box", "duplicate_box", "unparseable_name", "wrong_camera", "outside_frame", "clipped",
                      "small_box", "frames_not_found"):
                if b.get(k):
                    lines.append(f"    {k}: {', '.join(map(str, b['examples'].get(k, [])[:N_SHOWN]))}"
                                 + (" ..." if b[k] > N_SHOWN else ""))
        lines.append(f"  metadata: {rep.get('duplicate_visits', 0)} duplicated visit rows dropped (first kept; "
                     f"{rep.get('duplicate_visits_conflicting_labels', 0)} with another label), "
                     f"{rep.get('labels_normalised', 0)} label values normalised, empty feature columns dropped: "
                     f"{rep.get('empty_columns_dropped') or 'none'}")
        ph = {c: sum(v.values()) for c, v in rep.get("placeholders_read_as_missing", {}).items()}
        if ph:
            lines.append(f"  placeholders read as missing (per column): {', '.join(f'{c} {n}' for c, n in ph.items())}")
        text_cols = rep.get("column_types", {}).get("text", [])
        lines.append(f"  text (categorical) feature columns: {', '.join(text_cols) if text_cols else 'none'}")
        cm = rep.get("case_insensitive_matches", {})
        if cm.get("count"):
            lines.append(f"  file names matched only when letter case is ignored: {cm['count']}, e.g. "
                         f"{', '.join(cm['examples'][:3])}")
        mv = rep.get("missing_values", {})
        cols, n_rows = mv.get("columns", {}), max(1, mv.get("n_rows", 0))
        if cols:
            shown = ", ".join(f"{k} {v} ({100.0 * v / n_rows:.0f}%)" for k, v in list(cols.items())[:N_MISSING_SHOWN])
            lines.append(f"  missing values ({len(cols)} of {st['n_features']} feature columns, over {n_rows} visit "
                         f"rows used): {shown}" + (" ..." if len(cols) > N_MISSING_SHOWN else ""))
        else:
            lines.append("  missing values: none in the feature columns")
        if images:
            lines.append("  frames (width x height range) and boxes (width / height: min, median, max) per modality:")
        for mod in IMAGE_MODALITIES if images else ():
            fs, bs = rep.get("frame_sizes", {}).get(mod), st["box_sizes"].get(mod)
            if not fs or not bs or not bs["n_boxes"]:
                continue
            (w0, w1), (h0, h1) = fs["width"], fs["height"]
            lines.append(f"    {mod:<12} {fs['n_frames']} frames {w0}-{w1} x {h0}-{h1} px; {bs['n_boxes']} boxes "
                         f"w {bs['width'][0]}/{bs['width'][1]:g}/{bs['width'][2]}, "
                         f"h {bs['height'][0]}/{bs['height'][1]:g}/{bs['height'][2]}")
        sp = st.get("split", {})
        if st.get("folds"):
            lines.append(f"  folds (--cv_folds {sp['cv_folds']}, --data_percentage {sp['data_percentage']:g}, seed "
                         f"{sp['seed']}: {sp.get('n_samples')} samples, {sp.get('n_patients')} patients):")
            for f in st["folds"]:
                lines.append(f"    fold {f['fold']}: train {f['train_patients']} patients "
                             f"({', '.join(f'{k} {v}' for k, v in f['train'].items())}); validation "
                             f"{f['val_patients']} patients ({', '.join(f'{k} {v}' for k, v in f['val'].items())})")
        if st.get("decoded"):
            lines.append(f"  full decode of every referenced image file: {len(st.get('decode_failures', []))} failed")
    if c.warnings:
        lines.append(f"  warnings ({len(c.warnings)}):")
        lines += [f"    - {w}" for w in c.warnings]
    if c.problems:
        lines.append(f"  PROBLEMS ({len(c.problems)}): the dataset cannot be used as configured")
        lines += [f"    - {p}" for p in c.problems]
    lines.append("  result: usable" if c.ok else "  result: NOT usable")
    return "\n".join(lines)


def _short_summary(c: DatasetCheck) -> str:
    if c.manifest is None:
        return f"dataset {c.data_dir}: NOT usable: " + "; ".join(c.problems)
    st, rep = c.stats, c.manifest.report
    skipped = {k: e["count"] for k, e in rep.get("skipped", {}).items()}
    n_unreadable = sum(e["count"] for e in rep.get("unreadable_files", {}).values())
    images = ("metadata only (one sample per visit; no box file or image folder read)" if rep.get("metadata_only")
              else f"depth frames skipped {sum(skipped.values())}"
              + (f" ({', '.join(f'{k} {v}' for k, v in skipped.items())})" if skipped else "")
              + f"; unreadable image files {n_unreadable}")
    line = (f"dataset {c.data_dir}: {st['n_samples']} samples, {st['n_visits']} visits, {st['n_patients']} patients; "
            f"classes {_pct(st['classes_sample'])}; {images}")
    lines = [line] + [f"  warning: {w}" for w in c.warnings] + [f"  PROBLEM: {p}" for p in c.problems]
    return "\n".join(lines)
