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


def train_dataset(inputs: dict, labels: np.ndarray, plan: BatchPlan, seed: int, augment: bool,
                  start_step: int = 0) -> tf.data.Dataset:
    """Shuffled, repeated, batched: fit consumes exactly plan.steps_per_epoch batches per epoch.

    The stream is a pure function of the seed, so `start_step` (epochs done x steps per epoch)
    positions a resumed stage exactly where the interrupted one stopped.
    """
    ds = tf.data.Dataset.from_tensor_slices((inputs, one_hot(labels)))
    ds = ds.shuffle(plan.n_samples, seed=seed, reshuffle_each_iteration=True).repeat().batch(plan.batch)
    ds = ds.enumerate().skip(start_step)
    if augment:
        ds = ds.map(lambda i, xy: (_augment(_cast(xy[0]), seed, i), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda i, xy: (_cast(xy[0]), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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
