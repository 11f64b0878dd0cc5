"""Load a model once per Python worker process and hand out its predict function.

Spark reuses Python workers across tasks (`spark.python.worker.reuse`, on by
default), so a module-level cache keyed by the model fingerprint (and the device the
copy lives on, udfs/model/devices.py) keeps exactly one loaded copy per worker process.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from batchscore.core.errors import ModelError
from batchscore.udfs.model import tf_startup
from batchscore.udfs.model.distribution import ModelSource
from batchscore.udfs.model.worker_tuning import freeze_long_lived_objects

log = logging.getLogger(__name__)

PredictFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

_lock = threading.Lock()
_cache: dict[tuple[str, str | None], tuple[object, PredictFn]] = {}  # (model key, device) -> copy
_loads = 0
_threads_set: int | None = None
_seconds = {"tf_import": 0.0, "model_load": 0.0}  # spent in this process, for the run's phases
# The Python daemon's TF import before it forked this worker (udfs/daemon.py): `tf_import_s`,
# `prestarted` (1.0: the daemon started while the JVM started), `launched_at` (when Spark launched it)
_daemon: dict[str, float] = {}


def seconds_spent() -> dict[str, float]:
    """Seconds this process has spent importing TensorFlow and loading models (a copy)."""
    return dict(_seconds)


def import_tensorflow() -> Any:
    """`import tensorflow`, timed the first time (the import costs seconds), with the C++ lines it
    prints before reading `TF_CPP_MIN_LOG_LEVEL` held to that level (udfs/model/tf_startup.py)."""
    loaded = sys.modules.get("tensorflow")
    if loaded is not None:
        return loaded
    t = time.time()
    with tf_startup.held_to_log_level():
        import tensorflow as tf  # noqa: PLC0415 - seconds of import: only in workers that score

    _seconds["tf_import"] += time.time() - t
    return tf


def mark_daemon(**facts: float) -> None:
    """In the Python daemon (udfs/daemon.py): facts about its preload, inherited by the workers it forks."""
    _daemon.update(facts)


def daemon_facts() -> dict[str, float]:
    """What the daemon that forked this worker recorded (empty when it preloaded nothing)."""
    return dict(_daemon)


def runtime_started() -> bool:
    """Whether TensorFlow's runtime (its devices and thread pools) has started in this process.

    False when TensorFlow is not imported, or imported (e.g. preloaded by the daemon) and not
    yet run; True when unsure.
    """
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.eager import context  # noqa: PLC0415 - TF's own state: only when TF is imported

        return bool(context.context()._initialized)  # no public "has the runtime started" in TF
    except Exception:  # noqa: BLE001 - TF's internals moved: assume started (the caller then takes the safe path)
        return True


def load_count() -> int:
    """How many models this process has loaded (not cache hits)."""
    return _loads


def configure_threads(cores: int) -> None:
    """Size TF's thread pools to the task's cores, before TF's runtime starts.

    Concurrent tasks on one executor each get their own worker process; without
    this each would start one thread per machine core and oversubscribe the CPU.
    """
    global _threads_set
    if _threads_set is not None or cores < 1:
        return
    tf: Any = import_tensorflow()

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cores)
        tf.config.threading.set_inter_op_parallelism_threads(cores)
        _threads_set = cores
    except RuntimeError:  # runtime already initialised in this process
        _threads_set = -1
        log.warning("TensorFlow was already initialised in this Python worker (by other code run in it), "
                    "so its thread pools keep their sizes (intra-op %d) instead of the task's %d core(s)",
                    tf.config.threading.get_intra_op_parallelism_threads(), cores)


def get_predict_fn(key: str, load: Callable[[], tuple[object, PredictFn]], *, device: str | None = None) -> PredictFn:
    """The cached predict function for `key` on `device`, loading it on first use.

    A worker keeps one copy of a model: asked for it on another device (a reused worker
    handed another GPU, udfs/model/devices.py), it drops its copy on the old device before
    loading the new one, so the old GPU is not left holding a model no task uses.

    Args:
        device: the TF device `load` places the model on (None: TF's own placement).
    """
    global _loads
    with _lock:
        hit = _cache.get((key, device))
        if hit is None:
            _drop_other_devices(key, device)
            t, tf_before = time.time(), _seconds["tf_import"]
            hit = load()
            # the load's own TF import (outside Spark no task sized the pools first) is not a load
            _seconds["model_load"] += time.time() - t - (_seconds["tf_import"] - tf_before)
            _cache[(key, device)] = hit
            _loads += 1
            freeze_long_lived_objects()
        return hit[1]


def _drop_other_devices(key: str, device: str | None) -> None:
    """Forget the copies of `key` on other devices, and free them (caller holds the lock)."""
    stale = [k for k in _cache if k[0] == key and k[1] != device]
    if not stale:
        return
    for k in stale:
        del _cache[k]
    # the loads froze the old copy out of the collector's reach; its reference cycles
    # (a SavedModel's object graph) are freed only by a collection that sees them
    gc.unfreeze()
    gc.collect()
    log.info("model moved to %s in this worker (pid %d): its copy on %s dropped",
             device, os.getpid(), ", ".join(str(k[1]) for k in stale))


def cached_devices(key: str) -> list[str | None]:
    """The devices this worker holds a copy of model `key` on (one at most)."""
    with _lock:
        return [k[1] for k in _cache if k[0] == key]


def load_saved_model(path: str, signature: str) -> tuple[object, PredictFn]:
    """Load a SavedModel; the predict function calls the signature's concrete function.

    A concrete function has a fixed input signature (`[None, ...]`), so calls with
    any batch size, including a short last one, never retrace.
    """
    tf: Any = import_tensorflow()

    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # noqa: BLE001 - any failure to load is the model's: one ModelError naming the path
        raise ModelError(f"cannot load SavedModel '{path}': {str(e).splitlines()[0]}") from None
    try:
        fn = loaded.signatures[signature]
    except KeyError:
        raise ModelError(f"model.signature '{signature}' not found in '{path}'") from None

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    return loaded, predict


def load_keras_file(path: str) -> Any:
    """Load a `.keras` file in safe mode (no arbitrary code from the file)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras  # noqa: PLC0415 - seconds of import: only where a model is built or loaded

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - any failure to load is the model's: one ModelError naming the path
        raise ModelError(f"cannot load Keras model '{path}': {str(e).splitlines()[0]}") from None


def load_keras_model(path: str) -> tuple[object, PredictFn]:
    """A `.keras` file called through one tf.function with a fixed input signature."""
    tf: Any = import_tensorflow()

    model = load_keras_file(path)
    names = [t.name.split(":")[0] for t in model.inputs]
    specs = [tf.TensorSpec([None, *t.shape[1:]], t.dtype, name=n) for n, t in zip(names, model.inputs, strict=True)]

    @tf.function(input_signature=specs)
    def serve(*xs):
        out = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return {f"output_{i}": o for i, o in enumerate(outs)}

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = serve(*[tf.constant(inputs[n]) for n in names])
        return {k: v.numpy() for k, v in out.items()}

    return model, predict


def model_loader(source: ModelSource, signature: str) -> Callable[[], tuple[object, PredictFn]]:
    """What loads the model in a worker (from wherever `source` puts its files), for the model cache."""
    def load() -> tuple[object, PredictFn]:
        path = source.local_path()
        if path.endswith(".keras"):
            return load_keras_model(path)
        return load_saved_model(path, signature)

    return load
