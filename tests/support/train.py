"""Training tests' data and models: synthetic Parquet with a known signal, and a worker that crashes on cue."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FEATURES = [f"f{i}" for i in range(8)]
WEIGHTS = np.array([2.0, -1.5, 1.0, 0.8, -0.6, 0.0, 0.0, 0.3], dtype=np.float32)
# A crash fault, armed while this file exists: it holds the training steps worker 1 takes before it dies.
FAULT_FILE = os.path.join(tempfile.gettempdir(), f"batchscore-train-fault-{os.getuid()}")
CRASH_EXIT = 17


def synthetic_table(rows: int, *, seed: int = 0, start_id: int = 0, task: str = "binary") -> pa.Table:
    """id, f0..f7 (float32, f0 also scaled by 100: the model must standardise), a label with signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES))).astype(np.float32)
    logit = x @ WEIGHTS
    if task == "binary":
        label: np.ndarray = (rng.random(rows) < 1 / (1 + np.exp(-2 * logit))).astype(np.int32)
    elif task == "multiclass":
        label = np.digitize(logit + rng.normal(scale=0.3, size=rows), [-1.0, 1.0]).astype(np.int32)  # 3 classes
    else:
        label = (3.0 * logit + rng.normal(scale=0.5, size=rows) + 10.0).astype(np.float64)
    x[:, 0] *= 100.0
    cols: dict[str, Any] = {"id": np.arange(start_id, start_id + rows, dtype=np.int64)}
    cols.update({name: x[:, i] for i, name in enumerate(FEATURES)})
    cols["label"] = label
    return pa.table(cols)


def write_dataset(table: pa.Table, path: str, *, files: int = 3, row_group_rows: int = 250) -> str:
    """`table` as `files` Parquet files of `row_group_rows`-row groups under directory `path`."""
    os.makedirs(path, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), os.path.join(path, f"part-{i:05d}.parquet"),
                       row_group_size=row_group_rows)
    return path


def features_of(table: pa.Table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy().astype(np.float32) for c in FEATURES], axis=1)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from batchscore.evaluation.curves import roc_auc

    return roc_auc(labels, scores)


def read_manifest(model_dir: str) -> dict[str, Any]:
    with open(os.path.join(model_dir, "_train_manifest.json")) as fh:
        return json.load(fh)


def fragile_mlp(*, input_shape: tuple[int, ...], outputs: int, task: str) -> Any:
    """A small MLP (a `train.model` function); while FAULT_FILE exists, worker 1's copy kills its
    process (os._exit) after the number of training steps the file holds, as a crashed worker would."""
    import keras

    core = keras.Sequential([keras.layers.Dense(16, activation="relu"), keras.layers.Dense(outputs)])
    if not os.path.exists(FAULT_FILE) or json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index") != 1:
        return core
    with open(FAULT_FILE) as fh:
        steps = int(fh.read())
    return keras.Sequential([crash_after(steps), core])


def _crash_layer_type() -> type:
    import keras
    import tensorflow as tf

    class CrashAfter(keras.layers.Layer):
        """Identity; in training, kills the process on call `steps + 1`."""

        def __init__(self, steps: int) -> None:
            super().__init__()
            self.steps = steps
            self.calls = 0

        def _tick(self) -> Any:
            self.calls += 1
            if self.calls > self.steps:
                print(f"fault: worker 1 crashed on purpose after {self.steps} steps", flush=True)
                os._exit(CRASH_EXIT)
            return np.int32(self.calls)

        def call(self, x: Any, training: bool | None = None) -> Any:
            if not training:
                return x
            tick = tf.py_function(self._tick, [], tf.int32)
            with tf.control_dependencies([tick]):
                return tf.identity(x)

    return CrashAfter


def crash_after(steps: int) -> Any:
    """An identity layer that, in training, kills its process on call `steps + 1`."""
    return _crash_layer_type()(steps)
