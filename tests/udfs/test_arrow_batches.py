"""The DataFrame lane bounds Spark's Arrow batches by rows, worked out once from a fixed row width."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core import compat
from batchscore.run.lane_choice import MAX_BYTES_KEY, MAX_RECORDS_KEY, arrow_batch_conf, temporary_conf
from batchscore.run.steps import run_scoring
from batchscore.udfs.batches.binding import InputFeed
from batchscore.udfs.lanes.scoring import ScoringPlan, fixed_row_bytes
from batchscore.udfs.model.distribution import ModelSource
from batchscore.udfs.model.signature import ModelSignature, TensorSpec
from tests import support

INT_MAX = str(2**31 - 1)


def _plan(feeds: tuple[InputFeed, ...], keep: tuple[str, ...]) -> ScoringPlan:
    # the row width reads the feeds and the kept columns only: a placeholder model
    return ScoringPlan(signature=ModelSignature("/m", "serving_default", (), (), "f" * 16), feeds=feeds,
                       source=ModelSource("direct", "/m", "f" * 16), batch_size=1, keep_columns=keep, output_names=())


def test_row_width_of_fixed_width_columns() -> None:
    schema = pa.schema([("id", pa.int64()), ("name", pa.string()), ("image", pa.list_(pa.list_(pa.float32()))),
                        *[(f"f{i}", pa.float32()) for i in range(4)], ("ragged", pa.list_(pa.float64()))])
    stacked = InputFeed(TensorSpec("x", "float32", (4,)), tuple(f"f{i}" for i in range(4)), stacked=True, depth=0)
    image = InputFeed(TensorSpec("img", "float32", (8, 3)), ("image",), stacked=False, depth=2)
    assert fixed_row_bytes(schema, _plan((stacked,), ("id",))) == 8 + 4 * 4
    assert fixed_row_bytes(schema, _plan((stacked, image), ("id",))) == 8 + 16 + 24 * 4 + 2 * 4
    # a string keep column, or a list whose shape the model leaves open: the width can vary
    assert fixed_row_bytes(schema, _plan((stacked,), ("id", "name"))) is None
    ragged = InputFeed(TensorSpec("r", "float64", (None,)), ("ragged",), stacked=False, depth=1)
    assert fixed_row_bytes(schema, _plan((ragged,), ("id",))) is None


def test_batch_conf_keeps_spark_byte_bound_as_a_row_count(spark) -> None:
    with temporary_conf(spark, {MAX_BYTES_KEY: "64m", MAX_RECORDS_KEY: "10000"}):
        # 136-byte rows: the row limit is the tighter one
        assert arrow_batch_conf(spark, 136) == {MAX_BYTES_KEY: INT_MAX, MAX_RECORDS_KEY: "10000"}
        # 48 KB images: 64 MB holds 1,365 of them
        assert arrow_batch_conf(spark, 64 * 64 * 3 * 4 + 12) == {MAX_BYTES_KEY: INT_MAX, MAX_RECORDS_KEY: "1365"}
        assert arrow_batch_conf(spark, None) == {}  # width varies: Spark keeps measuring
    with temporary_conf(spark, {MAX_BYTES_KEY: "1k", MAX_RECORDS_KEY: "0"}):  # no row limit
        assert arrow_batch_conf(spark, 100) == {MAX_BYTES_KEY: INT_MAX, MAX_RECORDS_KEY: "10"}
    with temporary_conf(spark, {MAX_BYTES_KEY: INT_MAX}):  # byte limit already off
        assert arrow_batch_conf(spark, 136) == {}
    with temporary_conf(spark, {MAX_BYTES_KEY: "1g", MAX_RECORDS_KEY: "10000"}):  # Spark's size units
        assert arrow_batch_conf(spark, 1 << 20) == {MAX_BYTES_KEY: INT_MAX, MAX_RECORDS_KEY: "1024"}


@pytest.fixture(scope="module")
def sum_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """x: [batch, 4] float32 -> the row sums: a model whose output is easy to check by hand."""
    import tensorflow as tf

    class Sum(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"total": tf.reduce_sum(x, axis=1)}

    path = str(tmp_path_factory.mktemp("sum_model") / "model")
    m = Sum()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve})
    return path


@pytest.mark.skipif(not compat.arrow_batches_have_a_byte_bound(),
                    reason="Spark 3.5 (lts) has no spark.sql.execution.arrow.maxBytesPerBatch: its Arrow batches are bounded by records only")
def test_dataframe_lane_batches_follow_the_byte_bound(spark, sum_model, tmp_path) -> None:
    """A small byte limit still cuts the batches Python gets; the session's settings come back."""
    rng = np.random.default_rng(5)
    n = 3000
    x = rng.normal(size=(n, 4)).astype(np.float32)
    table = pa.table({"id": pa.array(np.arange(n, dtype=np.int64)), **{f"f{i}": pa.array(x[:, i]) for i in range(4)}})
    inp = support.write_parquet(table, str(tmp_path / "in"), files=1)
    cfg = support.job_spec(inp, sum_model, str(tmp_path / "out"), "input.lane=dataframe",
                           "input.columns={x: [f0, f1, f2, f3]}", "output.keep_columns=[id]")
    keys = (MAX_BYTES_KEY, MAX_RECORDS_KEY)
    before = {k: spark.conf.get(k) for k in keys}
    with temporary_conf(spark, {MAX_BYTES_KEY: "2k", MAX_RECORDS_KEY: "10000"}):
        manifest = run_scoring(spark, cfg)
        assert {k: spark.conf.get(k) for k in keys} == {MAX_BYTES_KEY: "2k", MAX_RECORDS_KEY: "10000"}
    assert {k: spark.conf.get(k) for k in keys} == before
    assert manifest.lane == "dataframe" and manifest.rows_scored == n
    # id (8 bytes) + 4 float32 = 24 bytes a row: 2 KB is 85 rows
    assert manifest.max_rows_per_batch == 2048 // 24
    out = support.read_output(str(tmp_path / "out")).sort_by("id")
    assert out.column("id").to_pylist() == list(range(n))
    np.testing.assert_allclose(out.column("total").to_numpy(), x.sum(axis=1), rtol=1e-6, atol=1e-6)
