"""The two workloads: their data (Parquet) and models (SavedModels), made once under bench/work/.

- `mlp`: `id` (int64) + 32 float32 columns `f0..f31`; a Keras MLP 32-256-256-1
  exported with one input `features` [None, 32].
- `cnn`: `id` + `image` (array<float>, 64*64*3 values, uint8-like levels /255);
  a small conv net with input `image` [None, 64, 64, 3].

Everything is deterministic (fixed seeds) and reused when present: a dataset is
complete when its `_bench_ready.json` marker (written last) matches the request.
Models are built in a child process so the harness's driver never runs TF itself.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MLP_FEATURES = tuple(f"f{i}" for i in range(32))
IMAGE_SHAPE = (64, 64, 3)
IMAGE_SIZE = 64 * 64 * 3
READY = "_bench_ready.json"
DATA_VERSION = 1


@dataclass(frozen=True)
class Workload:
    """One dataset + model pair and how every contender feeds it."""

    name: str  # "mlp" | "cnn"
    title: str
    data_path: str
    model_path: str
    rows: int
    input_name: str  # the signature input
    columns: tuple[str, ...]  # scalar columns stacked in order, or the one tensor column
    stacked: bool  # True: columns are scalars stacked into [batch, D]
    tensor_shape: tuple[int, ...]  # per-row shape the model takes
    batch_size: int  # rows per model call, the same for every contender
    # SQL confs set for every Spark contender while this workload runs
    spark_conf: dict[str, str] = field(default_factory=dict)


def mlp_workload(root: str, rows: int, *, rows_per_file: int, batch_size: int) -> Workload:
    return Workload(
        name="mlp", title=f"Tabular MLP 32-256-256-1, {rows:,} rows x 32 float32",
        data_path=ensure_mlp_data(root, rows, rows_per_file=rows_per_file),
        model_path=ensure_model(root, "mlp"), rows=rows, input_name="features",
        columns=MLP_FEATURES, stacked=True, tensor_shape=(32,), batch_size=batch_size,
    )


def cnn_workload(root: str, rows: int, *, rows_per_file: int, batch_size: int, arrow_batch: int) -> Workload:
    return Workload(
        name="cnn", title=f"Image CNN (3x Conv2D), {rows:,} rows x 64x64x3 float32",
        data_path=ensure_cnn_data(root, rows, rows_per_file=rows_per_file),
        model_path=ensure_model(root, "cnn"), rows=rows, input_name="image",
        columns=("image",), stacked=False, tensor_shape=IMAGE_SHAPE, batch_size=batch_size,
        # 48 KB a row: Spark's default 10,000-row Arrow batches would be ~480 MB each
        spark_conf={"spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_batch)},
    )


# ---------------------------------------------------------------- data


def _ready(path: str, spec: dict[str, Any]) -> bool:
    try:
        with open(os.path.join(path, READY)) as fh:
            return json.load(fh) == spec
    except (OSError, ValueError):
        return False


def _write_dataset(path: str, spec: dict[str, Any], rows: int, rows_per_file: int,
                   make_file: Any, row_group_rows: int) -> str:
    """Write `ceil(rows / rows_per_file)` files via `make_file(first_id, n, file_index)`."""
    if _ready(path, spec):
        return path
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(tmp)
    start, i = 0, 0
    while start < rows:
        n = min(rows_per_file, rows - start)
        table = make_file(start, n, i)
        pq.write_table(table, os.path.join(tmp, f"part-{i:05d}.parquet"), row_group_size=row_group_rows)
        start += n
        i += 1
    with open(os.path.join(tmp, READY), "w") as fh:
        json.dump(spec, fh)
    os.replace(tmp, path)
    return path


def ensure_mlp_data(root: str, rows: int, *, rows_per_file: int) -> str:
    """`rows` x (id, f0..f31) in files of `rows_per_file` rows; returns the directory."""
    path = os.path.join(root, "data", f"mlp-{rows}r-{rows_per_file}pf")
    spec = {"kind": "mlp", "rows": rows, "rows_per_file": rows_per_file, "version": DATA_VERSION}
    return _write_dataset(path, spec, rows, rows_per_file, mlp_file_table,
                          row_group_rows=mlp_row_group_rows(rows_per_file))


def mlp_file_table(first: int, n: int, i: int) -> pa.Table:
    """File `i` of an MLP dataset: ids `first..first+n-1`, features from seed 1000 + i.

    The same (first, n, i) always gives the same table, so file `i` of any two MLP
    datasets with the same rows per file is identical (bench.cold links them).
    """
    rng = np.random.default_rng(1000 + i)
    x = rng.standard_normal((n, 32), dtype=np.float32)  # x: [n, 32]
    cols = {"id": pa.array(np.arange(first, first + n, dtype=np.int64))}
    cols.update({name: pa.array(x[:, j]) for j, name in enumerate(MLP_FEATURES)})
    return pa.table(cols)


def mlp_row_group_rows(rows_per_file: int) -> int:
    return max(1, -(-rows_per_file // 4))


def ensure_cnn_data(root: str, rows: int, *, rows_per_file: int) -> str:
    """`rows` x (id, image: list<float> of 64*64*3) in files of `rows_per_file` rows."""
    path = os.path.join(root, "data", f"cnn-{rows}r-{rows_per_file}pf")
    spec = {"kind": "cnn", "rows": rows, "rows_per_file": rows_per_file, "version": DATA_VERSION}

    def make_file(first: int, n: int, i: int) -> pa.Table:
        rng = np.random.default_rng(2000 + i)
        # 8-bit levels, as decoded images: Parquet dictionary-encodes them (~1 byte a value)
        flat = (rng.integers(0, 256, n * IMAGE_SIZE, dtype=np.uint8).astype(np.float32) / 255.0)
        offsets = pa.array(np.arange(0, (n + 1) * IMAGE_SIZE, IMAGE_SIZE, dtype=np.int32))
        images = pa.ListArray.from_arrays(offsets, pa.array(flat, type=pa.float32()))
        return pa.table({"id": pa.array(np.arange(first, first + n, dtype=np.int64)), "image": images})

    return _write_dataset(path, spec, rows, rows_per_file, make_file,
                          row_group_rows=max(1, min(rows_per_file, 512)))


# ---------------------------------------------------------------- models


def ensure_model(root: str, kind: str) -> str:
    """The SavedModel for `kind` under `<root>/models/`, built in a child process if missing."""
    path = os.path.join(root, "models", kind)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    subprocess.run([sys.executable, "-m", "bench.workloads", "--make-model", kind, path],
                   check=True, env=env)
    return path


def _build_model(kind: str) -> Any:
    import keras

    keras.utils.set_random_seed(42)
    if kind == "mlp":
        inp = keras.Input(shape=(32,), name="features")
        h = keras.layers.Dense(256, activation="relu")(inp)
        h = keras.layers.Dense(256, activation="relu")(h)
        out = keras.layers.Dense(1, activation="sigmoid", name="score")(h)
    elif kind == "cnn":
        inp = keras.Input(shape=IMAGE_SHAPE, name="image")  # x: [batch, 64, 64, 3]
        h = keras.layers.Conv2D(32, 3, activation="relu")(inp)  # [batch, 62, 62, 32]
        h = keras.layers.MaxPooling2D()(h)  # [batch, 31, 31, 32]
        h = keras.layers.Conv2D(64, 3, activation="relu")(h)  # [batch, 29, 29, 64]
        h = keras.layers.MaxPooling2D()(h)  # [batch, 14, 14, 64]
        h = keras.layers.Conv2D(64, 3, activation="relu")(h)  # [batch, 12, 12, 64]
        h = keras.layers.GlobalAveragePooling2D()(h)  # [batch, 64]
        out = keras.layers.Dense(1, activation="sigmoid", name="score")(h)
    else:
        raise ValueError(f"unknown model kind '{kind}'")
    return keras.Model(inp, out, name=f"bench_{kind}")


def make_model(kind: str, path: str) -> None:
    """Build (random weights: throughput does not depend on training) and export."""
    model = _build_model(kind)
    tmp = path.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.export(tmp, verbose=False)  # signature serving_default: one input, output_0 [batch, 1]
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.workloads")
    p.add_argument("--make-model", nargs=2, metavar=("KIND", "PATH"), required=True)
    args = p.parse_args(argv)
    make_model(*args.make_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
