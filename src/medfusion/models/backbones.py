"""Image backbones: a small name -> builder registry plus strict weight loading.

Every builder maps a (S, S, 3) float input of pixels in [0, 255] to a 4-D feature map and
returns an uncompiled keras.Model named by the caller (``<modality>_backbone``), so several
backbones can sit side by side in one fusion model and weights transfer by layer name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from typing import Callable

import keras
import numpy as np

BACKBONES: dict[str, Callable[[int, str], keras.Model]] = {}

# File names keras.applications downloads for weights="imagenet", include_top=False.
IMAGENET_FILES = {
    "efficientnet_b3": "efficientnetb3_notop.h5",
    "efficientnet_b0": "efficientnetb0_notop.h5",
}


class WeightsError(ValueError):
    """Backbone weights could not be obtained or did not fit; the message says what to do."""


def register_backbone(name: str):
    """Decorator: register ``builder(image_size, name) -> keras.Model`` under ``name``."""

    def deco(fn):
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        BACKBONES[name] = fn
        return fn

    return deco


@keras.saving.register_keras_serializable(package="medfusion")
class Backbone(keras.Model):
    """A functional backbone that runs fully in inference mode while it is frozen.

    Keras 3 hands the outer model's ``training`` flag to every nested model, overriding a
    ``backbone(x, training=False)`` recorded when the graph was built, so EfficientNet's
    stochastic depth (its ``*drop`` Dropout layers) would stay active in a "frozen" Stage 1.
    Here ``trainable=False`` forces ``training=False`` for every layer inside (no dropout, no
    stochastic depth, no BatchNorm update). Trainable, the outer flag passes through; BatchNorm
    layers set trainable=False individually still run in inference mode (Keras 3 rule).
    ``trainable`` is read when the step function is traced: recompile after changing it, as
    run_stage does for every stage.
    """

    def call(self, inputs, training=None, mask=None):
        if not self.trainable:
            training = False
        return super().call(inputs, training=training, mask=mask)


def _rename(model: keras.Model, model_name: str) -> keras.Model:
    """Same layers, new graph owner with the caller's name (keras.applications names its models itself)."""
    # single tensors, not lists: a list-output model would hand a list to the pooling layer
    return Backbone(model.input, model.output, name=model_name)


@register_backbone("efficientnet_b3")
def _efficientnet_b3(image_size: int, model_name: str, imagenet: bool = False) -> keras.Model:
    # Keras' EfficientNet rescales/normalises internally: it expects raw [0, 255] pixels.
    base = keras.applications.EfficientNetB3(
        include_top=False, weights="imagenet" if imagenet else None, input_shape=(image_size, image_size, 3)
    )
    return _rename(base, model_name)


@register_backbone("efficientnet_b0")
def _efficientnet_b0(image_size: int, model_name: str, imagenet: bool = False) -> keras.Model:
    base = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet" if imagenet else None, input_shape=(image_size, image_size, 3)
    )
    return _rename(base, model_name)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_VARIANCE = (0.229**2, 0.224**2, 0.225**2)


@register_backbone("tiny")
def _tiny(image_size: int, model_name: str, imagenet: bool = False) -> keras.Model:
    """Three strided conv blocks: fast enough for tests and the CPU demo; no pretrained weights exist."""
    if imagenet:
        raise WeightsError(
            "backbone 'tiny' has no pretrained ImageNet weights; set model.weights: none "
            "(or a path to a .weights.h5 file saved from a tiny backbone)"
        )
    inp = keras.Input((image_size, image_size, 3), name=f"{model_name}_input")
    x = keras.layers.Rescaling(1.0 / 255.0, name="tiny_rescale")(inp)
    # Standardise with ImageNet statistics as EfficientNet does internally: pixel differences
    # then reach the first conv at ~4x the scale of [0, 1] inputs, which is what lets a
    # from-scratch CNN pick up intensity-coded signal within a few epochs.
    x = keras.layers.Normalization(mean=IMAGENET_MEAN, variance=IMAGENET_VARIANCE, name="tiny_normalize")(x)
    for i, filters in enumerate((16, 32, 64), start=1):
        # conv bias on: once Stage 1/2 freeze the BatchNorm after it, it cannot supply the offset
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", name=f"tiny_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"tiny_bn{i}")(x)
        x = keras.layers.ReLU(name=f"tiny_relu{i}")(x)
    return Backbone(inp, x, name=model_name)


def weights_kind(weights) -> str:
    """'none', 'imagenet' or 'file' for a model.weights value."""
    w = str(weights).strip() if weights is not None else "none"
    if w.lower() in ("none", "", "null"):
        return "none"
    return "imagenet" if w.lower() == "imagenet" else "file"


def uses_pretrained_weights(weights) -> bool:
    """True for ImageNet weights (downloaded or from a file): what decides the transfer recipe."""
    return weights_kind(weights) != "none"


def weights_file_sha256(weights) -> str | None:
    """sha256 of a model.weights file (None for 'none' / 'imagenet'): a cache key must change with the file."""
    if weights_kind(weights) != "file":
        return None
    digest = hashlib.sha256()
    with open(os.path.expanduser(str(weights).strip()), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_backbone(name: str, image_size: int, weights: str = "none", model_name: str = "backbone") -> keras.Model:
    """Build a registered backbone; ``weights`` is "none", "imagenet" or a path to a weights file.

    For a backbone with ImageNet weights (EfficientNet), a path is an ImageNet weights file
    (e.g. ``efficientnetb3_notop.h5``) and builds exactly the network ``weights="imagenet"``
    builds, Keras' ImageNet-only input scaling included. BatchNorm comes frozen (inference mode):
    only the pre-training of a from-scratch backbone unfreezes it, explicitly
    (training/pretrain.py via set_backbones_trainable(train_batchnorm=True)).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered backbones: {', '.join(sorted(BACKBONES))}")
    builder, kind = BACKBONES[name], weights_kind(weights)
    if kind == "none":
        model = builder(image_size, model_name)
    elif kind == "imagenet":
        model = _build_imagenet(name, builder, image_size, model_name)
    elif name in IMAGENET_FILES:
        model = _build_imagenet_from_file(name, builder, image_size, model_name, os.path.expanduser(str(weights).strip()))
    else:
        model = builder(image_size, model_name)
        load_backbone_weights(model, os.path.expanduser(str(weights).strip()), backbone_name=name)
    freeze_batchnorm(model)
    return model


def freeze_batchnorm(model: keras.Model) -> None:
    """Set every BatchNormalization layer (recursively) to trainable=False.

    Keras 3 BatchNormalization with trainable=False always runs in inference mode, whatever
    training flag reaches it: this is what keeps BatchNorm statistics fixed while the rest of
    an unfrozen backbone trains.
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, keras.Model):
            freeze_batchnorm(layer)


def keras_cache_file(fname: str) -> str:
    """Where keras.applications looks for a downloaded weights file (what file_utils.get_file resolves)."""
    from keras.src.backend import config as keras_config  # keras_home(): $KERAS_HOME read at import, or ~/.keras

    base = os.path.expanduser(keras_config.keras_home())
    if not os.access(base, os.W_OK):  # get_file falls back to /tmp/.keras in that case
        base = os.path.join("/tmp", ".keras")
    return os.path.join(base, "models", fname)


def _build_imagenet(name: str, builder, image_size: int, model_name: str) -> keras.Model:
    if name not in IMAGENET_FILES:
        return builder(image_size, model_name, imagenet=True)  # raises WeightsError (e.g. tiny)
    fname = IMAGENET_FILES[name]
    try:
        model = builder(image_size, model_name, imagenet=True)
    except Exception as exc:  # keras raises a bare Exception on a URL fetch failure
        raise WeightsError(
            f"ImageNet weights for backbone {name!r} could not be obtained ({type(exc).__name__}: {exc}). "
            f"Keras looks for the file {fname!r} at {keras_cache_file(fname)} (set KERAS_HOME to move it) and "
            f"downloads it when missing. Offline: download https://storage.googleapis.com/keras-applications/{fname} "
            f"on a machine with network, copy it here and set `model.weights: /path/to/{fname}` "
            f"(or use `model.weights: none` to train from random initialisation)."
        ) from exc
    cached = keras_cache_file(fname)
    if os.path.isfile(cached):
        _confirm_loaded(model, cached, name)
    return model


@contextlib.contextmanager
def _keras_fetch_returns(path: str):
    """While active, keras.applications' weight download step returns ``path`` instead of fetching.

    Building with weights="imagenet" is the only way to get Keras' ImageNet-only layers (the input
    Rescaling by 1/sqrt(std)); routing its fetch to the user's file builds exactly that network
    without a download or a hash check against Google's file. Yields the file names Keras asked for.
    """
    from keras.src.utils import file_utils

    asked: list = []
    original = file_utils.get_file

    def get_file(fname=None, origin=None, **kwargs):
        asked.append(fname)
        return path

    file_utils.get_file = get_file
    try:
        yield asked
    finally:
        file_utils.get_file = original


def _build_imagenet_from_file(name: str, builder, image_size: int, model_name: str, path: str) -> keras.Model:
    _check_weights_file(path, name)
    try:
        with warnings.catch_warnings(), _keras_fetch_returns(path) as asked:
            warnings.simplefilter("ignore")
            model = builder(image_size, model_name, imagenet=True)
    except Exception as exc:
        detail = str(exc)
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise WeightsError(
            f"weights file {path!r} does not fit backbone {name!r} built as for weights='imagenet' "
            f"(expected the keras.applications file {IMAGENET_FILES[name]!r}): {type(exc).__name__}: {detail}"
        ) from exc
    if not asked:
        raise WeightsError(
            f"building backbone {name!r} with ImageNet weights from {path!r}: this Keras version did not fetch "
            "its weights through keras.src.utils.file_utils.get_file, so the file was not read; put the file "
            f"at {keras_cache_file(IMAGENET_FILES[name])} and set model.weights: imagenet"
        )
    _confirm_loaded(model, path, name)
    return model


def _tensor_key(arr: np.ndarray) -> tuple:
    a = np.ascontiguousarray(np.asarray(arr, dtype=np.float32))
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


def _file_tensor_keys(path: str) -> set:
    import h5py

    keys: set = set()

    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub":
            keys.add(_tensor_key(obj[()]))

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return keys


def _confirm_loaded(model: keras.Model, path: str, backbone_name: str) -> None:
    """Raise unless every tensor of ``model`` (kernels and BatchNorm statistics) equals one stored in ``path``.

    Keras can skip or partially load weights with only a warning; comparing values is the
    only way to know the file's numbers actually arrived.
    """
    in_file = _file_tensor_keys(path)
    missing = [v.path for v in model.weights if _tensor_key(keras.ops.convert_to_numpy(v)) not in in_file]
    if missing or not model.weights:
        raise WeightsError(
            f"weights file {path!r} did not load into backbone {backbone_name!r}: "
            f"{len(missing)} of {len(model.weights)} tensors do not match any tensor in the "
            f"file (first: {', '.join(missing[:3])}). Use a file saved from the same backbone architecture."
        )


def load_backbone_weights(model: keras.Model, path: str, backbone_name: str = "") -> None:
    """Load a .weights.h5 / .h5 file into ``model`` strictly, then confirm the values arrived."""
    backbone_name = backbone_name or model.name
    path = os.path.expanduser(path)
    _check_weights_file(path, backbone_name)
    try:
        with warnings.catch_warnings():  # partial loads warn per layer; the value check below decides
            warnings.simplefilter("ignore")
            model.load_weights(path)
    except Exception as exc:
        detail = str(exc)
        detail = detail if len(detail) <= 400 else detail[:400] + " ..."
        raise WeightsError(
            f"weights file {path!r} does not fit backbone {backbone_name!r}: {type(exc).__name__}: {detail}"
        ) from exc
    _confirm_loaded(model, path, backbone_name)


def _check_weights_file(path: str, backbone_name: str) -> None:
    if not os.path.isfile(path):
        raise WeightsError(
            f"weights file {path!r} for backbone {backbone_name!r} does not exist; "
            "set model.weights to an existing .weights.h5 / .h5 file, 'imagenet' or 'none'"
        )
    if not (path.endswith(".h5") or path.endswith(".hdf5")):
        raise WeightsError(f"weights file {path!r} must be a .weights.h5 or .h5 file")
