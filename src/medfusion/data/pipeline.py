"""tf.data input pipelines and the per-dataset steps_per_epoch rule.

Inputs are dicts keyed by model input name (an image modality or "metadata"); images are
uint8 crops in [0, 255] and are cast to float32 here, with no normalisation (the
backbones rescale internally). An image input may be `Rows` (data/rows.py): each batch's rows
are then gathered from the run's one array, and the stream holds no copy of the images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from medfusion.config import augment_list
from medfusion.constants import NUM_CLASSES
from medfusion.data.rows import Rows

# geometric augmentation ranges (train.augment): small enough that the wound stays in view
ROTATE_DEG = 10.0  # uniform in +-ROTATE_DEG
SHIFT_FRACTION = 0.08  # uniform in +-SHIFT_FRACTION of the image side, per axis
ZOOM_FRACTION = 0.10  # scale uniform in [1 - ZOOM_FRACTION, 1 + ZOOM_FRACTION]


@dataclass(frozen=True)
class BatchPlan:
    """How one dataset is consumed in one epoch; computed per dataset, never reused across datasets."""

    n_samples: int
    global_batch: int  # requested: per-replica batch x replicas
    batch: int  # actually used (clamped to the dataset size)
    steps_per_epoch: int
    clamped: bool


def plan_batches(n_samples: int, per_replica_batch: int, replicas: int) -> BatchPlan:
    """The global batch, clamped to the dataset size and kept a multiple of the replica count.

    A global batch that does not split evenly gives replicas batches of different sizes (or an
    empty one), which MirroredStrategy cannot run; the training stream runs on across passes,
    so a multiple of the replicas is always available.
    """
    if n_samples <= 0:
        raise ValueError("cannot train on an empty dataset (0 samples)")
    global_batch = per_replica_batch * replicas
    batch = min(global_batch, n_samples)
    batch = max(replicas, batch - batch % replicas)
    return BatchPlan(n_samples, global_batch, batch, math.ceil(n_samples / batch), batch < global_batch)


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def _cast(features: dict) -> dict:
    """uint8 crops to float32; float inputs (probabilities, cached features of any float dtype) pass unchanged."""
    return {k: v if v.dtype.is_floating else tf.cast(v, tf.float32) for k, v in features.items()}


def _gatherers(inputs: dict) -> dict:
    """Per input, a function from a batch's positions (int64) to its rows, as a tensor.

    Rows are read from their numpy array by tf.numpy_function (one batch copied per call); arrays
    become one constant per stream (small ones: probabilities, cached features, test inputs).
    """
    out = {}
    for k, v in inputs.items():
        if isinstance(v, Rows):
            out[k] = _rows_gatherer(v)
        else:
            const = tf.constant(v)
            out[k] = lambda idx, const=const: tf.gather(const, idx)
    return out


def _rows_gatherer(rows: Rows):
    dtype, tail = tf.as_dtype(rows.dtype), rows.shape[1:]

    def gather(idx):
        batch = tf.numpy_function(rows.take, [idx], dtype, stateful=False)
        batch.set_shape([None, *tail])
        return batch

    return gather


def _uniform(base, n, lo: float, hi: float, stream: int) -> tf.Tensor:
    """n stateless uniforms in [lo, hi) keyed by (seed, step) and a fixed stream number."""
    key = base + tf.constant([0, stream << 41], tf.int64)
    return tf.random.stateless_uniform([n], seed=key, minval=lo, maxval=hi)


def _geometric(v: tf.Tensor, base, ops: tuple) -> tf.Tensor:
    """Rotation / shift / zoom about the image centre, nearest neighbour, 0 fill: every output pixel is
    an input pixel or 0 (resize_pad's padding, maps' "no data"), so intensity-coded signal is intact."""
    n, h, w = tf.shape(v)[0], tf.cast(tf.shape(v)[1], tf.float32), tf.cast(tf.shape(v)[2], tf.float32)
    zero = tf.zeros([n])
    angle = _uniform(base, n, -ROTATE_DEG, ROTATE_DEG, 2) * (np.pi / 180.0) if "rotate" in ops else zero
    scale = _uniform(base, n, 1 - ZOOM_FRACTION, 1 + ZOOM_FRACTION, 3) if "zoom" in ops else zero + 1.0
    tx = _uniform(base, n, -SHIFT_FRACTION, SHIFT_FRACTION, 4) * w if "shift" in ops else zero
    ty = _uniform(base, n, -SHIFT_FRACTION, SHIFT_FRACTION, 5) * h if "shift" in ops else zero
    # output pixel p reads input A (p - c) + c - t, A = rotation(angle) / scale
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a2 = cx - cos * cx + sin * cy - tx
    b2 = cy - sin * cx - cos * cy - ty
    transforms = tf.stack([cos, -sin, a2, sin, cos, b2, zero, zero], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=v, transforms=transforms, output_shape=tf.shape(v)[1:3], fill_value=0.0,
        interpolation="NEAREST", fill_mode="CONSTANT")


def _flips(v: tf.Tensor, base) -> tf.Tensor:
    """Left-right then up-down flips, each image's coin keyed by (seed, step) and its position in the batch
    (the coins depend on the batch size only, never on the pixels: flip_codes reads them off a probe)."""
    v = tf.image.stateless_random_flip_left_right(v, seed=base)
    return tf.image.stateless_random_flip_up_down(v, seed=base + tf.constant([0, 1 << 40], tf.int64))


# probe image whose top-left pixel after _flips is the flip code: 0 none, 1 left-right, 2 up-down, 3 both
_FLIP_PROBE = np.array([[0, 1], [2, 3]], np.float32)[None, :, :, None]


def flip_codes(seed: int, step, batch_size) -> tf.Tensor:
    """The flip code (bit 0 left-right, bit 1 up-down) _augment gives each image of batch `step`.

    The Stage 1 feature cache (training/feature_cache.py) uses it to pick each sample's precomputed
    flip variant, so the cached stream sees exactly the flips of the uncached one.
    """
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
    probe = tf.tile(tf.constant(_FLIP_PROBE), tf.stack([batch_size, 1, 1, 1]))
    return tf.cast(_flips(probe, base)[:, 0, 0, 0], tf.int64)


def _augment(features: dict, seed: int, step, ops: tuple = ("flip",)) -> dict:
    """Augmentations `ops` (train.augment) from stateless ops keyed by (seed, step): a resumed run sees
    the same ones. Flips use the first release's keys, so `augment: true` runs are unchanged."""
    out = {}
    for k, v in features.items():
        if v.shape.rank == 4:  # image batch
            base = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
            if "flip" in ops:
                v = _flips(v, base)
            if {"rotate", "shift", "zoom"} & set(ops):
                v = _geometric(v, base, ops)
        out[k] = v
    return out


def _pass_order(n: int, seed: int, r) -> tf.Tensor:
    """Sample order of pass `r` over the data: a stateless permutation keyed by (seed, r)."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(r, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)


def train_dataset(inputs: dict, labels: np.ndarray, plan: BatchPlan, seed: int, augment,
                  start_step: int = 0) -> tf.data.Dataset:
    """Shuffled, repeated, batched: fit consumes exactly plan.steps_per_epoch batches per epoch.

    The stream is a pure function of (seed, step) and holds no random state: pass r over the
    data is the stateless permutation keyed by (seed, r), batches run on across pass
    boundaries, and the flips of step i are keyed by (seed, i). Every iterator over the
    dataset therefore yields the same batches, however many other iterators were created or
    how far they prefetched. (`shuffle(reshuffle_each_iteration=True)` does not have that
    property: its iterators share one seed generator, and Keras' fit opens a throw-away
    iterator to peek at the input shapes whose background prefetch advanced that generator
    by a timing-dependent amount, so the training order differed between processes.)
    `start_step` (epochs done x steps per epoch) positions a resumed stage exactly where the
    interrupted one stopped. `augment`: train.augment, a list of config.AUGMENTATIONS (true = [flip]).
    """
    ops = augment_list(augment)
    features = _gatherers(inputs)
    targets = tf.constant(one_hot(labels))
    ds = batch_stream(plan, seed, start_step)

    def load(step, idx):
        x = _cast({k: take(idx) for k, take in features.items()})
        return (_augment(x, seed, step, ops) if ops else x), tf.gather(targets, idx)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def batch_stream(plan: BatchPlan, seed: int, start_step: int = 0) -> tf.data.Dataset:
    """(step, sample indices) of every training batch from `start_step` on: the stream train_dataset loads."""
    n, batch = plan.n_samples, plan.batch
    first = start_step * batch  # position of the first sample in the endless stream
    order = tf.data.Dataset.counter(first // n).flat_map(
        lambda r: tf.data.Dataset.from_tensor_slices(_pass_order(n, seed, r)))
    return order.skip(first % n).batch(batch).enumerate(start=start_step)


def eval_dataset(inputs: dict, labels: np.ndarray | None, batch: int, replicas: int = 1) -> tf.data.Dataset:
    """One pass in order, no repeat: every sample seen exactly once.

    With several replicas every batch must split evenly, so the pass is padded to a multiple of
    the batch (itself a multiple of the replicas) with the first sample again, carrying sample
    weight 0: metrics (kappa, accuracy) never count them, and `predict` drops their rows. The
    padding is positions, not copied images.
    """
    n = len(next(iter(inputs.values())))
    batch = max(1, min(batch, n))
    pad = 0
    if replicas > 1:
        batch = max(replicas, batch + (-batch) % replicas)
        pad = (-n) % batch
    features = _gatherers(inputs)
    targets = None if labels is None else tf.constant(one_hot(labels))

    def load(at):
        real = at < n  # positions past the end are pads: sample 0 again, weight 0
        idx = tf.where(real, at, tf.zeros_like(at))
        x = _cast({k: take(idx) for k, take in features.items()})
        if targets is None:
            return x
        y = tf.gather(targets, idx)
        return (x, y, tf.cast(real, tf.float32)) if replicas > 1 else (x, y)

    ds = tf.data.Dataset.range(n + pad).batch(batch)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)  # in order (the default)
