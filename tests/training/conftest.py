import numpy as np
import pytest
import tensorflow as tf

from medfusion.config import ModelConfig, StageConfig


@pytest.fixture
def tiny_cfg():
    return ModelConfig(backbone="tiny", weights="none", head_units=8, dropout=0.0)


@pytest.fixture
def strategy():
    return tf.distribute.OneDeviceStrategy("/cpu:0")


@pytest.fixture
def toy_images():
    """Tiny learnable data: the class is the image brightness."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 48)
    x = (y[:, None, None, None] * 80 + rng.integers(0, 30, (48, 16, 16, 3))).astype(np.uint8)
    return x, y


@pytest.fixture
def quick_stage():
    return StageConfig(epochs=2, lr=1e-2, patience=5)
