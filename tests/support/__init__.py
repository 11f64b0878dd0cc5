"""Models, data and bare-TensorFlow references shared by the tests."""
from __future__ import annotations

import itertools
import os
import shutil
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

# The multi-input/multi-output model: image [8, 8, 3] from a flat array column,
# numeric [D] stacked from D scalar columns, a string and an int64 input.
IMAGE_SHAPE = (8, 8, 3)
IMAGE_SIZE = 8 * 8 * 3
D = 4
CATEGORIES = ("red", "green", "blue")
MULTI_COLUMNS: dict[str, str | list[str]] = {"image": "pixels", "numeric": ["f0", "f1", "f2", "f3"], "category": "cat", "count": "n"}
MULTI_OUTPUTS = ("doubled", "embedding", "grid", "label", "score")


def build_multi_model(path: str, seed: int = 3) -> str:
    """A `tf.saved_model.save` model with a custom `@tf.function` serving signature."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)

    class Multi(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w_img = tf.Variable(rng.normal(0, 0.1, (IMAGE_SIZE, D)).astype(np.float32))
            self.w_num = tf.Variable(rng.normal(0, 1.0, (D, D)).astype(np.float32))
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(CATEGORIES), tf.constant([1.0, 2.0, 3.0], tf.float32)
                ),
                default_value=-1.0,
            )

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name="image"),
                tf.TensorSpec([None, D], tf.float32, name="numeric"),
                tf.TensorSpec([None], tf.string, name="category"),
                tf.TensorSpec([None], tf.int64, name="count"),
            ]
        )
        def serve(self, image, numeric, category, count):
            # Flattening and per-channel means both depend on the [8, 8, 3] layout,
            # so a wrong reshape of the flat column changes the outputs.
            flat = tf.reshape(image, [-1, IMAGE_SIZE])  # [batch, 192]
            emb = tf.matmul(flat, self.w_img) + tf.matmul(numeric, self.w_num)  # [batch, D]
            weight = self.table.lookup(category)  # [batch]
            score = tf.reduce_sum(emb, axis=1) * weight + tf.cast(count, tf.float32)  # [batch]
            channels = tf.reduce_mean(image, axis=[1, 2])  # [batch, 3]
            grid = tf.stack([channels, channels * 2.0 + numeric[:, :3]], axis=1)  # [batch, 2, 3]
            label = tf.strings.join([category, tf.strings.as_string(count)], separator="#")  # [batch]
            return {"score": score, "embedding": emb, "grid": grid, "label": label, "doubled": count * 2}

    m = Multi()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve})
    return path


def multi_table(n: int, seed: int = 11, start_id: int = 0) -> pa.Table:
    """Rows for the multi model; the numeric features come in mixed column types."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, IMAGE_SIZE), dtype=np.float32)
    return pa.table(
        {
            "id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64)),
            "pixels": pa.array(list(pixels), type=pa.list_(pa.float32())),
            "f0": pa.array(rng.normal(size=n).astype(np.float32)),
            "f1": pa.array(rng.normal(size=n)),  # double
            "f2": pa.array(rng.integers(-5, 5, n).astype(np.int32)),  # int feeding float32
            "f3": pa.array(rng.normal(size=n).astype(np.float32)),
            "cat": pa.array(np.asarray((*CATEGORIES, "unseen"), dtype=object)[rng.integers(0, 4, n)]),
            "n": pa.array(rng.integers(0, 1000, n).astype(np.int64)),
        }
    )


def multi_inputs(table: pa.Table) -> dict[str, np.ndarray]:
    """The model inputs for `multi_table` rows, built by hand (not by the engine)."""
    n = table.num_rows
    pixels = np.asarray(table.column("pixels").to_pylist(), dtype=np.float32)
    return {
        "image": pixels.reshape(n, *IMAGE_SHAPE),
        "numeric": np.stack(
            [table.column(c).to_numpy().astype(np.float32) for c in MULTI_COLUMNS["numeric"]], axis=1
        ),
        "category": np.asarray(table.column("cat").to_pylist(), dtype=object),
        "count": table.column("n").to_numpy().astype(np.int64),
    }


def demo_columns_override() -> str:
    """The `--set` that stacks the demo's numeric columns into the demo model's `numeric` input."""
    from batchscore.demo_data import NUMERIC

    return "input.columns.numeric=[" + ", ".join(NUMERIC) + "]"


def demo_inputs(table: pa.Table) -> dict[str, np.ndarray]:
    """The demo model's inputs for `batchscore.demo_data.make_table` rows, built by hand."""
    from batchscore.demo_data import CATEGORICAL, NUMERIC

    x = {"numeric": np.stack([table.column(c).to_numpy().astype(np.float32) for c in NUMERIC], axis=1)}
    for k in CATEGORICAL:
        x[k] = np.asarray(table.column(k).to_pylist(), dtype=object)
    return x


def tf_predict(model_dir: str, inputs: dict[str, np.ndarray], signature: str = "serving_default") -> dict[str, np.ndarray]:
    """Bare TensorFlow: load the SavedModel and call its signature once on all rows."""
    import tensorflow as tf

    fn = tf.saved_model.load(model_dir).signatures[signature]
    out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def job_spec(input_path: str, model_path: str, output_path: str, *overrides: str) -> Any:
    """A validated JobSpec, made the way a user's job is: the three paths, then `--set` overrides."""
    from batchscore.config.loader import load_config

    return load_config(None, [f"input.path={input_path}", f"model.path={model_path}",
                              f"output.path={output_path}", *overrides])


def write_parquet(table: pa.Table, path: str, *, files: int = 1) -> str:
    """Write `table` as `files` Parquet files (contiguous row ranges) under directory `path`."""
    os.makedirs(path, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(a, b - a), os.path.join(path, f"part-{i:05d}.parquet"))
    return path


def read_output(path: str, columns: list[str] | None = None) -> pa.Table:
    """A scored output (or quarantine) directory, hive partitions as columns, sorted by id."""
    t = ds.dataset(path, format="parquet", partitioning="hive").to_table(columns=columns)
    return t.sort_by("id")


def fresh_copy(model_dir: str, parent: str, name: str | None = None) -> str:
    """A copy of a SavedModel with a new fingerprint, so no worker has it cached yet."""
    name = name or f"model-{uuid.uuid4().hex[:8]}"
    dst = os.path.join(parent, name)
    shutil.copytree(model_dir, dst)
    os.makedirs(os.path.join(dst, "assets.extra"), exist_ok=True)
    with open(os.path.join(dst, "assets.extra", "nonce.txt"), "w") as fh:
        fh.write(uuid.uuid4().hex)
    return dst


def max_abs_diff(a: Any, b: Any) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def spark_properties(path: Any) -> dict[str, str]:
    """A Spark properties file as spark-submit reads it: `key value` lines, `#` comment lines."""
    import re

    props: dict[str, str] = {}
    with open(path) as fh:
        lines = fh.read().splitlines()
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        m = re.match(r"([^\s=:]+)\s*[=:\s]\s*(.*)$", line)
        assert m, f"{path}: cannot parse {line!r}"
        assert m.group(1) not in props, f"{path}: '{m.group(1)}' set twice"
        props[m.group(1)] = m.group(2).strip()
    return props
