"""Heat maps for one image branch of a saved model: Grad-CAM, Grad-CAM++, integrated gradients.

The score explained is the centred log-probability of one class (the fusion model's predicted
class; for a softmax output this is its logit minus the mean logit). Grad-CAM weighs a target layer's feature maps by the mean gradient of that
score; the target layer is found by name inside the branch's nested backbone (`<m>_backbone`),
by default its last spatial layer, and captured during one eager forward pass, so any layer of
any backbone works without rebuilding the graph. A map whose gradients vanish (a constant-output
model, a branch the fusion ignores) is returned all zero and flagged, never rescaled noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("gradcam", "gradcam++", "integrated_gradients")
# the backbone's last spatial (4-D) layer; named explicitly where the registry knows the backbone
DEFAULT_TARGETS = {"tiny": "tiny_relu3", "efficientnet_b3": "top_activation", "efficientnet_b0": "top_activation"}
IG_STEPS = 32
# below this largest |gradient| (of a probability) a map is flagged and left at zero
ZERO_GRADIENT = 1e-10


@dataclass
class Saliency:
    """Per sample: a map in [0, 1] over the crop (image_size x image_size), and why it is flat, if it is."""

    maps: np.ndarray  # (n, H, W) float
    flags: list  # per sample: "" or the reason the map is all zero
    target_layer: str


def backbone_of(model, modality: str):
    try:
        return model.get_layer(f"{modality}_backbone")
    except ValueError:
        raise ValueError(f"the model has no layer {modality + '_backbone'!r}: it has no {modality!r} image branch "
                         f"(layers: {', '.join(l.name for l in model.layers)})") from None


def spatial_layers(backbone) -> list[str]:
    """Names of the backbone's layers (its input excepted) whose output is a feature map (batch, h, w, c)."""
    import keras

    return [layer.name for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)
            and len(getattr(layer.output, "shape", ())) == 4]


def default_target_layer(backbone) -> str:
    """DEFAULT_TARGETS by the backbone's layer names, else its last layer with a 4-D (spatial) output."""
    names = [layer.name for layer in backbone.layers]
    for target in DEFAULT_TARGETS.values():
        if target in names:
            return target
    spatial = spatial_layers(backbone)
    if not spatial:
        raise ValueError(f"backbone {backbone.name!r} has no layer with a spatial output to explain")
    return spatial[-1]


def _target(backbone, name: str | None):
    name = name or default_target_layer(backbone)
    try:
        layer = backbone.get_layer(name)
    except ValueError:
        raise ValueError(f"--target_layer {name!r} is not a layer of {backbone.name!r}; its last feature-map layers "
                         f"are: {', '.join(spatial_layers(backbone)[-12:])}") from None
    if name not in spatial_layers(backbone):
        raise ValueError(f"--target_layer {name!r} (output shape {tuple(layer.output.shape)}) is not a feature map "
                         "computed inside the backbone: choose a convolutional layer, e.g. "
                         f"{default_target_layer(backbone)!r}")
    return layer


class _Capture:
    """Records a layer's output tensor during an eager call (the tape then differentiates with respect to it)."""

    def __init__(self, layer):
        self.layer, self.value = layer, None

    def __enter__(self):
        original = self.layer.call

        def call(*args, **kwargs):
            self.value = original(*args, **kwargs)
            return self.value

        self.layer.call = call
        return self

    def __exit__(self, *exc):
        del self.layer.call  # back to the class's method


def _score(out, classes):
    """Sum over samples of log p_c - mean_j log p_j: the centred logit for a softmax output (for the fusion
    layer's mixture of two probability vectors, its analogue). Unlike p_c it does not saturate: a confident
    model's p_c has a vanishing gradient, which left most Grad-CAM maps of a well-trained model empty."""
    import tensorflow as tf

    logp = tf.math.log(tf.clip_by_value(tf.cast(out, tf.float32), 1e-12, 1.0))
    centred = logp - tf.reduce_mean(logp, axis=1, keepdims=True)
    return tf.reduce_sum(tf.gather(centred, classes, axis=1, batch_dims=1))


def _inputs_tf(inputs: dict):
    import tensorflow as tf

    return {k: tf.convert_to_tensor(np.asarray(v, np.float32)) for k, v in inputs.items()}


def _cam_weights(method: str, acts, grads):
    """Per-channel weights (n, 1, 1, c): mean gradient (Grad-CAM) or the Grad-CAM++ alpha-weighted positive gradient."""
    if method == "gradcam":
        return grads.mean(axis=(1, 2), keepdims=True)
    g2, g3 = grads ** 2, grads ** 3
    denom = 2.0 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=np.abs(denom) > 1e-30)
    return (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2), keepdims=True)


def _finish(raw: np.ndarray, max_grad: np.ndarray, size: int, target: str) -> Saliency:
    """Upsample each map to the crop, scale to [0, 1]; zero and flag the ones without gradient or evidence."""
    import keras

    up = keras.ops.convert_to_numpy(keras.ops.image.resize(raw[..., None].astype(np.float32), (size, size),
                                                           interpolation="bilinear"))[..., 0]
    maps, flags = np.zeros_like(up), []
    for i in range(len(up)):
        top = float(up[i].max())
        if max_grad[i] < ZERO_GRADIENT:
            flags.append(f"zero gradient (max |grad| {max_grad[i]:.1e}): the score does not depend on this branch")
        elif top <= 0.0:
            flags.append("no positive evidence: every location lowers the class score")
        else:
            flags.append("")
            maps[i] = np.clip(up[i], 0.0, None) / top
    return Saliency(maps, flags, target)


def grad_cam(model, inputs: dict, modality: str, classes, method: str = "gradcam",
             target_layer: str | None = None) -> Saliency:
    """Grad-CAM / Grad-CAM++ of `modality`'s branch for the given class of each sample (one batch)."""
    import tensorflow as tf

    layer = _target(backbone_of(model, modality), target_layer)
    x = _inputs_tf(inputs)
    with tf.GradientTape() as tape, _Capture(layer) as cap:
        tape.watch(list(x.values()))
        out = model(x, training=False)
        score = _score(out, np.asarray(classes, np.int32))
    grads = tape.gradient(score, cap.value)
    if grads is None:
        raise RuntimeError(f"no gradient reached layer {layer.name!r}: it is not on the path to the model's output")
    acts, grads = cap.value.numpy().astype(np.float64), grads.numpy().astype(np.float64)
    raw = np.maximum((_cam_weights(method, acts, grads) * acts).sum(axis=-1), 0.0)
    return _finish(raw, np.abs(grads).max(axis=(1, 2, 3)), x[modality].shape[1], layer.name)


def integrated_gradients(model, inputs: dict, modality: str, classes, steps: int = IG_STEPS) -> Saliency:
    """|sum over channels of (x - 0) * mean gradient| along the straight path from a black crop to the crop."""
    import tensorflow as tf

    n = len(inputs[modality])
    raw, max_grad = [], np.zeros(n)
    alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps  # midpoint rule
    for i in range(n):
        x = {k: np.repeat(np.asarray(v[i:i + 1], np.float32), steps, axis=0) for k, v in inputs.items()}
        x[modality] = x[modality] * alphas[:, None, None, None]
        xt = _inputs_tf(x)
        with tf.GradientTape() as tape:
            tape.watch(xt[modality])
            score = _score(model(xt, training=False), np.full(steps, classes[i], np.int32))
        g = tape.gradient(score, xt[modality]).numpy().astype(np.float64)
        max_grad[i] = np.abs(g).max()
        raw.append(np.abs((np.asarray(inputs[modality][i], np.float64) * g.mean(axis=0)).sum(axis=-1)))
    return _finish(np.stack(raw), max_grad, inputs[modality].shape[1], "input")


def saliency(model, inputs: dict, modality: str, classes, method: str = "gradcam",
             target_layer: str | None = None) -> Saliency:
    if method not in METHODS:
        raise ValueError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if method == "integrated_gradients":
        return integrated_gradients(model, inputs, modality, classes)
    return grad_cam(model, inputs, modality, classes, method, target_layer)


def quadrant_mass(m: np.ndarray) -> np.ndarray:
    """Share of a map's total mass in each quadrant, order (top-left, top-right, bottom-left, bottom-right)."""
    h, w = m.shape[0] // 2, m.shape[1] // 2
    q = np.array([m[:h, :w].sum(), m[:h, w:].sum(), m[h:, :w].sum(), m[h:, w:].sum()])
    return q / q.sum() if q.sum() > 0 else q
