"""Rows of the run-level crop arrays, selected without copying them.

At 224 px one modality of the real data is ~470 MB. A job used to take `crops[m][idx]` per split
(a copy), and each training or evaluation stream copied that again into a TensorFlow constant, so
every job held its own copies of the images. A job now passes `Rows(crops[m], idx)`: the input
pipelines (data/pipeline.py) gather each batch's rows straight from the one array the run holds
(or, under Ray, the one the object store maps into every worker).
"""

from __future__ import annotations

import hashlib

import numpy as np


def flip_variant(images, code: int):
    """`images` (N, H, W, C) as pipeline._flips leaves them for flip `code` (bit 0 left-right, bit 1 up-down);
    Rows stay Rows (flipped batch by batch when read)."""
    if isinstance(images, Rows):
        return images.flipped(code)
    out = images[:, :, ::-1] if code & 1 else images
    return out[:, ::-1] if code & 2 else out


class Rows:
    """Rows `idx` of `source`, flipped by `flip` (a flip code), read only when a batch needs them."""

    def __init__(self, source: np.ndarray, idx, flip: int = 0):
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(source)):
            raise IndexError(f"row indices {idx.min()}..{idx.max()} outside an array of {len(source)} rows")
        self.source, self.idx, self.flip = source, idx, int(flip)

    @classmethod
    def all_of(cls, source: np.ndarray) -> Rows:
        return cls(source, np.arange(len(source)))

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def shape(self) -> tuple:
        return (len(self.idx),) + tuple(self.source.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    def take(self, positions) -> np.ndarray:
        """The rows at `positions` (0..len-1) as an array: one batch's copy, nothing more."""
        return flip_variant(self.source[self.idx[np.asarray(positions, dtype=np.int64)]], self.flip)

    def flipped(self, code: int) -> Rows:
        """These rows under flip `code` after any flip they already have (flips compose by xor)."""
        return Rows(self.source, self.idx, self.flip ^ int(code))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """A full copy, for code that needs an array (small selections: explanations, tests)."""
        out = self.take(np.arange(len(self.idx)))
        return out if dtype is None else out.astype(dtype)

    def sha256(self) -> str:
        """sha256 of the selected rows' bytes in order: equal to hashing `np.ascontiguousarray(self).tobytes()`,
        computed row by row, so hashing a training split does not copy it."""
        h = hashlib.sha256()
        for p in range(len(self.idx)):
            h.update(np.ascontiguousarray(self.take([p]) if self.flip else self.source[self.idx[p]]))
        return h.hexdigest()

