"""Stage 1 on cached features: a frozen backbone's output computed once per fold, the heads trained on it.

While every backbone is frozen it runs in inference mode (models.backbones.Backbone), so its
output for a given image never changes during the stage: it is computed once per sample per
augmentation variant and the heads train on the stored features. The cut is after each
branch's `<m>_pool` (GlobalAveragePooling2D, no weights): the pooled vector is what the head
reads, and it is 49x smaller than the 7x7 EfficientNetB3 map at 224 px (6 KB per sample
instead of 294 KB).

Augmentation must be a finite set for this: flips (4 variants, each sample's variant of each
step read off data.pipeline.flip_codes, so the cached stream is the uncached stream). Rotation,
shift and zoom draw continuous parameters per step: the cache is off and `plan` says why.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from medfusion.config import augment_list
from medfusion.data.pipeline import BatchPlan, batch_stream, eval_dataset, flip_codes, one_hot
from medfusion.data.rows import flip_variant
from medfusion.models.fusion import backbone_layers

log = logging.getLogger("medfusion")

FINITE_AUGMENTATIONS = {"flip": 4}  # augmentation -> number of variants per sample


@dataclass
class CachePlan:
    use: bool
    reason: str  # why it is on or off, for the log and the StageResult
    modalities: tuple = ()
    variants: int = 1


def plan(model: keras.Model, augment) -> CachePlan:
    """Whether this stage can train on cached features: every backbone frozen, finite augmentation."""
    backbones = backbone_layers(model)
    if not backbones:
        return CachePlan(False, "the model has no image backbone")
    if any(bb.trainable for bb in backbones):
        return CachePlan(False, "a backbone trains in this stage")
    mods = tuple(bb.name[: -len("_backbone")] for bb in backbones)
    for m in mods:
        try:
            pool = model.get_layer(f"{m}_pool")
        except ValueError:
            return CachePlan(False, f"branch {m} has no {m}_pool layer to cut at")
        if pool.weights or pool.input._keras_history.operation is not model.get_layer(f"{m}_backbone"):
            return CachePlan(False, f"{m}_pool does not read the backbone's output directly")
    ops = augment_list(augment)
    continuous = [op for op in ops if op not in FINITE_AUGMENTATIONS]
    if continuous:
        return CachePlan(False, f"augmentation {', '.join(continuous)} draws new values every step (not a finite "
                                "set of variants); only flips can be cached")
    variants = int(np.prod([FINITE_AUGMENTATIONS[op] for op in ops])) if ops else 1
    return CachePlan(True, f"every backbone frozen; {variants} augmentation variant(s) per sample", mods, variants)


def head_model(model: keras.Model, mods) -> keras.Model:
    """The layers after the pools as a model of its own (same layer objects, hence the same variables)."""
    inputs = {name: t for name, t in model.input.items() if name not in mods}
    inputs.update({m: model.get_layer(f"{m}_pool").output for m in mods})
    with warnings.catch_warnings():  # Keras names the cut tensors `<tensor>CLONE`; the dict keys are what count
        warnings.filterwarnings("ignore", message="When providing `inputs` as a dict")
        return keras.Model(inputs, model.output, name=f"{model.name}_heads")


def _pooled(model: keras.Model, m: str, variants: list[np.ndarray], batch: int, strategy) -> np.ndarray:
    """Pooled features of each image array in `variants`, stacked: (len(variants), N, D), in the pool's dtype."""
    from medfusion.training.stages import predict  # stages imports this module

    with strategy.scope():  # Keras binds a model to the strategy it is created under
        extractor = keras.Model({m: model.input[m]}, model.get_layer(f"{m}_pool").output, name=f"{m}_features")
    dtype = keras.backend.standardize_dtype(extractor.output.dtype)
    return np.stack([predict(extractor, {m: images}, batch, strategy.num_replicas_in_sync).astype(dtype)
                     for images in variants])


def extract(model: keras.Model, cache: CachePlan, inputs: dict, batch: int, strategy, variants: int) -> dict:
    """Inputs with each image replaced by its pooled features, shape (variants, N, D), variant = flip code."""
    out = dict(inputs)
    for m in cache.modalities:
        out[m] = _pooled(model, m, [flip_variant(inputs[m], code) for code in range(variants)], batch, strategy)
    return out


def train_dataset(cached: dict, labels: np.ndarray, plan_: BatchPlan, seed: int, variants: int,
                  start_step: int = 0) -> tf.data.Dataset:
    """The uncached training stream (data.pipeline.train_dataset) with features in place of images."""
    feats = {k: tf.constant(v) for k, v in cached.items()}
    targets = tf.constant(one_hot(labels))

    def load(step, idx):
        codes = flip_codes(seed, step, tf.size(idx)) if variants > 1 else tf.zeros_like(idx)
        x = {k: tf.gather_nd(v, tf.stack([codes, idx], axis=1)) if v.shape.rank == 3 else tf.gather(v, idx)
             for k, v in feats.items()}
        return x, tf.gather(targets, idx)

    ds = batch_stream(plan_, seed, start_step)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


@dataclass
class CachedData:
    head: keras.Model
    train: dict  # features (variants, N, D) per modality + the other inputs
    val: dict  # features (N, D) per modality + the other inputs
    seconds: float  # time spent computing the features
    per_sample: float  # seconds per backbone forward pass, measured while computing them


def build(model: keras.Model, cache: CachePlan, x_train: dict, x_val: dict, batch: int, strategy) -> CachedData:
    """The features of the training (every variant) and validation samples, and the heads model over them."""
    t0 = time.time()
    train = extract(model, cache, x_train, batch, strategy, cache.variants)
    val = extract(model, cache, x_val, batch, strategy, 1)
    val = {k: v[0] if k in cache.modalities else v for k, v in val.items()}
    seconds = time.time() - t0
    n = (len(next(iter(x_train.values()))) * cache.variants + len(next(iter(x_val.values())))) * len(cache.modalities)
    with strategy.scope():
        head = head_model(model, cache.modalities)
    return CachedData(head, train, val, seconds, seconds / max(n, 1))


def val_dataset(data: CachedData, y_val: np.ndarray, batch: int, replicas: int) -> tf.data.Dataset:
    return eval_dataset(data.val, y_val, batch, replicas)


def saved_seconds(data: CachedData, cache: CachePlan, epochs_run: int, steps: int, batch: int, n_val: int) -> float:
    """Estimated backbone time the uncached stage would have spent, minus the time the cache took.

    Uncached, every epoch pushes steps x batch training images and n_val validation images (plus
    one validation pass before the first epoch) through each backbone.
    """
    passes = (epochs_run * (steps * batch + n_val) + n_val) * len(cache.modalities)
    return passes * data.per_sample - data.seconds
