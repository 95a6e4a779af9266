"""Focal loss with a capped inverse-frequency class weight (alpha).

An uncapped 7x alpha once drove every prediction to the rare class; the max/min cap
(default 3) keeps the rare class up-weighted without letting it dominate.
"""

from __future__ import annotations

import keras
import numpy as np

from medfusion.constants import CLASSES


def _class_name(i: int) -> str:
    return CLASSES[i] if i < len(CLASSES) else str(i)


def focal_alpha(labels, num_classes: int = 3, max_ratio: float = 3.0) -> np.ndarray:
    """Inverse class frequency of integer training labels, max/min capped at ``max_ratio``, summing to 1.

    raw_i = n / (K * count_i); each raw_i is clipped to at most ``max_ratio * min(raw)``;
    ``max_ratio == 0`` disables the cap.
    """
    y = np.asarray(labels).astype(int).ravel()
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be integers in [0, {num_classes - 1}], got values {sorted(set(y.tolist()))}")
    counts = np.bincount(y, minlength=num_classes).astype(float)
    for i, c in enumerate(counts):
        if c == 0:
            raise ValueError(
                f"class {_class_name(i)} has no samples: the fold's training part lacks it, so its focal alpha "
                "(inverse class frequency) is undefined"
            )
    raw = y.size / (num_classes * counts)
    if max_ratio and max_ratio > 0:
        raw = np.minimum(raw, max_ratio * raw.min())
    return raw / raw.sum()


def equal_alpha(num_classes: int = 3) -> np.ndarray:
    """All classes weighted 1/K (used for image pre-training)."""
    return np.full(num_classes, 1.0 / num_classes)


def focal_loss(alpha, gamma: float = 2.0) -> keras.losses.Loss:
    """Categorical focal crossentropy; Keras multiplies the per-class ``alpha`` list element-wise per class.

    Per row with one-hot y: -sum_k alpha_k * y_k * (1 - p_k)^gamma * log p_k, averaged over rows.
    """
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=[float(a) for a in alpha], gamma=float(gamma), name="focal_loss"
    )
