"""Model builders: the standalone pre-training model and the multimodal fusion model.

Builders return UNCOMPILED models whose inputs are keyed by modality name; every layer has
an explicit name because pre-trained image weights are transferred into fusion models by name.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from medfusion.constants import NUM_CLASSES, parse_combination
from medfusion.models.branches import build_image_branch

# softmax outputs and the fusion layer compute in float32 under every dtype policy (training/precision.py):
# float16 probabilities lose the small class probabilities the focal loss and the log loss read
OUTPUT_DTYPE = "float32"


@keras.saving.register_keras_serializable(package="medfusion")
class LearnableFusionWeights(keras.layers.Layer):
    """``s * p_rf + (1 - s) * p_img`` with one trainable scalar, ``s = sigmoid(logit_scale * logit)``.

    The logit is stored divided by ``logit_scale``: Adam moves a parameter by roughly the
    learning rate per step whatever its gradient, so a bare logit would need hundreds of epochs
    to move at lr 1e-3; scaled, it moves within a stage. The output is a convex combination of
    two probability vectors, hence still a probability vector, and the gradient reaches the
    image branch multiplied only by (1 - s), never by an extra constant.
    """

    def __init__(self, init_rf_weight: float = 0.7, logit_scale: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < float(init_rf_weight) < 1.0:
            raise ValueError(f"init_rf_weight must be in (0, 1), got {init_rf_weight!r}")
        if not float(logit_scale) > 0.0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale!r}")
        self.init_rf_weight = float(init_rf_weight)
        self.logit_scale = float(logit_scale)

    def build(self, input_shape=None):
        init = math.log(self.init_rf_weight / (1.0 - self.init_rf_weight)) / self.logit_scale
        self.logit = self.add_weight(
            name="logit", shape=(), initializer=keras.initializers.Constant(init), trainable=True
        )
        self.built = True

    def call(self, inputs):
        p_rf, p_img = inputs
        p_rf = ops.cast(p_rf, self.compute_dtype)
        p_img = ops.cast(p_img, self.compute_dtype)
        s = ops.sigmoid(self.logit_scale * ops.cast(self.logit, self.compute_dtype))
        return s * p_rf + (1.0 - s) * p_img

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[1])

    def rf_weight(self) -> float:
        """Current weight of the Random Forest probabilities (the initial one before build)."""
        if not self.built:
            return self.init_rf_weight
        z = self.logit_scale * float(keras.ops.convert_to_numpy(self.logit))
        return 1.0 / (1.0 + math.exp(-z))

    def set_rf_weight(self, weight: float) -> None:
        """Set the forest weight directly (a value fit outside gradient descent, e.g. on held-out rows)."""
        if not 0.0 < float(weight) < 1.0:
            raise ValueError(f"forest weight must be in (0, 1), got {weight!r}")
        self.logit.assign(math.log(weight / (1.0 - weight)) / self.logit_scale)

    def get_config(self):
        config = super().get_config()
        config.update({"init_rf_weight": self.init_rf_weight, "logit_scale": self.logit_scale})
        return config


def build_pretrain_model(modality: str, model_cfg, image_size: int) -> keras.Model:
    """Standalone single-modality classifier used to pre-train one image branch.

    Same branch layer names as in the fusion model; the final ``output`` layer is the only
    one that is not transferred.
    """
    inp, feats = build_image_branch(modality, model_cfg, image_size)
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output", dtype=OUTPUT_DTYPE)(feats)
    return keras.Model(inputs={modality: inp}, outputs=out, name=f"pretrain_{modality}")


def build_fusion_model(combination: str, model_cfg, image_size: int) -> keras.Model:
    """Fusion model for a canonical combination such as ``metadata+depth_rgb+thermal_map``.

    With metadata, the ``metadata`` input holds the Random Forest's 3 class probabilities and is
    mixed with the image classifier's probabilities by ``LearnableFusionWeights`` (layer ``fusion``,
    the output). Without metadata the image features end in ``Dense(3, name="output")``.
    """
    modalities = parse_combination(combination)
    image_mods = [m for m in modalities if m != "metadata"]
    if not image_mods:
        raise ValueError(
            f"combination {combination!r} has no image modality: the metadata-only result is the Random "
            "Forest's probabilities and no network is trained for it"
        )
    inputs: dict = {}
    feats = []
    for mod in image_mods:
        inp, f = build_image_branch(mod, model_cfg, image_size)
        inputs[mod] = inp
        feats.append(f)
    x = feats[0] if len(feats) == 1 else keras.layers.Concatenate(name="image_concat")(feats)
    if "metadata" in modalities:
        meta = keras.Input((NUM_CLASSES,), name="metadata")
        p_img = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="image_classifier", dtype=OUTPUT_DTYPE)(x)
        out = LearnableFusionWeights(
            init_rf_weight=model_cfg.fusion_init_rf_weight,
            logit_scale=model_cfg.fusion_logit_scale,
            name="fusion",
            dtype=OUTPUT_DTYPE,
        )([meta, p_img])
        inputs = {"metadata": meta, **inputs}
    else:
        out = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="output", dtype=OUTPUT_DTYPE)(x)
    return keras.Model(inputs=inputs, outputs=out, name="fusion_" + "_".join(modalities))


def backbone_layers(model: keras.Model) -> list:
    """The nested ``<modality>_backbone`` models, in layer order (what Stage 1 freezes)."""
    return [l for l in model.layers if isinstance(l, keras.Model) and l.name.endswith("_backbone")]


def fusion_layer(model: keras.Model):
    """The ``LearnableFusionWeights`` layer of a fusion model, or None when it has no metadata input."""
    for l in model.layers:
        if isinstance(l, LearnableFusionWeights):
            return l
    return None
