"""Names shared by every module: classes, modalities, label columns and canonical combination names.

Each shared constant is defined here once; other modules import (and may re-export) it.
"""

from __future__ import annotations

from itertools import combinations as _combinations

CLASSES = ("I", "P", "R")  # ordinal: inflammatory < proliferative < remodelling
NUM_CLASSES = len(CLASSES)

IMAGE_MODALITIES = ("depth_rgb", "depth_map", "thermal_rgb", "thermal_map")
MODALITIES = ("metadata",) + IMAGE_MODALITIES  # the fixed order used in combination names
PRETRAIN_CACHE_DIR = ".pretrain_cache"  # under runtime.logs_dir; shared by every run
CAMERA_OF = {"depth_rgb": "D", "depth_map": "D", "thermal_rgb": "T", "thermal_map": "T"}

DEFAULT_LABEL_COLUMN = "Healing Phase Abs"  # data.label_column's default (config.DataConfig)
# Derived from the label, so never features (config, metadata loader); the configured label column is refused too.
LEAKY_COLUMNS = ("Healing Phase", "Phase Confidence (%)")
# What the forest refuses in its input frame: the label-derived columns and the default label column itself.
FOREST_LEAKY_COLUMNS = (*LEAKY_COLUMNS, DEFAULT_LABEL_COLUMN)


def canonical_combination(modalities) -> str:
    """Join modality names in the fixed MODALITIES order with '+'; reject unknown or repeated names."""
    names = [m.strip() for m in modalities if m.strip()]
    unknown = [m for m in names if m not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modality {unknown[0]!r}; valid modalities: {', '.join(MODALITIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"modality repeated in combination {'+'.join(names)!r}")
    if not names:
        raise ValueError("a combination needs at least one modality")
    return "+".join(m for m in MODALITIES if m in names)


def parse_combination(name: str) -> tuple[str, ...]:
    """'metadata+depth_rgb' -> ('metadata', 'depth_rgb') in canonical order."""
    return tuple(canonical_combination(name.split("+")).split("+"))


def all_combinations(modalities) -> list[str]:
    """Every non-empty combination of the given modalities, singles first, in canonical order."""
    ordered = [m for m in MODALITIES if m in set(modalities)]
    out = []
    for k in range(1, len(ordered) + 1):
        out.extend("+".join(c) for c in _combinations(ordered, k))
    return out


def image_modalities_of(combination: str) -> tuple[str, ...]:
    return tuple(m for m in parse_combination(combination) if m != "metadata")
