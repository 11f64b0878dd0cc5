"""Models for `model.placement: split`, and a checker that runs in a fresh process.

Logical CPU devices can be set up once per process, before TensorFlow's runtime starts, so
the tests run `python -m tests.support.placement SPEC` with `BATCHSCORE_FAKE_GPUS=N` (N
logical CPU devices standing in for GPUs) and read the JSON it prints last.
"""
from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

MLP_FEATURES = 8
STAGED_FEATURES = 6


def build_mlp(path: str, seed: int = 1) -> str:
    """A Sequential MLP saved as a `.keras` file: 8 features -> one probability."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(shape=(MLP_FEATURES,)),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.save(path)
    return path


def build_cnn(path: str, seed: int = 2) -> str:
    """A small functional CNN with a residual add (two tensors live across a cut): 8x8x1 -> 3 classes."""
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input(shape=(8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(image)  # [batch, 8, 8, 8]
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([x, y])
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)  # [batch, 6, 6, 16]
    x = keras.layers.MaxPooling2D()(x)  # [batch, 3, 3, 16]
    x = keras.layers.Flatten()(x)  # [batch, 144]
    x = keras.layers.Dense(32, activation="relu")(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    keras.Model(image, out).save(path)
    return path


def build_one_layer(path: str) -> str:
    """A `.keras` model with a single layer: nothing to split."""
    import keras

    inp = keras.Input(shape=(4,), name="x")
    keras.Model(inp, keras.layers.Dense(1)(inp)).save(path)
    return path


def build_staged_model(path: str, seed: int = 4) -> str:
    """A SavedModel that exposes three stages (udfs/model/placement.py's convention); serving_default chains them.

    x [batch, 6] -> stage_0 -> h1 [batch, 16] -> stage_1 -> h2 [batch, 8] -> stage_2 -> score [batch].
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    def dense_stage(key_in: str, key_out: str, n_in: int, n_out: int, last: bool) -> tf.Module:
        stage = tf.Module()
        stage.w = tf.Variable(rng.normal(0, 0.5, (n_in, n_out)).astype(np.float32))
        stage.b = tf.Variable(rng.normal(0, 0.1, (n_out,)).astype(np.float32))

        def forward(h: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            z = tf.matmul(h[key_in], stage.w) + stage.b
            return {key_out: tf.sigmoid(z[:, 0]) if last else tf.nn.relu(z)}

        stage.__call__ = tf.function(forward, input_signature=[{key_in: tf.TensorSpec([None, n_in], tf.float32)}])
        return stage

    root = tf.Module()
    root.stage_0 = dense_stage("x", "h1", STAGED_FEATURES, 16, False)
    root.stage_1 = dense_stage("h1", "h2", 16, 8, False)
    root.stage_2 = dense_stage("h2", "score", 8, 1, True)

    @tf.function(input_signature=[tf.TensorSpec([None, STAGED_FEATURES], tf.float32, name="x")])
    def serve(x):
        # an instance's `__call__` attribute is not what `stage(...)` calls: call it by name
        return root.stage_2.__call__(root.stage_1.__call__(root.stage_0.__call__({"x": x})))

    root.serve = serve
    tf.saved_model.save(root, path, signatures={"serving_default": serve})
    return path


# --- the checker (a fresh process) ---


def _device(name: str) -> str:
    """`/job:localhost/replica:0/task:0/device:CPU:1` -> `CPU:1` ("" when unplaced)."""
    return name.rsplit("device:", 1)[-1].upper() if "device:" in name else ""


def _chunks(feed: dict[str, np.ndarray], size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(feed.values())))
    return [{k: v[i:i + size] for k, v in feed.items()} for i in range(0, n, size)]


def _compare(split_predict: Any, replicate: Any, feed: dict[str, np.ndarray], batch_size: int) -> float:
    """Largest |split - replicate| over all outputs, called in model.batch_size chunks (a short last one)."""
    diff = 0.0
    for chunk in _chunks(feed, batch_size):
        a, b = split_predict(chunk), replicate(chunk)
        assert sorted(a) == sorted(b), (sorted(a), sorted(b))
        diff = max(diff, *(float(np.max(np.abs(a[k] - b[k]))) for k in a))
    return diff


def _ops_by_device(split: Any, types: set[str]) -> dict[str, int]:
    """How many ops of `types` the pipelined graph places on each device."""
    graph = split.serve.get_concrete_function().graph
    counts: dict[str, int] = {}
    for op in graph.get_operations():
        if op.type in types:
            counts[_device(op.device)] = counts.get(_device(op.device), 0) + 1
    return counts


def check_keras(path: str, devices: list[str], batch_size: int, rows: int) -> dict[str, Any]:
    from batchscore.udfs.model import cache as model_cache
    from batchscore.udfs.model import placement

    model = model_cache.load_keras_file(path)
    rng = np.random.default_rng(0)
    feed = {t.name.split(":")[0]: rng.normal(size=(rows, *t.shape[1:])).astype(np.float32) for t in model.inputs}
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    split, predict = placement.load_split_keras(path, devices, batch_size=batch_size)
    _, replicate = model_cache.load_keras_model(path)
    return {
        "diff": _compare(predict, replicate, feed, batch_size),
        "micro_batches": split.micro_batches,
        "stages": [{"device": _device(s.device), "layers": s.names, "params": s.params,
                    "kernels": sum(kinds[n] in ("Dense", "Conv2D") for n in s.names),
                    "variable_devices": sorted({_device(v.value.device) for v in s.variables}),
                    "variables": len(s.variables)} for s in split.stages],
        "kernel_ops": _ops_by_device(split, {"MatMul", "Conv2D"}),
        "params": model.count_params(),
    }


def check_staged(path: str, devices: list[str], batch_size: int, rows: int) -> dict[str, Any]:
    from batchscore.udfs.model import cache as model_cache
    from batchscore.udfs.model import placement
    from batchscore.udfs.model.signature import read_signature

    sig = read_signature(path)
    rng = np.random.default_rng(0)
    feed = {"x": rng.normal(size=(rows, STAGED_FEATURES)).astype(np.float32)}
    split, predict = placement.load_split_saved_model(path, sig.inputs, devices, batch_size=batch_size)
    _, replicate = model_cache.load_saved_model(path, "serving_default")
    return {
        "diff": _compare(predict, replicate, feed, batch_size),
        "micro_batches": split.micro_batches,
        "stages": [{"device": _device(s.device), "layers": s.names,
                    "variable_devices": sorted({_device(v.device) for v in s.variables}),
                    "variables": len(s.variables)} for s in split.stages],
        "stage_calls": _ops_by_device(split, {"StatefulPartitionedCall", "PartitionedCall"}),
    }


def main(spec_json: str) -> None:
    """Split each model over the worker's `$BATCHSCORE_FAKE_GPUS` stand-in devices, print one JSON line."""
    from batchscore.udfs.model import placement

    spec = json.loads(spec_json)
    devices = placement.task_devices()  # a task assigned no GPU: every GPU (here stand-in) the worker has
    out: dict[str, Any] = {"devices": [_device(d) for d in devices]}
    for name, path in spec.get("keras", {}).items():
        out[name] = check_keras(path, devices, spec["batch_size"], spec["rows"])
    for name, path in spec.get("staged", {}).items():
        out[name] = check_staged(path, devices, spec["batch_size"], spec["rows"])
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
