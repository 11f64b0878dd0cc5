"""The scoring job end to end: Parquet in, the model on Spark's Python workers, Parquet out."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batchscore.core.errors import ConfigError
from batchscore.demo_data import NUMERIC
from batchscore.jobs.score import main
from batchscore.output.manifest import RunManifest, SparkInfo
from batchscore.run.steps import run_scoring
from batchscore.session import jvm_cache
from batchscore.session.builder import local_driver_class_path
from batchscore.udfs.model.signature import model_fingerprint
from tests import support

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-5
DEMO_COLUMNS = "input.columns.numeric=[" + ", ".join(NUMERIC) + "]"


def config(input_path: str, model_path: str, output_path: str, *overrides: str) -> dict:
    return support.job_spec(input_path, model_path, output_path, *overrides)


def sql_conf(spark, **settings: str):
    """Set runtime SQL confs for one block, then put the old values back."""
    from batchscore.run.lane_choice import temporary_conf

    return temporary_conf(spark, settings)


def assert_demo_predictions(out: pa.Table, reference: np.ndarray, ids: np.ndarray, column: str = "output_0") -> None:
    """`out` (sorted by id) holds exactly `ids`, once each, scored like bare TF."""
    got_ids = out.column("id").to_numpy()
    assert len(np.unique(got_ids)) == len(got_ids), "duplicate rows in the output"
    np.testing.assert_array_equal(got_ids, np.sort(ids))
    assert out.schema.field(column).type == pa.float32()
    assert support.max_abs_diff(out.column(column).to_numpy(), reference[got_ids]) <= TOL


def read_manifest(output_path: str) -> dict:
    with open(os.path.join(output_path, "_manifest.json")) as fh:
        return json.load(fh)


@pytest.fixture
def job_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("spark:\n  spark.master: local[2]\noutput:\n  keep_columns: [id]\n")
    return str(path)


def run_main(spark, capsys, job_file, *overrides: str):
    """`main()` in this process, on the tests' session (which it must leave running)."""
    args = ["--config", job_file, "--quiet"]
    for o in overrides:
        args += ["--set", o]
    code = main(args, spark=spark)
    if spark is not None:
        assert not spark.sparkContext._jsc.sc().isStopped()
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err.strip().splitlines()


# --- predictions equal bare TensorFlow ---


def test_demo_model_scores_like_bare_tensorflow(spark, demo_input, demo_model, demo_table, demo_reference, tmp_path):
    out_path = str(tmp_path / "predictions")
    cfg = config(demo_input, demo_model, out_path, DEMO_COLUMNS, "output.keep_columns=[id]",
                 "model.batch_size=100")
    manifest = run_scoring(spark, cfg)

    out = support.read_output(out_path)
    assert out.column_names == ["id", "output_0"]
    all_ids = demo_table.column("id").to_numpy()
    assert_demo_predictions(out, demo_reference, all_ids)

    # The manifest on disk is the one returned, and it adds up.
    assert read_manifest(out_path) == json.loads(manifest.to_json())
    assert RunManifest.from_dict(read_manifest(out_path)) == manifest
    assert manifest.status == "succeeded" and manifest.run_id
    assert manifest.rows_in == len(all_ids) == manifest.rows_scored + manifest.rows_quarantined
    assert manifest.rows_quarantined == 0
    assert manifest.model.path == os.path.abspath(demo_model)
    assert manifest.model.fingerprint == model_fingerprint(demo_model)
    assert manifest.model.signature == "serving_default"
    assert manifest.lane in ("dataframe", "arrow")
    archive = jvm_cache.archive_path(local_driver_class_path())  # used when `make jvm-cache` built it
    assert manifest.spark == SparkInfo(version=spark.version, master="local[2]",
                                       class_archive=archive if archive and os.path.isfile(archive) else None)
    assert manifest.started_at <= manifest.finished_at
    assert 0 <= manifest.seconds_scoring <= manifest.seconds_total
    assert manifest.rows_per_second == pytest.approx(manifest.rows_in / manifest.seconds_scoring, rel=0.05)
    assert isinstance(manifest.model_loads, int) and 0 <= manifest.model_loads <= manifest.python_workers
    assert 0 < manifest.max_rows_per_call <= 100
    assert manifest.corrupt_files_skipped == 0
    assert os.path.exists(os.path.join(out_path, "_SUCCESS"))


@pytest.mark.parametrize("lane", ["dataframe", "arrow"])
def test_multi_input_multi_output_model_scores_like_bare_tensorflow(spark, multi_model, multi_table, tmp_path, lane):
    in_path = support.write_parquet(multi_table, str(tmp_path / "in"), files=3)
    out_path = str(tmp_path / "out")
    cfg = config(
        in_path, multi_model, out_path,
        "input.columns.image=pixels", "input.columns.numeric=[f0, f1, f2, f3]",
        "input.columns.category=cat", "input.columns.count=n",
        "output.keep_columns=[id]", "model.batch_size=64", f"input.lane={lane}",
    )
    manifest = run_scoring(spark, cfg)
    assert manifest.lane == lane

    out = support.read_output(out_path)
    assert out.column_names == ["id", *sorted(support.MULTI_OUTPUTS)]
    assert out.schema.field("score").type == pa.float32()
    assert out.schema.field("embedding").type == pa.list_(pa.float32())
    assert out.schema.field("grid").type == pa.list_(pa.list_(pa.float32()))
    assert out.schema.field("label").type == pa.string()
    assert out.schema.field("doubled").type == pa.int64()
    np.testing.assert_array_equal(out.column("id").to_numpy(), multi_table.column("id").to_numpy())

    expected = support.tf_predict(multi_model, support.multi_inputs(multi_table))
    assert support.max_abs_diff(out.column("score").to_numpy(), expected["score"]) <= TOL
    assert support.max_abs_diff(out.column("embedding").to_pylist(), expected["embedding"]) <= TOL
    assert support.max_abs_diff(out.column("grid").to_pylist(), expected["grid"]) <= TOL
    assert out.column("label").to_pylist() == [s.decode() for s in expected["label"]]
    np.testing.assert_array_equal(out.column("doubled").to_numpy(), expected["doubled"])
    assert manifest.rows_in == manifest.rows_scored == multi_table.num_rows
    assert 0 < manifest.max_rows_per_call <= 64


def test_every_row_lands_once_in_output_or_quarantine(spark, multi_model, tmp_path):
    table = support.multi_table(120, seed=4)
    pixels, f1 = table.column("pixels").to_pylist(), table.column("f1").to_numpy().copy()
    pixels[7] = None
    pixels[50] = pixels[50][:100]
    f1[99] = np.inf
    table = table.set_column(1, "pixels", pa.array(pixels, pa.list_(pa.float32()))).set_column(3, "f1", pa.array(f1))
    in_path = support.write_parquet(table, str(tmp_path / "in"), files=2)
    out_path = str(tmp_path / "out")
    cfg = config(in_path, multi_model, out_path, "input.columns.image=pixels",
                 "input.columns.numeric=[f0, f1, f2, f3]", "input.columns.category=cat",
                 "input.columns.count=n", "output.keep_columns=[id]", "model.batch_size=16")
    manifest = run_scoring(spark, cfg)

    bad = {7: "null_feature", 50: "bad_shape", 99: "non_finite"}
    good_ids = np.array([i for i in range(120) if i not in bad])
    out = support.read_output(out_path)
    np.testing.assert_array_equal(out.column("id").to_numpy(), good_ids)
    expected = support.tf_predict(multi_model, support.multi_inputs(table.take(good_ids)))
    assert support.max_abs_diff(out.column("score").to_numpy(), expected["score"]) <= TOL

    q = support.read_output(manifest.output.quarantine_path.removeprefix("file:"))
    assert dict(zip(q.column("id").to_pylist(), q.column("reason").to_pylist(), strict=True)) == bad
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (120, 117, 3)


# --- once per worker, bounded model calls ---


def test_model_loaded_once_per_worker_across_many_partitions(spark, demo_model, demo_table, demo_reference, tmp_path):
    in_path = support.write_parquet(demo_table, str(tmp_path / "in"), files=8)
    model = support.fresh_copy(demo_model, str(tmp_path))  # a new fingerprint: no worker has it yet
    out_path = str(tmp_path / "out")
    batch_size = 64
    # The DataFrame lane, where Spark's file splits are the tasks: one file per partition
    # (opening a file costs more than a split holds), and Arrow batches smaller than
    # batch_size so chunks must span Arrow batch boundaries.
    cfg = config(in_path, model, out_path, DEMO_COLUMNS, "output.keep_columns=[id]",
                 f"model.batch_size={batch_size}", "input.lane=dataframe")
    with sql_conf(spark, **{"spark.sql.files.openCostInBytes": str(256 << 20),
                            "spark.sql.execution.arrow.maxRecordsPerBatch": "30"}):
        from pyspark.sql.functions import spark_partition_id

        per_partition = [r[1] for r in spark.read.parquet(in_path).groupBy(spark_partition_id()).count().collect()]
        assert len(per_partition) >= 8
        manifest = run_scoring(spark, cfg)

    assert_demo_predictions(support.read_output(out_path), demo_reference, demo_table.column("id").to_numpy())
    assert manifest.lane == "dataframe"
    assert 1 <= manifest.python_workers <= 2  # local[2]: at most two concurrent workers, reused
    assert manifest.model_loads == manifest.python_workers
    assert manifest.max_rows_per_call == batch_size
    # Re-chunked per partition across Arrow batches: ceil(rows / batch_size) calls per partition.
    assert manifest.model_calls == sum(math.ceil(n / batch_size) for n in per_partition)


@pytest.fixture(scope="module")
def distribution_runs(spark, demo_input, demo_model, tmp_path_factory):
    """One run per model.distribution, each with its own copy of the model (new fingerprint)."""
    root = tmp_path_factory.mktemp("distribution")
    runs = {}
    for kind in ("broadcast", "files", "direct"):
        model = support.fresh_copy(demo_model, str(root), name=f"model_{kind}_{os.urandom(4).hex()}")
        out_path = str(root / f"out_{kind}")
        cfg = config(demo_input, model, out_path, DEMO_COLUMNS, "output.keep_columns=[id]",
                     f"model.distribution={kind}", "model.batch_size=256")
        runs[kind] = (run_scoring(spark, cfg), support.read_output(out_path))
    return runs


@pytest.mark.parametrize("kind", ["broadcast", "files", "direct"])
def test_each_distribution_scores_like_bare_tensorflow(kind, distribution_runs, demo_table, demo_reference):
    manifest, out = distribution_runs[kind]
    assert manifest.model.distribution == kind
    assert manifest.model_loads >= 1  # the model came through this distribution, not a cache
    assert_demo_predictions(out, demo_reference, demo_table.column("id").to_numpy())


def test_distributions_give_identical_predictions(distribution_runs):
    tables = {k: v[1] for k, v in distribution_runs.items()}
    assert tables["broadcast"].equals(tables["files"])
    assert tables["broadcast"].equals(tables["direct"])


# --- output options ---


def test_rename_keep_columns_and_partition_by(spark, demo_input, demo_model, demo_table, demo_reference, tmp_path):
    out_path = str(tmp_path / "out")
    cfg = config(demo_input, demo_model, out_path, DEMO_COLUMNS, "output.keep_columns=[id, age]",
                 "output.rename.output_0=p_default", "output.partition_by=[region]")
    manifest = run_scoring(spark, cfg)
    assert manifest.output.columns == ["id", "age", "region", "p_default"]

    # One directory per region, each holding Parquet files.
    regions = set(demo_table.column("region").to_pylist())
    dirs = {d for d in os.listdir(out_path) if not d.startswith(("_", "."))}
    assert dirs == {f"region={r}" for r in regions}
    for d in dirs:
        assert any(f.endswith(".parquet") for f in os.listdir(os.path.join(out_path, d))), d

    out = support.read_output(out_path)
    assert sorted(out.column_names) == ["age", "id", "p_default", "region"]
    assert "output_0" not in out.column_names
    assert_demo_predictions(out, demo_reference, demo_table.column("id").to_numpy(), column="p_default")
    ids = out.column("id").to_numpy()
    np.testing.assert_array_equal(out.column("age").to_numpy(), demo_table.column("age").to_numpy()[ids])
    assert out.column("region").to_pylist() == demo_table.column("region").take(ids).to_pylist()

    # Spark reads the layout back to the same rows.
    back = spark.read.parquet(out_path).orderBy("id").toPandas()
    assert sorted(back.columns) == ["age", "id", "p_default", "region"]
    np.testing.assert_array_equal(back["id"].to_numpy(), ids)
    assert back["region"].tolist() == out.column("region").to_pylist()
    np.testing.assert_array_equal(back["p_default"].to_numpy(), out.column("p_default").to_numpy())


def test_mode_error_refuses_then_overwrite_with_filter_replaces(spark, capsys, job_file, demo_input, demo_model, demo_table, demo_reference, tmp_path):
    out_path = str(tmp_path / "out")
    base = (demo_input, demo_model, out_path, DEMO_COLUMNS, "output.keep_columns=[id]")
    # The first run goes through `python -m jobs.score`'s main(): exit 0 and a summary.
    code, out_lines, err = run_main(spark, capsys, job_file, *(f"{k}={v}" for k, v in (
        ("input.path", demo_input), ("model.path", demo_model), ("output.path", out_path))), DEMO_COLUMNS)
    assert code == 0, err
    assert f"{len(demo_table):,} rows in, {len(demo_table):,} scored, 0 quarantined" in out_lines[0]
    assert any(out_path in line for line in out_lines)
    first = RunManifest.from_dict(read_manifest(out_path))
    all_ids = demo_table.column("id").to_numpy()
    assert_demo_predictions(support.read_output(out_path), demo_reference, all_ids)

    with pytest.raises(ConfigError, match=r"output.path '.*/out' exists and output.mode is 'error'"):
        run_scoring(spark, config(*base))
    assert read_manifest(out_path)["run_id"] == first.run_id  # untouched
    assert_demo_predictions(support.read_output(out_path), demo_reference, all_ids)

    # On a model input, a column the job does not otherwise read, and the partition column.
    flt = "region = 'north' AND age >= 40 AND defaulted = 0 AND as_of_date >= '2026-09-01'"
    second = run_scoring(spark, config(*base, "output.mode=overwrite", f"input.filter={flt}"))
    t = demo_table
    mask = np.asarray(t.column("region").to_pylist()) == "north"
    mask &= t.column("age").to_numpy() >= 40
    mask &= t.column("defaulted").to_numpy() == 0
    mask &= np.asarray(t.column("as_of_date").to_pylist()) >= "2026-09-01"
    want = t.column("id").to_numpy()[mask]
    assert 0 < len(want) < len(all_ids)
    assert_demo_predictions(support.read_output(out_path), demo_reference, want)
    assert second.rows_in == second.rows_scored == len(want)
    assert second.input.filter == flt
    assert read_manifest(out_path)["run_id"] == second.run_id != first.run_id


# --- exit codes of `python -m jobs.score` ---


def test_main_missing_model_exits_2_naming_the_path(spark, capsys, job_file, demo_input, tmp_path):
    missing = str(tmp_path / "no_model")
    code, _, err = run_main(spark, capsys, job_file, f"input.path={demo_input}", f"model.path={missing}",
                         f"output.path={tmp_path / 'out'}", DEMO_COLUMNS)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and missing in err[0], err
    assert not (tmp_path / "out").exists()


def test_main_missing_input_exits_2_naming_the_path(spark, capsys, job_file, demo_model, tmp_path):
    missing = str(tmp_path / "no_input")
    code, _, err = run_main(spark, capsys, job_file, f"input.path={missing}", f"model.path={demo_model}",
                            f"output.path={tmp_path / 'out'}", DEMO_COLUMNS)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and missing in err[0], err


def test_main_missing_column_exits_2_naming_it(spark, capsys, job_file, demo_model, demo_table, tmp_path):
    in_path = support.write_parquet(demo_table.slice(0, 50).drop_columns(["region"]), str(tmp_path / "in"))
    code, _, err = run_main(spark, capsys, job_file, f"input.path={in_path}", f"model.path={demo_model}",
                         f"output.path={tmp_path / 'out'}", DEMO_COLUMNS)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and "'region'" in err[0] and "not found" in err[0], err


def test_main_wrong_typed_column_exits_2_naming_it(spark, capsys, job_file, demo_model, demo_table, tmp_path):
    t = demo_table.slice(0, 50)
    t = t.set_column(t.schema.get_field_index("age"), "age", pc.cast(t.column("age"), pa.string()))
    in_path = support.write_parquet(t, str(tmp_path / "in"))
    code, _, err = run_main(spark, capsys, job_file, f"input.path={in_path}", f"model.path={demo_model}",
                         f"output.path={tmp_path / 'out'}", DEMO_COLUMNS)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "column 'age' is string" in err[0] and "float32" in err[0], err


def test_main_bad_set_exits_2_naming_the_key(capsys, job_file, tmp_path):
    code, _, err = run_main(None, capsys, job_file, "input.path=/a", "model.path=/m",
                         f"output.path={tmp_path / 'out'}", "model.batch_sise=10")
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:") and "model.batch_sise" in err[0], err


def test_subprocess_bad_set_exits_2_without_traceback(job_file):
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.score", "--config", job_file, "--set", "model.batch_size"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == ["error: --set 'model.batch_size' must look like dotted.key=value"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_main_leaves_a_session_it_did_not_start_running(spark, capsys, job_file, demo_input, demo_model,
                                                         tmp_path) -> None:
    # A notebook or pipeline that already runs a session calls the job's main(): the job
    # scores on that session and must not stop it (on Databricks it is the cluster's).
    code = main(["--config", job_file, "--quiet", "--set", f"input.path={demo_input}", "--set",
                 f"model.path={demo_model}", "--set", f"output.path={tmp_path / 'out'}", "--set", DEMO_COLUMNS])
    assert code == 0, capsys.readouterr().err
    assert spark.range(3).count() == 3
