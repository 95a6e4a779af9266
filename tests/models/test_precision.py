"""runtime.precision / runtime.jit_compile: resolution, validation, and float32 outputs under a mixed policy."""

from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from medfusion.config import Config, ConfigError, ModelConfig, replace, validate
from medfusion.models.fusion import build_fusion_model, build_pretrain_model, fusion_layer
from medfusion.models.losses import focal_loss
from medfusion.training import precision

S = 16


@pytest.fixture
def restore_policy():
    before = keras.config.dtype_policy().name
    yield
    keras.config.set_dtype_policy(before)


def test_auto_resolution():
    assert precision.resolve_precision("auto", []) == "float32"
    assert precision.resolve_precision("auto", [(8, 0)]) == "mixed_float16"
    assert precision.resolve_precision("auto", [(6, 1)]) == "float32"  # no tensor cores
    assert precision.resolve_precision("auto", [(8, 0), (6, 1)]) == "float32"  # the slowest GPU decides
    assert precision.resolve_precision("Mixed_BFloat16", []) == "mixed_bfloat16"
    assert precision.resolve_jit("auto", []) is False
    assert precision.resolve_jit("auto", [(9, 0)]) is True
    assert precision.resolve_jit(True, []) is True  # YAML true reaches the config as a bool-like string
    assert precision.resolve_jit("false", [(9, 0)]) is False


@pytest.mark.parametrize("key,value", [("runtime.precision", "fp16"), ("runtime.jit_compile", "sometimes")])
def test_validation_rejects_unknown_values(key, value):
    with pytest.raises(ConfigError, match=f"'{key}' = '{value}'.*one of"):
        validate(replace(Config(), key, value))
    with pytest.raises(ConfigError, match=key):
        precision.configure(SimpleNamespace(precision=value if key.endswith("precision") else "auto",
                                            jit_compile=value if key.endswith("jit_compile") else "auto"))


def test_checkpoint_every_validated():
    with pytest.raises(ConfigError, match="train.checkpoint_every"):
        validate(replace(Config(), "train.checkpoint_every", 0))


def test_mixed_float16_keeps_outputs_and_fusion_float32(restore_policy):
    out = precision.configure(SimpleNamespace(precision="mixed_float16", jit_compile="false"))
    assert out == {"precision": "mixed_float16", "jit_compile": False}
    cfg = ModelConfig(backbone="tiny", weights="none", head_units=8, dropout=0.1)
    model = build_fusion_model("metadata+depth_rgb", cfg, S)
    assert model.get_layer("depth_rgb_dense").compute_dtype == "float16"  # the policy took effect
    fusion = fusion_layer(model)
    assert fusion.compute_dtype == "float32" and all(v.dtype == "float32" for v in fusion.weights)
    assert model.get_layer("image_classifier").compute_dtype == "float32"
    rng = np.random.default_rng(0)
    meta = rng.dirichlet(np.ones(3), 4).astype("float32")
    x = {"metadata": meta, "depth_rgb": rng.uniform(0, 255, (4, S, S, 3)).astype("float32")}
    p = model.predict(x, verbose=0)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)
    pre = build_pretrain_model("depth_rgb", cfg, S)
    assert pre.get_layer("output").compute_dtype == "float32"
    assert keras.ops.convert_to_numpy(pre({"depth_rgb": x["depth_rgb"]})).dtype == np.float32
    # one training step: Keras wraps the optimizer for loss scaling and the loss comes back float32
    pre.compile(optimizer=keras.optimizers.Adam(1e-3), loss=focal_loss([1 / 3] * 3, 2.0), jit_compile=False)
    assert isinstance(pre.optimizer, keras.optimizers.LossScaleOptimizer)
    loss = pre.train_on_batch({"depth_rgb": x["depth_rgb"]}, np.eye(3, dtype="float32")[[0, 1, 2, 0]])
    assert np.isfinite(loss)


def test_jit_for_follows_the_setting_and_is_off_on_this_cpu():
    from medfusion.config import RuntimeConfig
    from medfusion.training.precision import jit_for

    assert jit_for(RuntimeConfig(jit_compile="true")) is True
    assert jit_for(RuntimeConfig(jit_compile="false")) is False
    assert jit_for(RuntimeConfig(jit_compile="auto")) is False  # no GPU here
