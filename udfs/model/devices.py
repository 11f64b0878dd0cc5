"""Run each scoring task's model on the GPU Spark assigned to the task (issue 13, part 2).

Spark hands a task GPU addresses (`TaskContext.resources()["gpu"].addresses`: the indices
the discovery script printed, CUDA's indices inside the executor's processes). A worker:

- once, before TensorFlow starts its runtime, turns memory growth on for every GPU TF
  sees, or caps each at `model.gpu_memory_mb` (one logical device with that
  `memory_limit`). PySpark's daemon (udfs/daemon.py) imports TF before it forks the
  workers, but creates no runtime and touches no device, so each forked worker still
  configures its own devices here;
- runs each task's model under `tf.device("/GPU:<address>")` (the task's first address;
  `TaskDevice.names` holds all of them), with the worker's model cache keyed by that
  device: a reused worker handed another address loads a copy there and drops the copy on
  the old device (`model_cache.get_predict_fn`), so it never keeps scoring on a GPU
  another task now owns.

Why not make only the task's GPU visible (`tf.config.set_visible_devices`)? TF fixes the
visible devices when its runtime starts, so the worker could never move; and Spark hands a
reused worker whichever address is free, so with several GPUs per executor workers and
addresses do not stay paired. What keeping the executor's GPUs visible costs on a real
multi-GPU node: each worker creates a CUDA context on every GPU it sees (some 300-500 MB of
device memory each, used or not), and after a move the old GPU keeps the memory TF's
allocator took there until the worker ends (the dropped copy is freed into that allocator's
pool, which TF does not hand back to the device). With one GPU per executor
(conf/spark-cluster-gpu.conf), and on YARN and Kubernetes where an executor's container
usually sees only its own GPUs, a worker sees one GPU and none of this arises.

Where the assigned address has no TF device (no GPU, a CPU-only TF, the fake discovery
script), the task runs on CPU:0, said in one log line per worker and address. The manifest's
`devices` gives per worker the device it scored on (`last_label`, through `worker_stats`).

Test seam (GPU paths are built and tested on CPU): `BATCHSCORE_DEVICE_KIND=CPU` makes GPU
address i the logical CPU device i+1, CPU:0 staying the CPU for fallbacks. The worker splits
the CPU into 1 + `BATCHSCORE_DEVICE_COUNT` logical devices (default: `BATCHSCORE_FAKE_GPUS`,
the fake discovery script's count, else 1) before TF starts, so pinning, moves and fallbacks
run through TF's real placement on a machine without GPUs. TF allows no memory limit on CPU
devices: under the seam `model.gpu_memory_mb` is logged, not applied.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchscore.core.errors import ConfigError
from batchscore.udfs.model import cache as model_cache

log = logging.getLogger("batchscore")

DEVICE_KIND_ENV = "BATCHSCORE_DEVICE_KIND"  # CPU: the test seam; GPU (or unset): real GPUs
DEVICE_COUNT_ENV = "BATCHSCORE_DEVICE_COUNT"  # the seam's logical devices standing in for GPUs
FAKE_GPUS_ENV = "BATCHSCORE_FAKE_GPUS"  # conf/spark-gpu-discovery.sh: how many GPUs it fakes

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
    kind: str  # the TF device type standing for GPUs: GPU, or CPU under the seam
    by_address: dict[str, str]  # GPU address -> TF device name
    memory_mb: int | None  # the cap it was configured with (None: memory growth)


_worker: _WorkerDevices | None = None
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
        device = TaskDevice(None, "GPU:0 (no gpu assigned: TF's default)" if _gpus_seen() else "CPU:0")
    else:
        worker = _configure_worker(memory_mb)
        names = tuple(worker.by_address[a] for a in addresses if a in worker.by_address)
        device = TaskDevice(names[0], _label(worker, addresses, names[0]), names) if names else _fallback(addresses)
    _last_label = device.label
    return device


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
    """Configure this worker's devices once (before TF's runtime starts) and map addresses to them."""
    global _worker
    if _worker is not None:
        if memory_mb != _worker.memory_mb and ("memory",) not in _said:
            _said.add(("memory",))
            log.warning("model.gpu_memory_mb %s not applied in this Python worker (pid %d): an earlier task "
                        "configured its GPUs with %s, and TF allows that once per process",
                        memory_mb, os.getpid(), _worker.memory_mb)
        return _worker
    tf: Any = model_cache.import_tensorflow()
    kind = _device_kind()
    try:
        if kind == "CPU":
            count = _seam_count()
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count + 1)])
            # address i -> CPU:i+1; CPU:0 stays the CPU for fallbacks
            by_address = {str(i): f"/device:CPU:{i + 1}" for i in range(count)}
            if memory_mb is not None:
                log.info("model.gpu_memory_mb %d not applied: %s=CPU stands CPU devices in for GPUs",
                         memory_mb, DEVICE_KIND_ENV)
        else:
            gpus = tf.config.list_physical_devices("GPU")
            configure_gpu_memory(tf.config, gpus, memory_mb=memory_mb)
            by_address = {g.name.rsplit(":", 1)[-1]: "/device:GPU:" + g.name.rsplit(":", 1)[-1] for g in gpus}
    except RuntimeError:  # some other code in this worker started TF's runtime first
        logical = [d.name for d in tf.config.list_logical_devices(kind)]
        first = 1 if kind == "CPU" else 0  # under the seam CPU:0 is the CPU itself
        by_address = {str(i - first): name for i, name in enumerate(logical) if i >= first}
        log.warning("TensorFlow was already initialised in this Python worker (by other code run in it): "
                    "its %d %s device(s) keep their configuration (no memory growth or limit set here)",
                    len(logical), kind)
    _worker = _WorkerDevices(kind, by_address, memory_mb)
    return _worker


def _device_kind() -> str:
    kind = os.environ.get(DEVICE_KIND_ENV, "").strip().upper() or "GPU"
    if kind not in ("GPU", "CPU"):
        raise ConfigError(f"environment variable {DEVICE_KIND_ENV} must be GPU or CPU, got {kind!r}")
    return kind


def _seam_count() -> int:
    """How many logical CPU devices stand in for GPUs under the seam."""
    name = DEVICE_COUNT_ENV if os.environ.get(DEVICE_COUNT_ENV) else FAKE_GPUS_ENV
    raw = os.environ.get(name) or "1"
    if not raw.isdigit():
        raise ConfigError(f"environment variable {name} must be a number of devices, got {raw!r}")
    return int(raw)


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
