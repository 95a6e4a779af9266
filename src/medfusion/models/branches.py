"""One image branch: backbone (inference mode whenever frozen) -> pooling -> small dense head."""

from __future__ import annotations

import keras

from medfusion.models.backbones import build_backbone


def build_image_branch(modality: str, model_cfg, image_size: int):
    """Return ``(input_tensor, features)`` for one image modality.

    Layer names depend only on the modality, so the pre-trained standalone model and every
    fusion model that contains the modality share them and weights transfer by name.
    A ``training=False`` here would not hold: Keras 3 passes the outer model's training flag
    to nested models. Inference mode comes from the backbone itself (models.backbones.Backbone):
    frozen (``trainable=False``), it runs with no dropout, stochastic depth or BatchNorm update;
    BatchNorm layers frozen one by one (Stage 2, pretrained weights) stay in inference mode.
    """
    inp = keras.Input((image_size, image_size, 3), name=modality)
    backbone = build_backbone(model_cfg.backbone, image_size, model_cfg.weights, model_name=f"{modality}_backbone")
    x = backbone(inp)
    x = keras.layers.GlobalAveragePooling2D(name=f"{modality}_pool")(x)
    x = keras.layers.Dense(model_cfg.head_units, activation="relu", name=f"{modality}_dense")(x)
    x = keras.layers.Dropout(model_cfg.dropout, name=f"{modality}_dropout")(x)
    return inp, x
