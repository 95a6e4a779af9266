"""Device selection and the distribution strategy; must run before TensorFlow executes any op.

`--cpu_replicas N` splits the CPU into N logical devices so the MirroredStrategy path
(global batch = per-replica batch x replicas, variables and compile inside the scope)
is exercised on machines without GPUs.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from medfusion.config import RuntimeConfig

log = logging.getLogger("medfusion")


class DeviceError(RuntimeError):
    pass


def configure_tensorflow(cfg, threads: int | None = None) -> None:
    """Logging and threads before the first op; `threads`: a job's CPU share (a Ray task's num_cpus)."""
    if cfg.runtime.verbosity < 3:
        tf.get_logger().setLevel("ERROR")  # retracing notices for each new model are expected here
    if cfg.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
        # one thread per op: CPU kernels otherwise split float reductions by thread timing
        threads = 1
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def configure_strategy(rt: RuntimeConfig) -> tf.distribute.Strategy:
    cpus = tf.config.list_physical_devices("CPU")
    gpus = tf.config.list_physical_devices("GPU")
    try:
        if rt.cpu_replicas > 1:
            tf.config.set_visible_devices([], "GPU")
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(rt.cpu_replicas)])
        elif rt.device_mode == "cpu":
            tf.config.set_visible_devices([], "GPU")
        elif rt.device_mode == "custom":
            wanted = [int(g) for g in rt.gpus]
            bad = [g for g in wanted if g < 0 or g >= len(gpus)]
            if bad:
                raise DeviceError(f"--gpus {','.join(map(str, rt.gpus))}: GPU {bad[0]} does not exist "
                                  f"({len(gpus)} GPU(s) visible)")
            tf.config.set_visible_devices([gpus[g] for g in wanted], "GPU")
        for g in tf.config.get_visible_devices("GPU"):
            tf.config.experimental.set_memory_growth(g, True)
    except RuntimeError as exc:
        if "initialized" in str(exc):
            raise DeviceError("devices must be configured before TensorFlow runs its first op; "
                              "call configure_strategy at start-up") from exc
        raise

    if rt.cpu_replicas > 1:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][: rt.cpu_replicas]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
    else:
        visible = tf.config.list_logical_devices("GPU")
        if rt.device_mode in ("multi", "custom"):
            if not visible:
                raise DeviceError(f"--device_mode {rt.device_mode} found no GPU; use --device_mode cpu, "
                                  "or --cpu_replicas N to run the multi-replica path on the CPU")
            strategy = tf.distribute.MirroredStrategy(devices=[d.name for d in visible])
        elif rt.device_mode == "single" and visible:
            strategy = tf.distribute.OneDeviceStrategy(visible[0].name)
        else:
            if rt.device_mode == "single":
                log.warning("--device_mode single: no GPU visible, running on the CPU")
            strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    return strategy


def describe(strategy: tf.distribute.Strategy) -> str:
    devices = getattr(strategy.extended, "worker_devices", ())
    return (f"{type(strategy).__name__}, {strategy.num_replicas_in_sync} replica(s) in sync"
            f" on {', '.join(devices) if devices else 'default device'}")
