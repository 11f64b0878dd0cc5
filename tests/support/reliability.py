"""Models, tables and file helpers for the reliability and property tests.

The reliability model has three inputs of different kinds, so every quarantine
reason can be provoked on purpose:

- `x` float32 [batch, 3], stacked from the scalar columns a (double), b (float), c (double);
- `img` float32 [batch, 4, 4, 1], from the array column `pix` (flat 16 values, or nested 4x4x1);
- `code` string [batch], parsed with `tf.strings.to_number`: a non-numeric string makes
  the model raise (model_error);

and its prediction is NaN when `a > 1000` (bad_prediction).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batchscore.core.compat import to_arrow
from tests.support import job_spec, max_abs_diff, tf_predict

TOL = 1e-5  # scored like bare TF: largest difference allowed
IMG_SHAPE = (4, 4, 1)
IMG_SIZE = 16
NAN_TRIGGER = 1000.0  # a > this -> the model predicts NaN
FEATURE_COLUMNS = ("code", "pix", "a", "b", "c")
REL_COLUMNS = ["input.columns.x=[a, b, c]", "input.columns.img=pix", "input.columns.code=code"]
NO_IMG = ["model.signature=no_img", "input.columns.x=[a, b, c]", "input.columns.code=code"]


def build_rel_model(path: str) -> str:
    """The reliability model (see the module docstring), saved with a custom signature."""
    import tensorflow as tf

    class Rel(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.array([0.5, -1.25, 2.0], dtype=np.float32))
            self.w_img = tf.Variable(np.linspace(-1, 1, IMG_SIZE, dtype=np.float32).reshape(IMG_SHAPE))

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 3], tf.float32, name="x"),
                tf.TensorSpec([None, *IMG_SHAPE], tf.float32, name="img"),
                tf.TensorSpec([None], tf.string, name="code"),
            ]
        )
        def serve(self, x, img, code):
            num = tf.strings.to_number(code, tf.float32)  # [batch]; raises on "abc"
            s = tf.reduce_sum(x * self.w, axis=1) + tf.reduce_sum(img * self.w_img, axis=[1, 2, 3]) + num
            s = tf.where(x[:, 0] > NAN_TRIGGER, tf.fill(tf.shape(s), float("nan")), s)  # [batch]
            return {"score": s[:, None], "parts": tf.stack([tf.reduce_sum(x, axis=1), num], axis=1)}

        @tf.function(
            input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"), tf.TensorSpec([None], tf.string, name="code")]
        )
        def no_img(self, x, code):
            # scalar inputs only: no array column, so no early sample read of the input
            return {"score": tf.reduce_sum(x * self.w, axis=1) + tf.strings.to_number(code, tf.float32)}

    m = Rel()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve, "no_img": m.no_img})
    return path


def build_unfeedable_model(path: str) -> str:
    """Signatures the engine cannot feed: an unknown inner dimension, a complex dtype."""
    import tensorflow as tf

    class Odd(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="ragged_in")])
        def ragged(self, ragged_in):
            return {"out": tf.reduce_sum(ragged_in, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.complex64, name="complex_in")])
        def complex_(self, complex_in):
            return {"out": tf.math.real(tf.reduce_sum(complex_in, axis=1))}

    m = Odd()
    tf.saved_model.save(m, path, signatures={"serving_default": m.ragged, "ragged": m.ragged,
                                             "complex": m.complex_})
    return path


# --- tables ---


def _pix_type(nested: bool) -> pa.DataType:
    return pa.list_(pa.list_(pa.list_(pa.float32()))) if nested else pa.list_(pa.float32())


def nest(flat: list[float] | None) -> list | None:
    """16 flat values -> [4][4][1] nested lists."""
    if flat is None:
        return None
    return [[[flat[r * 4 + c]] for c in range(4)] for r in range(4)]


def rel_table(n: int, *, seed: int = 0, start_id: int = 0, nested: bool = False,
              dates: list[str] | None = None) -> pa.Table:
    """`n` good rows for the reliability model (ids start_id..start_id+n-1)."""
    rng = np.random.default_rng(seed)
    pix = rng.normal(size=(n, IMG_SIZE)).astype(np.float32)
    pix_rows = [nest(list(map(float, p))) if nested else list(map(float, p)) for p in pix]
    cols: dict[str, Any] = {
        "id": pa.array(np.arange(start_id, start_id + n, dtype=np.int64)),
        "a": pa.array(rng.normal(size=n) * 3),
        "b": pa.array(rng.normal(size=n).astype(np.float32)),
        "c": pa.array(rng.normal(size=n)),
        "pix": pa.array(pix_rows, type=_pix_type(nested)),
        "code": pa.array([f"{v:.2f}" for v in rng.normal(size=n)], type=pa.string()),
    }
    if dates:
        cols["as_of_date"] = pa.array(np.asarray(dates, dtype=object)[np.arange(n) % len(dates)], pa.string())
    return pa.table(cols)


def set_cells(table: pa.Table, column: str, values: dict[int, Any]) -> pa.Table:
    """Replace column cells by row index (None for null)."""
    cells = table.column(column).to_pylist()
    for i, v in values.items():
        cells[i] = v
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, column, pa.array(cells, type=table.schema.field(column).type))


def rel_inputs(table: pa.Table) -> dict[str, np.ndarray]:
    """The model inputs for rel_table rows, built by hand (not by the engine)."""
    n = table.num_rows
    pix = np.asarray(
        [np.asarray(p, dtype=np.float32).reshape(-1) for p in table.column("pix").to_pylist()], dtype=np.float32
    ).reshape(n, *IMG_SHAPE)
    return {
        "x": np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in "abc"], axis=1),
        "img": pix,
        "code": np.asarray(table.column("code").to_pylist(), dtype=object),
    }


# --- files ---


def write_files(table: pa.Table, path: str, files: int = 2, row_group_size: int | None = None) -> str:
    os.makedirs(path, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        pq.write_table(table.slice(lo, hi - lo), os.path.join(path, f"part-{i:05d}.parquet"),
                       row_group_size=row_group_size)
    return path


def tree_hashes(root: str) -> dict[str, str]:
    """sha256 of every file below root (hidden and underscore files included), by relative path."""
    out = {}
    for d, _, names in os.walk(root):
        for name in names:
            p = os.path.join(d, name)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def hidden_siblings(path: str) -> list[str]:
    """Names beside `path` that start with a dot (staging and swap directories)."""
    parent = os.path.dirname(path.rstrip("/"))
    return sorted(n for n in os.listdir(parent) if n.startswith("."))


# --- running and reading back the reliability jobs ---


def config(input_path: str, model_path: str, output_path: str, *overrides: str, columns=REL_COLUMNS) -> dict:
    return job_spec(input_path, model_path, output_path, *columns, "output.keep_columns=[id]", *overrides)


def read_spark(spark, path: str) -> pa.Table:
    """A directory read back by Spark (partition columns included), sorted by id."""
    return to_arrow(spark.read.parquet(path)).sort_by("id")


def read_manifest(output_path: str) -> dict:
    with open(os.path.join(output_path, "_manifest.json")) as fh:
        return json.load(fh)


def assert_scored_like_tf(model: str, out: pa.Table, table: pa.Table) -> None:
    """`out` (sorted by id) holds exactly the rows of `table` (sorted by id), scored like bare TF."""
    np.testing.assert_array_equal(out.column("id").to_numpy(), table.column("id").to_numpy())
    if table.num_rows == 0:
        return
    expected = tf_predict(model, rel_inputs(table))
    assert max_abs_diff(out.column("score").to_numpy(), expected["score"].reshape(-1)) <= TOL
    assert max_abs_diff(out.column("parts").to_pylist(), expected["parts"]) <= TOL


def quarantine_rows(q: pa.Table) -> dict[int, tuple[str, str]]:
    return {i: (r, c) for i, r, c in zip(q.column("id").to_pylist(), q.column("reason").to_pylist(),
                                           q.column("column").to_pylist(), strict=True)}


def corrupt_files(path: str, small: pa.Table) -> tuple[str, str]:
    """Add a truncated Parquet file and a file that is not Parquet at all to `path`."""
    buf = pa.BufferOutputStream()
    pq.write_table(small, buf)
    data = buf.getvalue().to_pybytes()
    truncated = os.path.join(path, "part-00008-truncated.parquet")
    garbage = os.path.join(path, "part-00009-csv.parquet")
    with open(truncated, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with open(garbage, "wb") as fh:
        fh.write(b"id,a,b,c\n1,2.0,3.0,4.0\n" * 20)
    return truncated, garbage
