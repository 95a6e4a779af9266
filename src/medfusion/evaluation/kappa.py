"""Quadratic-weighted kappa from confusion matrices, vectorised for bootstrap resamples.

sklearn's cohen_kappa_score is the reference (tests compare against it); this form scores
thousands of resampled confusion matrices at once.
"""

from __future__ import annotations

import numpy as np

from medfusion.constants import NUM_CLASSES


def confusion(y_true, y_pred, k: int = NUM_CLASSES) -> np.ndarray:
    c = np.zeros((k, k))
    np.add.at(c, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1.0)
    return c


def qwk_from_confusion(c: np.ndarray) -> np.ndarray:
    """QWK of one (k, k) matrix or a stack (..., k, k); 0 where undefined (as sklearn's replace_undefined_by=0)."""
    c = np.asarray(c, dtype=np.float64)
    k = c.shape[-1]
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    w = (i - j) ** 2 / max((k - 1) ** 2, 1)
    n = c.sum(axis=(-2, -1))
    expected = c.sum(axis=-1)[..., :, None] * c.sum(axis=-2)[..., None, :] / np.maximum(n, 1e-12)[..., None, None]
    obs, exp = (w * c).sum(axis=(-2, -1)), (w * expected).sum(axis=(-2, -1))
    return np.where(exp > 0, 1.0 - obs / np.where(exp > 0, exp, 1.0), 0.0)
