"""Run each scoring task's model on the GPU Spark assigned to it.

Once per worker, before TF's runtime starts, memory growth is turned on for every GPU
(or each is capped at `model.gpu_memory_mb`); each task's model then runs under
`tf.device("/GPU:<address>")` of its `TaskContext.resources()["gpu"]`, the model cache
keyed by that device. An address TF does not have runs on CPU:0, said once per worker.
Fake GPUs (docs/gpu-on-a-laptop.md): `BATCHSCORE_FAKE_GPUS=N` stands logical CPU devices
CPU:1..CPU:N in for GPU addresses 0..N-1.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchscore.core.errors import ConfigError
from batchscore.udfs.model import cache as model_cache

log = logging.getLogger("batchscore")

FAKE_GPUS_ENV = "BATCHSCORE_FAKE_GPUS"  # N: N logical CPU devices stand in for GPUs (also read by the discovery script)

Loader = Callable[[], tuple[object, model_cache.PredictFn]]


@dataclass(frozen=True)
class TaskDevice:
    """Where a task's model runs.

    `name`: the TF device ("/device:GPU:1"), None for TF's own placement (no GPU assigned);
    `label`: what the manifest says ("GPU:1", "CPU:0 (gpu 1 assigned, not visible)");
    `names`: the TF devices of all the task's assigned addresses that TF has.
    """

    name: str | None
    label: str
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class _WorkerDevices:
    kind: str  # the TF device type standing for GPUs: GPU, or CPU with fake GPUs
    by_address: dict[str, str]  # GPU address -> TF device name
    memory_mb: int | None  # the cap it was configured with (None: memory growth)


_worker: _WorkerDevices | None = None
_fake_gpus: int | None = None  # $BATCHSCORE_FAKE_GPUS, read once per process (None: not yet read)
_said: set[tuple[str, ...]] = set()  # log lines said once per worker: ("gpu", *addresses), ("memory",)
_last_label: str | None = None


def pin_task(addresses: list[str], *, memory_mb: int | None = None) -> TaskDevice:
    """The device this task's model runs on, the worker's devices configured on first use.

    Args:
        addresses: the task's GPU addresses (`scoring.task_resources`); none: TF's own
            placement, nothing configured.
        memory_mb: `model.gpu_memory_mb`, a per-process cap on each GPU (None: memory growth).
    """
    global _last_label
    if not addresses:
        if fake_gpus():
            _configure_worker(memory_mb)  # the stand-ins exist for `placement: split` (worker_gpus)
        device = TaskDevice(None, "GPU:0 (no gpu assigned: TF's default)" if _gpus_seen() else "CPU:0")
    else:
        worker = _configure_worker(memory_mb)
        names = tuple(worker.by_address[a] for a in addresses if a in worker.by_address)
        device = TaskDevice(names[0], _label(worker, addresses, names[0]), names) if names else _fallback(addresses)
    _last_label = device.label
    return device


def fake_gpus() -> int:
    """N from `$BATCHSCORE_FAKE_GPUS` (0 when unset: real GPUs), read once per process.

    Raises:
        ConfigError: the value is not a whole number.
    """
    global _fake_gpus
    if _fake_gpus is None:
        raw = os.environ.get(FAKE_GPUS_ENV) or "0"
        if not re.fullmatch(r"[0-9]+", raw):  # the discovery script's rule
            raise ConfigError(f"{FAKE_GPUS_ENV} must be a number of GPUs, got {raw!r}")
        _fake_gpus = int(raw)
    return _fake_gpus


def worker_gpus() -> list[str]:
    """The TF devices of every GPU this worker has, in address order: the logical CPU devices
    standing in for them with fake GPUs (configured here on first use), else TF's logical GPUs."""
    if fake_gpus():
        by_address = (_worker or _configure_worker(None)).by_address
        return [by_address[a] for a in sorted(by_address, key=int)]
    tf: Any = model_cache.import_tensorflow()
    return [d.name for d in tf.config.list_logical_devices("GPU")]


def last_label() -> str | None:
    """The label of the device this worker's latest task ran on (None: no task pinned yet)."""
    return _last_label


def placed(load: Loader, device: TaskDevice) -> Loader:
    """`load` with the model built, and every predict call run, under `tf.device(device.name)`.

    Variables are created on that device (a SavedModel saved without device placements, as
    `tf.saved_model.save` writes by default, restores them in the enclosing device scope).
    """
    if device.name is None:
        return load
    name = device.name

    def load_on_device() -> tuple[object, model_cache.PredictFn]:
        tf: Any = model_cache.import_tensorflow()
        with tf.device(name):
            model, predict = load()

        def predict_on_device(inputs: dict[str, Any]) -> dict[str, Any]:
            with tf.device(name):
                return predict(inputs)

        return model, predict_on_device

    return load_on_device


def configure_gpu_memory(config: Any, gpus: list[Any], *, memory_mb: int | None) -> None:
    """Memory growth on for each of `gpus`, or one logical device capped at `memory_mb` on each.

    With a cap TF reserves it whole at start unless growth is forced
    (`TF_FORCE_GPU_ALLOW_GROWTH=true`, as the GPU profiles set) or the allocator is
    `cuda_malloc_async`; then the cap bounds what grows.

    Args:
        config: `tf.config`.
        gpus: physical GPU devices (`tf.config.list_physical_devices("GPU")`).

    Raises:
        RuntimeError: TF's runtime has started already.
    """
    for gpu in gpus:
        if memory_mb is None:
            config.experimental.set_memory_growth(gpu, True)
        else:
            config.set_logical_device_configuration(gpu, [config.LogicalDeviceConfiguration(memory_limit=memory_mb)])


def _configure_worker(memory_mb: int | None) -> _WorkerDevices:
    """Configure this worker's devices once (before TF's runtime starts) and map addresses to them.

    PySpark's daemon (udfs/daemon.py) imports TF before it forks the workers but starts no
    runtime, so each forked worker still configures its own devices here. Every GPU of the
    executor stays visible (no `tf.config.set_visible_devices`): TF fixes the visible devices
    when its runtime starts, so a worker could never move, and Spark hands a reused worker
    whichever address is free. The cost on a multi-GPU executor: a CUDA context per worker on
    every GPU it sees (300-500 MB of device memory each), and after a move the old GPU keeps
    what TF's allocator took there until the worker ends. With one GPU per executor
    (conf/spark-cluster-gpu.conf), or a container that sees only its GPUs, none of this arises.
    """
    global _worker
    if _worker is not None:
        if memory_mb != _worker.memory_mb and ("memory",) not in _said:
            _said.add(("memory",))
            log.warning("model.gpu_memory_mb %s not applied in this Python worker (pid %d): an earlier task "
                        "configured its GPUs with %s, and TF allows that once per process",
                        memory_mb, os.getpid(), _worker.memory_mb)
        return _worker
    tf: Any = model_cache.import_tensorflow()
    count = fake_gpus()
    kind = "CPU" if count else "GPU"
    try:
        if count:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count + 1)])
            # address i -> CPU:i+1; CPU:0 stays the CPU for fallbacks
            by_address = {str(i): f"/device:CPU:{i + 1}" for i in range(count)}
            if memory_mb is not None:
                log.info("model.gpu_memory_mb %d not applied: %s=%d stands CPU devices in for GPUs",
                         memory_mb, FAKE_GPUS_ENV, count)
        else:
            gpus = tf.config.list_physical_devices("GPU")
            configure_gpu_memory(tf.config, gpus, memory_mb=memory_mb)
            by_address = {g.name.rsplit(":", 1)[-1]: "/device:GPU:" + g.name.rsplit(":", 1)[-1] for g in gpus}
    except RuntimeError:  # some other code in this worker started TF's runtime first
        logical = [d.name for d in tf.config.list_logical_devices(kind)]
        first = 1 if kind == "CPU" else 0  # with fake GPUs CPU:0 is the CPU itself
        by_address = {str(i - first): name for i, name in enumerate(logical) if i >= first}
        log.warning("TensorFlow was already initialised in this Python worker (by other code run in it): "
                    "its %d %s device(s) keep their configuration (no memory growth or limit set here)",
                    len(logical), kind)
    _worker = _WorkerDevices(kind, by_address, memory_mb)
    return _worker


def _label(worker: _WorkerDevices, addresses: list[str], name: str) -> str:
    short = name.removeprefix("/device:")
    if worker.kind == "GPU":
        return short
    address = next(a for a in addresses if worker.by_address.get(a) == name)
    return f"{short} (stands in for gpu {address})"


def _fallback(addresses: list[str]) -> TaskDevice:
    """CPU:0 for a task whose GPUs TF does not have, said once per worker and addresses."""
    what = f"gpu {addresses[0]}" if len(addresses) == 1 else f"gpus {','.join(addresses)}"
    if ("gpu", *addresses) not in _said:
        _said.add(("gpu", *addresses))
        log.warning("Spark assigned %s to this task, but TensorFlow has no such device in this Python worker "
                    "(pid %d): scoring on CPU:0", what, os.getpid())
    return TaskDevice("/device:CPU:0", f"CPU:0 ({what} assigned, not visible)", ("/device:CPU:0",))


def _gpus_seen() -> bool:
    """Whether TF sees a GPU here (listing physical devices does not start its runtime)."""
    tf: Any = model_cache.import_tensorflow()
    return bool(tf.config.list_physical_devices("GPU"))
