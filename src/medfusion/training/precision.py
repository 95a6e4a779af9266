"""Numeric precision and XLA for a job: runtime.precision and runtime.jit_compile resolved once.

`configure(cfg.runtime)` sets Keras' global dtype policy (layers built afterwards compute in it)
and returns what it resolved, for the job record. Softmax outputs, the fusion layer and the
loss stay float32 in every policy: the builders give those layers dtype="float32", and Keras
computes losses in float32. Under mixed_float16 Keras' compile wraps the optimizer in a
LossScaleOptimizer itself.

XLA is passed to `compile` explicitly (run_stage): Keras turns `jit_compile="auto"` off for a
model built under a distribution-strategy scope, and every medfusion model is built under one.
`auto` = on when a GPU is visible, off on CPU, where XLA measured slower (shared/DESIGN.md).
"""

from __future__ import annotations

import logging

import keras

from medfusion.config import JIT_MODES, PRECISIONS, ConfigError

log = logging.getLogger("medfusion")

MIN_FLOAT16_CAPABILITY = (7, 0)  # tensor cores (Volta); older GPUs run float16 slower than float32


def _gpu_capabilities() -> list[tuple[int, int]]:
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cap = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        caps.append(tuple(cap) if cap else (0, 0))
    return caps


def resolve_precision(value: str, capabilities: list[tuple[int, int]]) -> str:
    """The dtype policy name for runtime.precision given the visible GPUs' compute capabilities."""
    v = str(value).strip().lower()
    if v not in PRECISIONS:
        raise ConfigError(f"config key 'runtime.precision' = {value!r} is out of range: one of {', '.join(PRECISIONS)}")
    if v != "auto":
        return v
    if capabilities and min(capabilities) >= MIN_FLOAT16_CAPABILITY:
        return "mixed_float16"
    return "float32"


def resolve_jit(value, capabilities: list[tuple[int, int]]) -> bool:
    """runtime.jit_compile as the bool passed to compile (auto: True only with a GPU)."""
    v = str(value).strip().lower()
    if v not in JIT_MODES:
        raise ConfigError(f"config key 'runtime.jit_compile' = {value!r} is out of range: one of {', '.join(JIT_MODES)}")
    return bool(capabilities) if v == "auto" else v == "true"


def resolved(runtime_cfg, caps: list[tuple[int, int]] | None = None) -> dict:
    """{"precision", "jit_compile"} as this process's GPUs resolve them: what a job computes in, and so what
    the pre-training key holds ("auto" is float32 on a CPU driver and mixed_float16 on a GPU worker)."""
    caps = _gpu_capabilities() if caps is None else caps
    return {"precision": resolve_precision(runtime_cfg.precision, caps),
            "jit_compile": resolve_jit(runtime_cfg.jit_compile, caps)}


def configure(runtime_cfg) -> dict:
    """Set the global dtype policy from runtime.precision; returns {"precision", "jit_compile"} as resolved."""
    caps = _gpu_capabilities()
    now = resolved(runtime_cfg, caps)
    precision, jit = now["precision"], now["jit_compile"]
    keras.config.set_dtype_policy(precision)
    log.info("precision %s (runtime.precision: %s), XLA %s (runtime.jit_compile: %s); GPUs: %s", precision,
             runtime_cfg.precision, "on" if jit else "off", runtime_cfg.jit_compile,
             ", ".join(f"compute capability {a}.{b}" for a, b in caps) or "none")
    return {"precision": precision, "jit_compile": jit}


def jit_for(runtime_cfg) -> bool:
    """runtime.jit_compile resolved on this process's GPUs: what every run_stage of a job passes to compile."""
    return resolve_jit(runtime_cfg.jit_compile, _gpu_capabilities())
