"""The dataset check's text: the full summary `--mode check_data` prints and the one-line form a search
prints before training (split out of check.py, which decides; this module only formats)."""

from __future__ import annotations

from medfusion.constants import IMAGE_MODALITIES

N_SHOWN = 5  # file names shown per reason
N_MISSING_SHOWN = 8  # metadata columns shown in the missing-value line
BOX_KINDS = ("invalid_box", "duplicate_box", "unparseable_name", "wrong_camera", "patient_mismatch", "outside_frame",
             "clipped", "small_box", "frames_not_found")


def _pct(counts: dict) -> str:
    total = max(1, sum(counts.values()))
    return ", ".join(f"{c} {n} ({100.0 * n / total:.1f}%)" for c, n in counts.items())


def _reasons(block: dict) -> list[str]:
    return [f"{reason} {e['count']}: {', '.join(map(str, e['examples'][:N_SHOWN]))}"
            + (" ..." if e["count"] > N_SHOWN else "") for reason, e in block.items()]


def _count_lines(st: dict, rep: dict) -> list[str]:
    source = (f"from {rep.get('n_metadata_rows', '?')} metadata rows; metadata only: one sample per visit, no "
              "box file or image folder read" if rep.get("metadata_only") else
              f"from {rep.get('n_metadata_rows', '?')} metadata rows, {rep.get('n_depth_frames', '?')} depth "
              f"and {rep.get('n_thermal_frames', '?')} thermal frames")
    return [f"  {st['n_samples']} samples, {st['n_visits']} visits, {st['n_patients']} patients; "
            f"{st['n_features']} metadata feature columns ({source})",
            f"  classes per sample:  {_pct(st['classes_sample'])}",
            f"  classes per visit:   {_pct(st['classes_visit'])}",
            f"  classes per patient: {_pct(st['classes_patient'])} (majority class); patients with any "
            f"sample of a class: {', '.join(f'{k} {v}' for k, v in st['patients_with_class'].items())}"]


def _frame_lines(rep: dict) -> list[str]:
    """View-matching rules and the frames skipped, unusable or unreadable (image datasets only)."""
    lines = ["  samples by view-matching rule: " + ", ".join(f"{k} {v}" for k, v in rep.get("match_rules", {}).items())]
    for title, block in (("depth frames skipped", rep.get("skipped", {})),
                         ("thermal frames unusable", rep.get("thermal_unusable", {})),
                         ("unreadable image files", rep.get("unreadable_files", {}))):
        total = sum(e["count"] for e in block.values())
        lines.append(f"  {title}: {total}")
        lines += [f"    {r}" for r in _reasons(block)]
    return lines


def _box_lines(rep: dict) -> list[str]:
    lines = []
    unused = rep.get("thermal_frames_unused", {})
    if unused.get("count"):
        lines.append(f"  usable thermal frames no depth frame matched: {unused['count']}, e.g. "
                     f"{', '.join(unused['examples'][:N_SHOWN])}")
    for key, what in (("depth_boxes", "depth"), ("thermal_boxes", "thermal")):
        b = rep.get(key)
        if not b:
            continue
        parts = [f"{k} {b[k]}" for k in BOX_KINDS if b.get(k)]
        lines.append(f"  {what} box rows: {b['rows']} rows, {b['frames']} frames with a valid box"
                     + (f"; {', '.join(parts)}" if parts else "; no problems"))
        for k in BOX_KINDS:
            if b.get(k):
                lines.append(f"    {k}: {', '.join(map(str, b['examples'].get(k, [])[:N_SHOWN]))}"
                             + (" ..." if b[k] > N_SHOWN else ""))
    return lines


def _metadata_lines(st: dict, rep: dict) -> list[str]:
    lines = [f"  metadata: {rep.get('duplicate_visits', 0)} duplicated visit rows dropped (first kept; "
             f"{rep.get('duplicate_visits_conflicting_labels', 0)} with another label), "
             f"{rep.get('labels_normalised', 0)} label values normalised, empty feature columns dropped: "
             f"{rep.get('empty_columns_dropped') or 'none'}"]
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
    return lines


def _size_lines(st: dict, rep: dict) -> list[str]:
    lines = ["  frames (width x height range) and boxes (width / height: min, median, max) per modality:"]
    for mod in IMAGE_MODALITIES:
        fs, bs = rep.get("frame_sizes", {}).get(mod), st["box_sizes"].get(mod)
        if not fs or not bs or not bs["n_boxes"]:
            continue
        (w0, w1), (h0, h1) = fs["width"], fs["height"]
        lines.append(f"    {mod:<12} {fs['n_frames']} frames {w0}-{w1} x {h0}-{h1} px; {bs['n_boxes']} boxes "
                     f"w {bs['width'][0]}/{bs['width'][1]:g}/{bs['width'][2]}, "
                     f"h {bs['height'][0]}/{bs['height'][1]:g}/{bs['height'][2]}")
    return lines


def _fold_lines(st: dict) -> list[str]:
    lines = []
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
    return lines


def full_summary(c) -> str:
    """Every count, skip, choice and problem of a DatasetCheck `c`, one item per line."""
    lines = [f"Dataset check: {c.data_dir}"]
    m = c.manifest
    if m is not None:
        st, rep = c.stats, m.report
        images = not rep.get("metadata_only")  # a metadata-only dataset has no frame to report on
        lines += _count_lines(st, rep)
        lines += _frame_lines(rep) if images else []
        lines += _box_lines(rep) + _metadata_lines(st, rep)
        lines += _size_lines(st, rep) if images else []
        lines += _fold_lines(st)
    if c.warnings:
        lines.append(f"  warnings ({len(c.warnings)}):")
        lines += [f"    - {w}" for w in c.warnings]
    if c.problems:
        lines.append(f"  PROBLEMS ({len(c.problems)}): the dataset cannot be used as configured")
        lines += [f"    - {p}" for p in c.problems]
    lines.append("  result: usable" if c.ok else "  result: NOT usable")
    return "\n".join(lines)


def short_summary(c) -> str:
    """The lines a search prints before training: counts, skips, then every warning and problem."""
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
