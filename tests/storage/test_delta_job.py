"""Delta Lake in and out: time travel on input, the scored rows committed by Delta, idempotent reruns.

All on the shared session (batchscore.session.builder turns Delta's extension and catalog on when the
delta-spark jar is on the classpath); one test starts a session without the jars, in a
subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batchscore.core.compat import to_arrow
from batchscore.core.errors import InputError
from batchscore.demo_data import DATES, NUMERIC
from batchscore.output.delta_output import DELTA_CATALOG, DELTA_EXTENSION, delta_session, replace_where, txn_app_id
from batchscore.run.steps import run_scoring
from batchscore.session.builder import jars_folder, with_delta
from tests import support

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
DEMO_COLUMNS = "input.columns.numeric=[" + ", ".join(NUMERIC) + "]"


def test_with_delta_adds_the_extension_and_catalog_when_the_jar_is_there() -> None:
    jar = "/opt/jars/delta-spark_2.13-4.1.0.jar"
    conf = {"spark.driver.extraClassPath": f"/opt/jars/x.jar:{jar}"}
    with_delta(conf)
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION
    assert conf["spark.sql.catalog.spark_catalog"] == DELTA_CATALOG
    conf = {"spark.sql.extensions": "my.Ext", "spark.sql.catalog.spark_catalog": "my.Catalog"}
    with_delta(conf, given={"spark.jars": jar})  # spark-submit was given the jar
    assert conf == {"spark.sql.extensions": f"my.Ext,{DELTA_EXTENSION}", "spark.sql.catalog.spark_catalog": "my.Catalog"}
    conf = {"spark.jars.packages": "io.delta:delta-spark_2.13:4.1.0", "spark.sql.extensions": DELTA_EXTENSION}
    with_delta(conf)
    assert conf["spark.sql.extensions"] == DELTA_EXTENSION  # not twice
    conf = {"spark.driver.extraClassPath": "/opt/jars/hadoop-aws-3.4.2.jar"}
    with_delta(conf)
    assert conf == {"spark.driver.extraClassPath": "/opt/jars/hadoop-aws-3.4.2.jar"}


needs_delta = pytest.mark.skipif(not any(Path(jars_folder()).glob("delta-spark_*.jar")),
                                 reason=f"no delta-spark jar under {jars_folder()} (run `make jars` / `make jars-lts`)")


@pytest.fixture(scope="module")
def delta_spark(spark: Any) -> Any:
    assert delta_session(spark), "the shared session has Delta's extension (batchscore.session.builder.with_delta)"
    return spark


@pytest.fixture(scope="module")
def delta_input(delta_spark: Any, demo_input: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo rows as a Delta table: version 0 holds ids < 600, version 1 appends the rest."""
    path = str(tmp_path_factory.mktemp("delta_in") / "features")
    rows = delta_spark.read.parquet(demo_input)
    rows.where("id < 600").write.format("delta").save(path)
    rows.where("id >= 600").write.format("delta").mode("append").save(path)
    return path


def spec(input_path: str, model: str, out: str, *overrides: str) -> Any:
    return support.job_spec(input_path, model, out, DEMO_COLUMNS, "output.keep_columns=[id]",
                            "output.format=delta", *overrides)


def read_delta(spark: Any, path: str, *columns: str) -> pa.Table:
    return to_arrow(spark.read.format("delta").load(path).select(*columns)).sort_by("id")


def history(spark: Any, path: str) -> list[Any]:
    return spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()


def assert_scored_like_tf(out: pa.Table, reference: np.ndarray, ids: np.ndarray) -> None:
    """`out` (sorted by id) holds exactly `ids`, once each, scored like bare TF (reference indexed by id)."""
    got = out.column("id").to_numpy()
    np.testing.assert_array_equal(got, np.sort(ids))
    assert support.max_abs_diff(out.column("output_0").to_numpy(), reference[got]) <= TOL


def manifest_of(out: str) -> dict[str, Any]:
    return json.loads(Path(out, "_manifest.json").read_text())


@needs_delta
def test_time_travel_in_and_overwrite_out(delta_spark: Any, delta_input: str, demo_model: str,
                                          demo_reference: np.ndarray, tmp_path: Path) -> None:
    all_ids = np.arange(1200)
    out = str(tmp_path / "scores")
    m = run_scoring(delta_spark, spec(delta_input, demo_model, out, "input.format=delta", "input.version=0"))
    assert_scored_like_tf(read_delta(delta_spark, out, "id", "output_0"), demo_reference, all_ids[:600])
    assert (m.rows_in, m.rows_scored, m.rows_quarantined, m.lane) == (600, 600, 0, "dataframe")
    assert manifest_of(out)["output"]["format"] == "delta" and manifest_of(out)["run_id"] == m.run_id

    # timestamp of version 1 -> every row; overwrite replaces the table's rows (a new version, not new files beside)
    stamp = str(history(delta_spark, delta_input)[1]["timestamp"])
    m = run_scoring(delta_spark, spec(delta_input, demo_model, out, "input.format=delta",
                                      f"input.timestamp={stamp!r}", "output.mode=overwrite"))
    assert_scored_like_tf(read_delta(delta_spark, out, "id", "output_0"), demo_reference, all_ids)
    assert (m.rows_in, m.rows_scored) == (1200, 1200)
    assert [(h["version"], h["operation"], h["operationMetrics"]["numOutputRows"])
            for h in history(delta_spark, out)] == [(0, "WRITE", "600"), (1, "WRITE", "1200")]
    assert not os.path.exists(f"{out}_quarantine")  # no bad rows, no quarantine

    with pytest.raises(InputError, match=r"^input.path '.*' cannot be read at input.version 9: .*"):
        run_scoring(delta_spark, spec(delta_input, demo_model, out, "input.format=delta", "input.version=9",
                                      "output.mode=overwrite"))
    assert len(history(delta_spark, out)) == 2


@needs_delta
def test_append_and_idempotent_rerun(delta_spark: Any, delta_input: str, demo_model: str,
                                     demo_reference: np.ndarray, tmp_path: Path) -> None:
    out = str(tmp_path / "scores")
    first = spec(delta_input, demo_model, out, "input.format=delta", "input.version=0", "output.mode=append")
    run_scoring(delta_spark, first, run_id="run-a")
    second = spec(delta_input, demo_model, out, "input.format=delta", "input.filter=id >= 600",
                  "output.mode=append")
    m = run_scoring(delta_spark, second, run_id="run-b")
    assert (m.rows_in, m.rows_scored) == (600, 600)
    assert_scored_like_tf(read_delta(delta_spark, out, "id", "output_0"), demo_reference, np.arange(1200))
    before = history(delta_spark, out)
    assert len(before) == 2

    again = run_scoring(delta_spark, second, run_id="run-b")  # e.g. an Airflow retry after the commit
    assert history(delta_spark, out) == before  # Delta skipped the write: no new version
    assert_scored_like_tf(read_delta(delta_spark, out, "id", "output_0"), demo_reference, np.arange(1200))
    assert manifest_of(out)["run_id"] == again.run_id == "run-b"
    assert (again.rows_in, again.rows_scored, again.rows_quarantined) == (600, 600, 0)
    log = Path(out, "_delta_log", "00000000000000000001.json").read_text()
    txns = [json.loads(line)["txn"] for line in log.splitlines() if '"txn"' in line]
    assert [(t["appId"], t["version"]) for t in txns] == [(txn_app_id("run-b"), 0)]


@needs_delta
def test_overwrite_partitions_replaces_exactly_the_rescored_partitions(
        delta_spark: Any, demo_table: pa.Table, demo_model: str, demo_reference: np.ndarray,
        tmp_path: Path) -> None:
    out = str(tmp_path / "scores")
    first = support.write_parquet(demo_table, str(tmp_path / "first"), files=2)  # as_of_date: a string column
    run_scoring(delta_spark, spec(first, demo_model, out, "output.partition_by=[as_of_date]"))
    dates = demo_table.column("as_of_date")
    # the rescore: DATES[0] with changed features (new predictions), DATES[1] with every row bad
    changed = demo_table.filter(pc.equal(dates, DATES[0]))
    changed = changed.set_column(changed.schema.get_field_index(NUMERIC[0]), NUMERIC[0],
                                 pc.add(changed.column(NUMERIC[0]), pa.scalar(7.0, changed.schema.field(NUMERIC[0]).type)))
    bad = demo_table.filter(pc.equal(dates, DATES[1]))
    bad = bad.set_column(bad.schema.get_field_index(NUMERIC[1]), NUMERIC[1], pa.nulls(len(bad), bad.schema.field(NUMERIC[1]).type))
    rescore = support.write_parquet(pa.concat_tables([changed, bad]), str(tmp_path / "rescore"), files=2)
    m = run_scoring(delta_spark, spec(rescore, demo_model, out, "output.partition_by=[as_of_date]",
                                      "output.mode=overwrite_partitions"))
    assert (m.rows_in, m.rows_scored, m.rows_quarantined) == (len(changed) + len(bad), len(changed), len(bad))

    got = read_delta(delta_spark, out, "id", "as_of_date", "output_0")
    untouched = demo_table.filter(pc.invert(pc.is_in(dates, pa.array(DATES[:2]))))
    expect_ids = np.sort(np.concatenate([untouched.column("id").to_numpy(), changed.column("id").to_numpy()]))
    np.testing.assert_array_equal(got.column("id").to_numpy(), expect_ids)  # no row of DATES[1] is left
    new_scores = support.tf_predict(demo_model, support.demo_inputs(changed))["output_0"].reshape(-1)
    expect = demo_reference.astype(np.float64).copy()
    expect[changed.column("id").to_numpy()] = new_scores
    assert support.max_abs_diff(got.column("output_0").to_numpy(), expect[expect_ids]) <= TOL
    by_id = dict(zip(demo_table.column("id").to_pylist(), dates.to_pylist(), strict=True))
    assert got.column("as_of_date").to_pylist() == [by_id[i] for i in expect_ids.tolist()]

    # the commit removed and added files of the two rescored partitions only
    actions = [json.loads(line) for line in
               Path(out, "_delta_log", "00000000000000000001.json").read_text().splitlines()]
    touched = {a[k]["partitionValues"]["as_of_date"] for a in actions for k in ("add", "remove") if k in a}
    assert touched == set(DATES[:2])
    (commit,) = [a["commitInfo"] for a in actions if "commitInfo" in a]
    assert commit["operationParameters"]["predicate"] == replace_where(
        {f"as_of_date={d}" for d in DATES[:2]}, delta_spark.read.format("delta").load(out).schema)
    quarantine = support.read_output(f"{out}_quarantine", ["id", "reason", "column"])
    np.testing.assert_array_equal(quarantine.column("id").to_numpy(), np.sort(bad.column("id").to_numpy()))
    assert set(quarantine.column("reason").to_pylist()) == {"null_feature"}


def test_delta_output_without_delta_in_the_session_is_exit_2(demo_input: str, tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(f"spark:\n  spark.master: local[1]\ninput:\n  path: {demo_input}\nmodel:\n  path: {tmp_path}/m\n"
                      f"output:\n  path: {tmp_path}/out\n  format: delta\n")
    env = {**os.environ, "BATCHSCORE_JARS": "none", "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    run = subprocess.run([sys.executable, "-m", "batchscore", "score", "--config", str(config), "--quiet"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "error: output.format 'delta' needs a session with Delta Lake: the delta-spark jar on the classpath "
        "(`make jars`, or the cluster's) and spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension, "
        "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog set when the session "
        "starts")
    assert not (tmp_path / "out").exists()
