"""The Python API: `batchscore.score_dataframe` and `batchscore.predict_udf`, against
Spark's `predict_batch_udf` and bare TensorFlow on the same model and rows."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import batchscore
from batchscore.core import compat
from batchscore.core.errors import ConfigError, SchemaError
from tests import support

TOL = 1e-6
NUMERIC = support.MULTI_COLUMNS["numeric"]


def _tf_image_model(path: str) -> str:
    """One input `image` [8, 8, 3] -> one output `score` [batch]; depends on the layout."""
    import tensorflow as tf

    w = tf.constant(np.random.default_rng(1).normal(size=support.IMAGE_SHAPE).astype(np.float32))

    class Image(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, *support.IMAGE_SHAPE], tf.float32, name="image")])
        def serve(self, image):
            # image: [batch, 8, 8, 3] -> score: [batch]
            return {"score": tf.reduce_sum(image * w, axis=[1, 2, 3]) + tf.reduce_max(image[:, 0, :, 2], axis=1)}

    m = Image()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve})
    return path


@pytest.fixture(scope="module")
def image_model(saved_model) -> str:
    return saved_model("api_image_model", _tf_image_model)


@pytest.fixture(scope="module")
def multi_df(spark, multi_table: pa.Table, tmp_path_factory: pytest.TempPathFactory):
    path = support.write_parquet(multi_table, str(tmp_path_factory.mktemp("api_in") / "multi"), files=3)
    return spark.read.parquet(path)


def _by_id(rows: list[Any]) -> list[Any]:
    return sorted(rows, key=lambda r: r["id"])


def _spark_predict_batch_udf(model: str, return_type: Any, shapes: list[Any], outputs: list[str] | None) -> Any:
    """Spark's own `predict_batch_udf` with a hand-written TF predict function."""
    from pyspark.ml.functions import predict_batch_udf

    def make_predict_fn():
        import tensorflow as tf

        fn = tf.saved_model.load(model).signatures["serving_default"]
        names = sorted(fn.structured_input_signature[1])

        def call(*xs: np.ndarray) -> Any:
            out = fn(**{n: tf.constant(x) for n, x in zip(names, xs, strict=True)})
            if outputs is None:
                return next(iter(out.values())).numpy()
            return {k: out[k].numpy() for k in outputs}

        if len(names) == 1:  # predict_batch_udf counts the predict function's parameters
            return lambda x: call(x)
        return lambda a, b, c, d: call(a, b, c, d)

    return predict_batch_udf(make_predict_fn, return_type=return_type, batch_size=64, input_tensor_shapes=shapes)


def test_predict_udf_equals_predict_batch_udf_for_a_flat_array_reshaped_to_hwc(spark, multi_df, image_model) -> None:
    from pyspark.sql.types import FloatType

    ours = batchscore.predict_udf(image_model, batch_size=64)
    assert ours.return_type == FloatType()  # one output: a plain column
    theirs = _spark_predict_batch_udf(image_model, FloatType(), [list(support.IMAGE_SHAPE)], None)
    rows = _by_id(multi_df.select("id", ours("pixels").alias("ours"), theirs("pixels").alias("theirs")).collect())
    assert len(rows) == 500
    ours_v = np.array([r["ours"] for r in rows])
    assert support.max_abs_diff(ours_v, [r["theirs"] for r in rows]) <= TOL
    table = support.multi_table(500)
    bare = support.tf_predict(image_model, {"image": support.multi_inputs(table)["image"]})["score"]
    assert support.max_abs_diff(ours_v, bare) <= TOL
    assert not hasattr(ours, "stats")  # a column has no row to report counters in: score_dataframe's stats do


def test_predict_udf_several_inputs_and_outputs_give_a_struct(spark, multi_df, multi_model, multi_table) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType

    ours = batchscore.predict_udf(multi_model, batch_size=50)
    assert ours.input_names == ["category", "count", "image", "numeric"]
    assert [f.name for f in ours.return_type.fields] == list(support.MULTI_OUTPUTS)
    # positional (signature order, a string input first) and named (a list of scalars stacked)
    pos = ours("cat", "n", "pixels", F.array(*[F.col(c).cast("float") for c in NUMERIC]))
    named = ours(image="pixels", numeric=NUMERIC, category="cat", count="n")
    ret = StructType([StructField("score", FloatType()), StructField("embedding", ArrayType(FloatType())),
                      StructField("doubled", LongType())])
    theirs = _spark_predict_batch_udf(multi_model, ret, [None, None, list(support.IMAGE_SHAPE), [support.D]],
                                      ["score", "embedding", "doubled"])
    stacked = F.array(*[F.col(c).cast("float") for c in NUMERIC])
    rows = _by_id(multi_df.select("id", pos.alias("pos"), named.alias("named"),
                                  theirs("cat", "n", "pixels", stacked).alias("theirs")).collect())
    bare = support.tf_predict(multi_model, support.multi_inputs(multi_table))
    for key in ("pos", "named"):
        got = [r[key] for r in rows]
        for out in ("score", "embedding", "doubled"):
            assert support.max_abs_diff([g[out] for g in got], [r["theirs"][out] for r in rows]) <= TOL
        for out in ("score", "embedding", "doubled", "grid"):
            assert support.max_abs_diff([g[out] for g in got], bare[out]) <= TOL
        assert [g["label"] for g in got] == [b.decode() for b in bare["label"]]


def test_predict_udf_gives_null_for_bad_rows_or_fails(spark, image_model) -> None:
    from pyspark.errors import PythonException

    rows = [(0, [0.5] * support.IMAGE_SIZE), (1, None), (2, [0.5] * 10), (3, [float("nan")] * support.IMAGE_SIZE),
            (4, [0.25] * support.IMAGE_SIZE)]
    df = spark.createDataFrame(rows, "id long, pixels array<float>")
    got = dict(df.select("id", batchscore.predict_udf(image_model)("pixels").alias("p")).collect())
    assert [got[i] is None for i in range(5)] == [False, True, True, True, False]
    bare = support.tf_predict(image_model, {"image": np.array([[0.5] * support.IMAGE_SIZE, [0.25] * support.IMAGE_SIZE],
                                                              dtype=np.float32).reshape(2, *support.IMAGE_SHAPE)})
    assert support.max_abs_diff([got[0], got[4]], bare["score"]) <= TOL
    strict = batchscore.predict_udf(image_model, bad_rows="fail")
    bad = r"a row is bad: (null_feature|bad_shape|non_finite).* \(predict_udf bad_rows='fail'\)"
    with pytest.raises(PythonException, match=bad):
        df.select(strict("pixels")).collect()


@pytest.mark.skipif(not compat.udf_gives_null_structs(),
                    reason="Spark 3.5 (lts): a pandas UDF cannot return a null struct, only a struct of nulls")
def test_predict_udf_struct_is_null_for_a_bad_row(spark, multi_model) -> None:
    df = spark.createDataFrame([(0, "red", 3, [0.1] * support.IMAGE_SIZE, [1.0] * 4),
                                (1, None, 3, [0.1] * support.IMAGE_SIZE, [1.0] * 4)],
                               "id long, cat string, n long, pixels array<float>, num array<float>")
    got = dict(df.select("id", batchscore.predict_udf(multi_model)("cat", "n", "pixels", "num").alias("p")).collect())
    assert got[1] is None
    assert got[0]["label"] == "red#3" and got[0]["doubled"] == 6


def test_the_api_loads_the_model_once_per_worker(spark, multi_df, image_model, tmp_path) -> None:
    model = support.fresh_copy(image_model, str(tmp_path))  # no worker has it cached yet
    df = multi_df.repartition(12)

    def scored_stats() -> dict:
        stats = batchscore.TaskStats()
        scored = batchscore.score_dataframe(df, model, columns={"image": "pixels"}, batch_size=32, keep=["id"],
                                            stats=stats)
        assert len(scored.collect()) == 500
        return stats.value

    stats = scored_stats()
    loads = stats["loads"]  # worker process -> loads in these tasks
    assert stats["rows"] == 500 and stats["rows_bad"] == 0 and stats["max_call_rows"] == 32
    # twelve tasks on local[2]: Spark's reused workers (idle ones kept from earlier jobs may join)
    # each load the model once
    assert sorted(loads.values()) == [1] * len(loads) and 1 <= len(loads) < 12
    # a second action reuses the workers' cached model
    again = scored_stats()
    assert again["rows"] == 500 and sum(again["loads"].values()) == 0


def test_predict_udf_refuses_on_the_driver(spark, multi_model) -> None:
    score = batchscore.predict_udf(multi_model)
    with pytest.raises(SchemaError, match="no column for model input 'numeric'"):
        score("cat", "n", "pixels")
    with pytest.raises(SchemaError, match="'colour' is not an input of the model"):
        score(colour="cat")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        batchscore.predict_udf(multi_model, batch_size=0)
    with pytest.raises(ConfigError, match="bad_rows must be one of null, fail"):
        batchscore.predict_udf(multi_model, bad_rows="drop")


def test_predict_udf_wrong_column_type_names_the_column(spark, image_model) -> None:
    from pyspark.errors import PythonException

    df = spark.createDataFrame([(0, "x")], "id long, pixels string")
    with pytest.raises(PythonException, match="column 'pixels' is string"):
        df.select(batchscore.predict_udf(image_model)("pixels")).collect()


def test_score_dataframe_equals_bare_tf_and_keeps_bad_rows_with_reasons(
        spark, multi_model, multi_table, tmp_path) -> None:
    table = multi_table.set_column(multi_table.schema.get_field_index("f1"), "f1",
                                   pa.array([None if i in (3, 77) else v for i, v in
                                             enumerate(multi_table.column("f1").to_pylist())], pa.float64()))
    df = spark.read.parquet(support.write_parquet(table, str(tmp_path / "in"), files=2))
    stats = batchscore.TaskStats()
    scored = batchscore.score_dataframe(df, multi_model, columns=support.MULTI_COLUMNS, batch_size=40,
                                        keep=["id"], stats=stats)
    assert scored.columns == ["id", *support.MULTI_OUTPUTS, "bs__reason", "bs__column"]
    rows = _by_id(scored.collect())
    assert [r["id"] for r in rows] == list(range(500))
    bad = [r["id"] for r in rows if r["bs__reason"] != "ok"]
    assert bad == [3, 77] and {r["bs__reason"] for r in rows if r["id"] in bad} == {"null_feature"}
    assert all(r["bs__column"] == "f1" and r["score"] is None for r in rows if r["id"] in bad)
    good = [r for r in rows if r["id"] not in bad]
    keep = np.array([r["id"] for r in good])
    bare = support.tf_predict(multi_model, support.multi_inputs(table.take(keep)))
    for out in ("score", "embedding", "grid", "doubled"):
        assert support.max_abs_diff([r[out] for r in good], bare[out]) <= TOL
    assert stats.value["max_call_rows"] == 40 and stats.value["rows"] == 500

    dropped = batchscore.score_dataframe(df, multi_model, columns=support.MULTI_COLUMNS, bad_rows="drop")
    assert dropped.columns == [*df.columns, *support.MULTI_OUTPUTS]  # keep: every input column by default
    assert sorted(r["id"] for r in dropped.select("id").collect()) == keep.tolist()


def test_score_dataframe_refuses_on_the_driver(spark, multi_df, multi_model) -> None:
    with pytest.raises(SchemaError, match=r"column 'category' .* not found"):
        batchscore.score_dataframe(multi_df, multi_model)
    with pytest.raises(ConfigError, match="bad_rows must be one of keep, drop, fail"):
        batchscore.score_dataframe(multi_df, multi_model, bad_rows="null")


def _jobs_run(spark) -> list[int]:
    return sorted(spark.sparkContext.statusTracker().getJobIdsForGroup(None))


@pytest.mark.parametrize(("call", "message"), [
    # checked before the model is read: its path does not exist
    (lambda df: batchscore.score_dataframe(df, "/no/model", pad_multiple=0),
     r"^pad_multiple must be a positive integer, got 0$"),
    (lambda df: batchscore.score_dataframe(df, "/no/model", batch_size=True),
     r"^batch_size must be a positive integer, got True$"),
    (lambda df: batchscore.score_dataframe(df, "/no/model", batch_size="16"),
     r"^batch_size must be a positive integer, got '16'$"),
    (lambda df: batchscore.score_dataframe(df, "/no/model", distribution="ftp"),
     r"^distribution must be one of broadcast, files, direct, got 'ftp'$"),
    (lambda df: batchscore.score_dataframe(df, "/no/model", keep="id"),
     r"^keep must be a list of column names, got 'id'$"),
    (lambda df: batchscore.score_dataframe(df, "/no/model", rename={"score": 1}),
     r"^rename must be a mapping \(model output -> column name\), got \{'score': 1\}$"),
    (lambda df: batchscore.score_dataframe(df, ""), r"^model must be a SavedModel directory or a .keras file path"),
    (lambda df: batchscore.predict_udf("/no/model", pad_multiple=-1),
     r"^pad_multiple must be a positive integer, got -1$"),
    (lambda df: batchscore.predict_udf("/no/model", bad_rows="keep"),
     r"^bad_rows must be one of null, fail, got 'keep'$"),
    (lambda df: batchscore.predict_udf("/no/model", signature=""), r"^signature must not be empty, got ''$"),
])
def test_api_arguments_are_checked_on_the_driver_before_any_spark_job(spark, multi_df, call, message) -> None:
    before = _jobs_run(spark)
    with pytest.raises(ConfigError, match=message):
        call(multi_df)
    assert _jobs_run(spark) == before


def test_import_batchscore_stays_light() -> None:
    code = ("import sys, batchscore; assert 'pyspark' not in sys.modules and 'tensorflow' not in sys.modules; "
            "assert callable(batchscore.predict_udf) and callable(batchscore.score_dataframe); "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_task_stats_count_every_task_once_empty_ones_too(spark, image_model) -> None:
    from pyspark.sql import functions as F

    # `id` is not nullable: the stats rows put a zero there, never a null Spark would refuse
    df = spark.range(0, 3, 1, 5).select("id", F.array_repeat(F.lit(0.5).cast("float"), support.IMAGE_SIZE)
                                        .alias("pixels"))
    stats = batchscore.TaskStats()
    scored = batchscore.score_dataframe(df, image_model, columns={"image": "pixels"}, keep=["id"], stats=stats)
    assert not scored.schema["id"].nullable and "bs__stats" not in scored.columns
    assert sorted(r["id"] for r in scored.collect()) == [0, 1, 2]
    assert (stats.value["tasks"], stats.value["rows"], stats.value["model_calls"]) == (5, 3, 3)
