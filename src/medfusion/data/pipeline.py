"""tf.data input pipelines and the per-dataset steps_per_epoch rule.

Inputs are dicts keyed by model input name (an image modality or "metadata"); images are
uint8 crops in [0, 255] and are cast to float32 here, with no normalisation (the
backbones rescale internally).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from medfusion.constants import NUM_CLASSES


@dataclass(frozen=True)
class BatchPlan:
    """How one dataset is consumed in one epoch; computed per dataset, never reused across datasets."""

    n_samples: int
    global_batch: int  # requested: per-replica batch x replicas
    batch: int  # actually used (clamped to the dataset size)
    steps_per_epoch: int
    clamped: bool


def plan_batches(n_samples: int, per_replica_batch: int, replicas: int) -> BatchPlan:
    if n_samples <= 0:
        raise ValueError("cannot train on an empty dataset (0 samples)")
    global_batch = per_replica_batch * replicas
    batch = min(global_batch, n_samples)
    return BatchPlan(n_samples, global_batch, batch, math.ceil(n_samples / batch), batch < global_batch)


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.eye(NUM_CLASSES, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def _cast(features: dict) -> dict:
    return {k: tf.cast(v, tf.float32) for k, v in features.items()}


def _augment(features: dict, seed: int, step) -> dict:
    """Random flips from stateless ops keyed by (seed, step): a resumed run sees the same flips."""
    out = {}
    for k, v in features.items():
        if v.shape.rank == 4:  # image batch: flips keep intensity-coded signal intact
            base = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])
            v = tf.image.stateless_random_flip_left_right(v, seed=base)
            v = tf.image.stateless_random_flip_up_down(v, seed=base + tf.constant([0, 1 << 40], tf.int64))
        out[k] = v
    return out


def _pass_order(n: int, seed: int, r) -> tf.Tensor:
    """Sample order of pass `r` over the data: a stateless permutation keyed by (seed, r)."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(r, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=key)


def train_dataset(inputs: dict, labels: np.ndarray, plan: BatchPlan, seed: int, augment: bool,
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
    interrupted one stopped.
    """
    n, batch = plan.n_samples, plan.batch
    features = {k: tf.constant(v) for k, v in inputs.items()}
    targets = tf.constant(one_hot(labels))
    first = start_step * batch  # position of the first sample in the endless stream
    order = tf.data.Dataset.counter(first // n).flat_map(
        lambda r: tf.data.Dataset.from_tensor_slices(_pass_order(n, seed, r)))
    ds = order.skip(first % n).batch(batch).enumerate(start=start_step)

    def load(step, idx):
        x = _cast({k: tf.gather(v, idx) for k, v in features.items()})
        return (_augment(x, seed, step) if augment else x), tf.gather(targets, idx)

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_dataset(inputs: dict, labels: np.ndarray | None, batch: int) -> tf.data.Dataset:
    """One pass in order, no repeat: every sample seen exactly once."""
    n = len(next(iter(inputs.values())))
    batch = max(1, min(batch, n))
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(inputs).batch(batch).map(_cast)
    else:
        ds = tf.data.Dataset.from_tensor_slices((inputs, one_hot(labels))).batch(batch)
        ds = ds.map(lambda x, y: (_cast(x), y))
    return ds.prefetch(tf.data.AUTOTUNE)
