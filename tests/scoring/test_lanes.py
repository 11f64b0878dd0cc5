"""The Arrow lane and the DataFrame lane give the same output on the same input."""
from __future__ import annotations

import json
import logging
import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchscore.config.job_spec import JobSpec
from batchscore.core import compat
from batchscore.core.errors import ConfigError
from batchscore.demo_data import NUMERIC
from batchscore.run.steps import run_scoring
from tests import support

NUMERIC_COLUMNS = "input.columns={numeric: [" + ", ".join(NUMERIC) + "]}"
FLOAT_TOL = 1e-6  # same model, batches cut at other rows: float32 rounding may differ in the last bit


def _cfg(inp: str, model: str, out: str, *extra: str) -> JobSpec:
    return support.job_spec(inp, model, out, NUMERIC_COLUMNS, "output.keep_columns=[id, as_of_date]",
                            "model.batch_size=128", *extra)


@pytest.fixture(scope="module")
def dirty_input(tmp_path_factory: pytest.TempPathFactory, demo_table: pa.Table) -> str:
    """The demo rows, hive-partitioned, several files per date, with bad rows and an empty file."""
    t = demo_table
    n = t.num_rows
    income = t.column("income").to_numpy().copy()
    income[np.arange(3, n, 97)] = np.nan  # non_finite
    mask = np.zeros(n, dtype=bool)
    mask[np.arange(5, n, 89)] = True  # null_feature
    t = t.set_column(t.schema.get_field_index("income"), "income", pa.array(income, mask=mask))
    root = str(tmp_path_factory.mktemp("lanes") / "features")
    ds.write_dataset(t, root, format="parquet", partitioning=["as_of_date"], partitioning_flavor="hive",
                     max_rows_per_file=90, max_rows_per_group=30, basename_template="part-{i}.parquet")
    first = sorted(d for d in os.listdir(root) if d.startswith("as_of_date="))[0]
    pq.write_table(t.slice(0, 0).drop_columns(["as_of_date"]), os.path.join(root, first, "empty.parquet"))
    return root


def _read(path: str) -> pa.Table:
    return support.read_output(path) if os.path.isdir(path) else pa.table({})


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names
    assert a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert x.null_count == y.null_count
            assert x.is_null().equals(y.is_null())
            assert support.max_abs_diff(pc.fill_null(x, 0).to_numpy(), pc.fill_null(y, 0).to_numpy()) <= FLOAT_TOL
        else:
            assert x.equals(y), name


@pytest.mark.parametrize("filter_sql", [None, "as_of_date >= '2026-08-01' AND age > 30"])
def test_lanes_give_identical_outputs(spark, dirty_input, demo_model, tmp_path, filter_sql) -> None:
    extra = [f"input.filter={json.dumps(filter_sql)}"] if filter_sql else []
    results = {}
    for lane in ("arrow", "dataframe"):
        out = str(tmp_path / lane / "out")
        manifest = run_scoring(spark, _cfg(dirty_input, demo_model, out, f"input.lane={lane}", *extra))
        assert manifest.lane == lane
        results[lane] = (manifest, _read(out), _read(out + "_quarantine"))
    (ma, oa, qa), (md, od, qd) = results["arrow"], results["dataframe"]
    for key in ("rows_in", "rows_scored", "rows_quarantined", "quarantine_reasons"):
        assert getattr(ma, key) == getattr(md, key), key
    assert ma.rows_quarantined > 0 and ma.rows_scored > 0
    _assert_same(oa, od)
    _assert_same(qa, qd)
    assert set(qa.column("reason").to_pylist()) == {"null_feature", "non_finite"}
    assert set(qa.column("column").to_pylist()) == {"income"}
    # every input row once: output + quarantine == the (filtered) input ids
    src = ds.dataset(dirty_input, format="parquet", partitioning="hive").to_table()
    if filter_sql:
        keep = pc.and_(pc.greater_equal(src.column("as_of_date"), "2026-08-01"), pc.greater(src.column("age"), 30))
        src = src.filter(keep)
    ids = np.concatenate([oa.column("id").to_numpy(), qa.column("id").to_numpy()])
    assert len(ids) == len(np.unique(ids))
    assert set(ids.tolist()) == set(src.column("id").to_pylist())


def test_arrow_lane_scores_like_bare_tf(spark, dirty_input, demo_model, demo_reference, tmp_path) -> None:
    out = str(tmp_path / "out")
    run_scoring(spark, _cfg(dirty_input, demo_model, out, "input.lane=arrow"))
    t = _read(out)
    ids = t.column("id").to_numpy()
    assert support.max_abs_diff(t.column("output_0").to_numpy(), demo_reference[ids]) <= 1e-5


def test_auto_picks_arrow_for_plain_parquet(spark, demo_input, demo_model, tmp_path) -> None:
    manifest = run_scoring(spark, _cfg(demo_input, demo_model, str(tmp_path / "out")))
    assert manifest.lane == "arrow"


def test_auto_falls_back_for_orc_and_says_so(spark, demo_input, demo_model, tmp_path, caplog) -> None:
    orc = str(tmp_path / "orc")
    spark.read.parquet(demo_input).write.orc(orc)
    caplog.set_level(logging.INFO, logger="batchscore")
    out = str(tmp_path / "out")
    manifest = run_scoring(spark, _cfg(orc, demo_model, out, "input.format=orc"))
    assert manifest.lane == "dataframe"
    assert any("DataFrame lane" in r.getMessage() and "orc" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"input.lane 'arrow'.*orc"):
        run_scoring(spark, _cfg(orc, demo_model, str(tmp_path / "out2"), "input.format=orc", "input.lane=arrow"))


def test_auto_falls_back_for_sql_outside_the_arrow_subset(spark, demo_input, demo_model, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="batchscore")
    cfg = _cfg(demo_input, demo_model, str(tmp_path / "out"), "input.filter=abs(age - 50) < 10")
    manifest = run_scoring(spark, cfg)
    assert manifest.lane == "dataframe"
    assert any("DataFrame lane" in r.getMessage() and "abs(" in r.getMessage() for r in caplog.records)
    expected = spark.read.parquet(demo_input).where("abs(age - 50) < 10").count()
    assert manifest.rows_in == manifest.rows_scored == expected
    with pytest.raises(ConfigError, match="abs"):
        run_scoring(spark, _cfg(demo_input, demo_model, str(tmp_path / "o2"), "input.lane=arrow",
                                "input.filter=abs(age - 50) < 10"))


def test_dataframe_lane_packs_same_typed_stacked_columns_only(spark) -> None:
    from batchscore.udfs.lanes.scoring import arrow_schema_of, pack_stacked_feeds, plan_scoring
    from batchscore.udfs.model.distribution import ModelSource
    from batchscore.udfs.model.signature import ModelSignature, TensorSpec

    sig = ModelSignature("/m", "serving_default", (TensorSpec("x", "float32", (3,)), TensorSpec("y", "float32", (2,))),
                         (TensorSpec("out", "float32", ()),), "f" * 16)
    df = spark.createDataFrame([(1, 1.0, 2.0, 3.0, 4, 5.0)], "id long, a double, b double, c double, d int, e double")
    plan = plan_scoring(sig, arrow_schema_of(df), ModelSource("direct", "/m", "f" * 16),
                        columns={"x": ["a", "b", "c"], "y": ["d", "e"]}, keep_columns=["id", "a"])
    select, packed_plan = pack_stacked_feeds(df, plan)
    x, y = packed_plan.feeds
    assert x.packed == "bs__packed_0" and y.packed is None  # y mixes int and double: left as columns
    row = df.select(*select).first().asDict()
    assert row == {"id": 1, "a": 1.0, "d": 4, "e": 5.0, "bs__packed_0": [1.0, 2.0, 3.0]}


# --- input.filter on a column holding NaN: both lanes keep the rows Spark keeps ---


@pytest.fixture(scope="module")
def nan_input(tmp_path_factory: pytest.TempPathFactory, demo_table: pa.Table) -> str:
    """The demo rows with an `amount` double holding NaN, ±inf and -0.0, in small row groups
    (a Parquet reader that skipped row groups by NaN-free statistics would lose NaN rows)."""
    n = demo_table.num_rows
    amount = np.random.default_rng(3).uniform(0, 200, n)
    amount[::7] = np.nan
    amount[1::50], amount[2::50], amount[3::50] = np.inf, -np.inf, -0.0
    t = demo_table.append_column("amount", pa.array(amount))
    root = str(tmp_path_factory.mktemp("nan") / "features")
    ds.write_dataset(t, root, format="parquet", partitioning=["as_of_date"], partitioning_flavor="hive",
                     max_rows_per_file=200, max_rows_per_group=20, basename_template="part-{i}.parquet")
    return root


@pytest.mark.parametrize("filter_sql", ["amount > 100", "NOT amount > 100"])
def test_filter_on_nan_column_is_spark_semantics_on_both_lanes(spark, nan_input, demo_model, tmp_path,
                                                               filter_sql) -> None:
    results = {}
    for lane in ("auto", "arrow", "dataframe"):
        out = str(tmp_path / lane / "out")
        manifest = run_scoring(spark, _cfg(nan_input, demo_model, out, f"input.lane={lane}",
                                           f"input.filter={filter_sql}"))
        results[lane] = (manifest, _read(out))
    assert results["auto"][0].lane == "arrow"
    amount = ds.dataset(nan_input, format="parquet", partitioning="hive").to_table(columns=["id", "amount"])
    x = amount.column("amount").to_numpy()
    above = np.isnan(x) | (x > 100)  # Spark: NaN is above every number
    want = amount.column("id").to_numpy()[above if filter_sql.startswith("amount") else ~above]
    for lane, (manifest, out) in results.items():
        assert manifest.rows_in == manifest.rows_scored == len(want), lane
        assert sorted(out.column("id").to_pylist()) == sorted(want.tolist()), lane
    _assert_same(results["arrow"][1], results["dataframe"][1])
    _assert_same(results["auto"][1], results["dataframe"][1])


@pytest.mark.skipif(not compat.spark_rejects_bad_casts(), reason="Spark 3.5 (lts) is not in ANSI mode by default: "
                    "a literal that cannot be cast reads as null, the filter is not rejected")
@pytest.mark.parametrize("lane", ["auto", "arrow", "dataframe"])
@pytest.mark.parametrize("filter_sql", ["amount > 'abc'", "region > 5"])
def test_filter_spark_rejects_is_a_config_error_on_every_lane(spark, nan_input, demo_model, tmp_path,
                                                              lane, filter_sql) -> None:
    # 'abc' fails when Spark folds the cast; region > 5 fails on the first row ('north' is no number),
    # which the Arrow lane refuses to evaluate (it cannot cast strings as Spark does)
    named = "input.filter" if (lane, filter_sql) == ("arrow", "region > 5") else f"input.filter {filter_sql!r}"
    with pytest.raises(ConfigError, match=re.escape(named)):
        run_scoring(spark, _cfg(nan_input, demo_model, str(tmp_path / "out"), f"input.lane={lane}",
                                f"input.filter={filter_sql}"))


def test_timestamp_partition_columns_use_the_dataframe_lane(spark, demo_table, demo_model, tmp_path, caplog):
    # Spark reads a `snap=2026-03-29 01:00:00` directory in the session time zone; pyarrow
    # would read it as UTC, so the Arrow lane steps aside (auto) or refuses (arrow).
    import pyarrow.parquet as pq
    from pyspark.sql.types import TimestampType

    root = tmp_path / "ts_in"
    for i, stamp in enumerate(["2026-03-29 01%3A00%3A00", "2026-03-29 03%3A00%3A00"]):
        (root / f"snap={stamp}").mkdir(parents=True)
        pq.write_table(demo_table.slice(i * 25, 25), root / f"snap={stamp}" / "part-0.parquet")
    assert isinstance(spark.read.parquet(str(root)).schema["snap"].dataType, TimestampType)
    caplog.set_level(logging.INFO, logger="batchscore")
    manifest = run_scoring(spark, _cfg(str(root), demo_model, str(tmp_path / "out"), "input.filter=age > 0"))
    assert manifest.lane == "dataframe" and manifest.rows_in == manifest.rows_scored
    assert any("partition column 'snap' holds timestamps" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match=r"input.lane 'arrow': partition column 'snap'"):
        run_scoring(spark, _cfg(str(root), demo_model, str(tmp_path / "o2"), "input.lane=arrow"))
