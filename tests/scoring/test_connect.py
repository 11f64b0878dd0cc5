"""The score job and the Python API hold on Spark Connect what they hold on a classic session:
the same rows scored like bare TensorFlow, the same quarantine, partitions and Delta output,
the same manifest, counters of the accepted task attempts only, nothing half-written.

The end-to-end cases run through one fixture parameter: `classic` runs the job's `main()` in
this process on the tests' session; `connect` runs `python -m batchscore score --remote URL`
in a subprocess against the session's local Connect server (a process that ran a Connect job
is marked as a Connect client, which the tests' classic session must not share).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core import compat
from batchscore.demo_data import DATES
from batchscore.jobs.score import main
from batchscore.output.manifest import RunManifest
from batchscore.session.builder import jars_folder
from tests import support
from tests.scoring.test_output_integrity import event_files, task_events
from tests.scoring.test_score_job import DEMO_COLUMNS, TOL, assert_demo_predictions
from tests.support import reliability as rs

PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
ENV = {**os.environ, "PYTHONPATH": PROJECT_ROOT, "SPARK_LOCAL_IP": "127.0.0.1"}
for _key in ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "PYSPARK_GATEWAY_PORT"):
    ENV.pop(_key, None)
MULTI_COLUMNS = ["input.columns.image=pixels", "input.columns.numeric=[f0, f1, f2, f3]",
                 "input.columns.category=cat", "input.columns.count=n"]

pytestmark = pytest.mark.skipif(compat.spark_version() < (4, 0),
                                reason="Spark 3.5 (lts): its Spark Connect client has no Observation, "
                                       "which carries the scoring tasks' counters")


@dataclass(frozen=True)
class Runner:
    """Runs the score job on one kind of session: `classic` (in this process, on `spark`) or
    `connect` (a `--remote url` subprocess)."""

    kind: str
    spark: Any
    url: str
    job_file: str

    def args(self, *overrides: str) -> list[str]:
        return ["--config", self.job_file, "--quiet", *(a for o in overrides for a in ("--set", o))]

    def command(self, *overrides: str, fault: str | None = None) -> list[str]:
        """The Connect job's command line (`fault`: through tests/support/fault_launcher.py)."""
        entry = ["tests.support.fault_launcher", fault] if fault else ["batchscore", "score"]
        return [sys.executable, "-m", *entry, "--remote", self.url, *self.args(*overrides)]

    def run(self, *overrides: str, fault: str | None = None) -> tuple[int, str, str]:
        """The job's exit code, stdout and stderr."""
        if self.kind == "classic":
            assert fault is None, "faults run in their own application: tests/scoring/test_output_integrity.py"
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(self.args(*overrides), spark=self.spark)
            return code, out.getvalue(), err.getvalue()
        proc = subprocess.run(self.command(*overrides, fault=fault), cwd=PROJECT_ROOT, env=ENV, capture_output=True,
                              text=True, timeout=300, check=False)
        return proc.returncode, proc.stdout, proc.stderr

    def score(self, input_path: str, model: str, output: str, *overrides: str, fault: str | None = None
              ) -> RunManifest:
        """A run that must succeed; its manifest as written beside the output."""
        code, _, err = self.run(f"input.path={input_path}", f"model.path={model}", f"output.path={output}",
                                *overrides, fault=fault)
        assert code == 0, err[-3000:]
        return RunManifest.from_dict(rs.read_manifest(output))


def make_runner(kind: str, spark: Any, url: str, folder: Path) -> Runner:
    job_file = folder / "job.yaml"
    job_file.write_text("output:\n  keep_columns: [id]\n")
    return Runner(kind, spark if kind == "classic" else None, url, str(job_file))


@pytest.fixture(scope="module")
def job_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("connect_jobs")


@pytest.fixture(scope="module", params=["classic", "connect"])
def runner(request: pytest.FixtureRequest, spark: Any, connect_server: str, job_folder: Path) -> Runner:
    """The score job on the tests' classic session, then on the local Connect server."""
    return make_runner(request.param, spark, connect_server, job_folder)


# --- the end-to-end cases, on both kinds of session ---


def test_demo_model_scores_like_bare_tensorflow(runner: Runner, demo_input: str, demo_model: str,
                                                demo_table: pa.Table, demo_reference: np.ndarray,
                                                tmp_path: Path) -> None:
    out = str(tmp_path / "predictions")
    manifest = runner.score(demo_input, demo_model, out, DEMO_COLUMNS, "model.batch_size=100")
    table = support.read_output(out)
    assert table.column_names == ["id", "output_0"]
    assert_demo_predictions(table, demo_reference, demo_table.column("id").to_numpy())
    assert manifest.status == "succeeded"
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (len(demo_table),) * 2 + (0,)
    assert manifest.model.path == os.path.abspath(demo_model)
    assert manifest.spark.master == "local[2]"
    assert 0 <= manifest.model_loads <= manifest.python_workers
    assert 0 < manifest.max_rows_per_call <= 100
    assert os.path.exists(os.path.join(out, "_SUCCESS"))


@pytest.mark.parametrize("lane", ["dataframe", "arrow"])
def test_multi_input_multi_output_model_scores_like_bare_tensorflow(runner: Runner, multi_model: str,
                                                                     multi_table: pa.Table, tmp_path: Path,
                                                                     lane: str) -> None:
    in_path = support.write_parquet(multi_table, str(tmp_path / "in"), files=3)
    out = str(tmp_path / "out")
    manifest = runner.score(in_path, multi_model, out, *MULTI_COLUMNS, "model.batch_size=64", f"input.lane={lane}")
    assert manifest.lane == lane
    table = support.read_output(out)
    assert table.column_names == ["id", *sorted(support.MULTI_OUTPUTS)]
    np.testing.assert_array_equal(table.column("id").to_numpy(), multi_table.column("id").to_numpy())
    expected = support.tf_predict(multi_model, support.multi_inputs(multi_table))
    for name in ("score", "embedding", "grid"):
        assert support.max_abs_diff(table.column(name).to_pylist(), expected[name]) <= TOL, name
    assert table.column("label").to_pylist() == [s.decode() for s in expected["label"]]
    np.testing.assert_array_equal(table.column("doubled").to_numpy(), expected["doubled"])
    assert manifest.rows_in == manifest.rows_scored == multi_table.num_rows
    assert 0 < manifest.max_rows_per_call <= 64


def test_every_row_lands_once_in_output_or_quarantine(runner: Runner, multi_model: str, tmp_path: Path) -> None:
    table = support.multi_table(120, seed=4)
    pixels, f1 = table.column("pixels").to_pylist(), table.column("f1").to_numpy().copy()
    pixels[7] = None
    pixels[50] = pixels[50][:100]
    f1[99] = np.inf
    table = table.set_column(1, "pixels", pa.array(pixels, pa.list_(pa.float32()))).set_column(3, "f1", pa.array(f1))
    in_path = support.write_parquet(table, str(tmp_path / "in"), files=2)
    out = str(tmp_path / "out")
    manifest = runner.score(in_path, multi_model, out, *MULTI_COLUMNS, "model.batch_size=16")

    bad = {7: "null_feature", 50: "bad_shape", 99: "non_finite"}
    good = np.array([i for i in range(120) if i not in bad])
    scored = support.read_output(out)
    np.testing.assert_array_equal(scored.column("id").to_numpy(), good)
    expected = support.tf_predict(multi_model, support.multi_inputs(table.take(good)))
    assert support.max_abs_diff(scored.column("score").to_numpy(), expected["score"]) <= TOL
    assert manifest.output.quarantine_path is not None
    q = support.read_output(manifest.output.quarantine_path.removeprefix("file:"))
    assert dict(zip(q.column("id").to_pylist(), q.column("reason").to_pylist(), strict=True)) == bad
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (120, 117, 3)
    assert manifest.quarantine_reasons == {"bad_shape": 1, "non_finite": 1, "null_feature": 1}


def _data_files(root: str) -> dict[str, dict[str, str]]:
    """File hashes per partition directory, data files only."""
    out: dict[str, dict[str, str]] = {}
    for rel, digest in rs.tree_hashes(root).items():
        parts = rel.split("/")
        if len(parts) > 1 and not parts[-1].startswith((".", "_")):
            out.setdefault(parts[0], {})[rel] = digest
    return out


def test_partition_by_with_overwrite_partitions(runner: Runner, demo_input: str, demo_model: str,
                                                demo_table: pa.Table, demo_reference: np.ndarray,
                                                tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    runner.score(demo_input, demo_model, out, DEMO_COLUMNS, "output.partition_by=[as_of_date]")
    before = _data_files(out)
    assert sorted(before) == [f"as_of_date={d}" for d in DATES]

    date = DATES[2]
    manifest = runner.score(demo_input, demo_model, out, DEMO_COLUMNS, "output.partition_by=[as_of_date]",
                            "output.mode=overwrite_partitions", f"input.filter=as_of_date = '{date}'")
    dates = np.asarray(demo_table.column("as_of_date").to_pylist())
    assert manifest.rows_in == manifest.rows_scored == int((dates == date).sum())
    after = _data_files(out)
    assert {k: v for k, v in after.items() if k != f"as_of_date={date}"} == {
        k: v for k, v in before.items() if k != f"as_of_date={date}"}, "a partition not rescored was touched"
    assert set(after[f"as_of_date={date}"]).isdisjoint(before[f"as_of_date={date}"]), "the partition was not replaced"
    table = support.read_output(out)
    assert_demo_predictions(table, demo_reference, demo_table.column("id").to_numpy())
    assert table.column("as_of_date").to_pylist() == demo_table.column("as_of_date").take(
        table.column("id")).to_pylist()


def test_delta_output(runner: Runner, spark: Any, demo_input: str, demo_model: str, demo_table: pa.Table,
                      demo_reference: np.ndarray, tmp_path: Path) -> None:
    if not any(Path(jars_folder()).glob("delta-spark_*.jar")):
        pytest.skip(f"no delta-spark jar under {jars_folder()} (run `make jars`): neither session has Delta")
    out = str(tmp_path / "scores")
    manifest = runner.score(demo_input, demo_model, out, DEMO_COLUMNS, "output.format=delta")
    assert manifest.output.format == "delta"
    assert (manifest.rows_in, manifest.rows_scored) == (len(demo_table), len(demo_table))
    table = compat.to_arrow(spark.read.format("delta").load(out).select("id", "output_0")).sort_by("id")
    assert_demo_predictions(table, demo_reference, demo_table.column("id").to_numpy())
    history = spark.sql(f"DESCRIBE HISTORY delta.`{out}`").collect()
    assert [(h["version"], h["operation"]) for h in history] == [(0, "WRITE")]


def test_s3a_and_hdfs_under_connect_are_not_run_here() -> None:
    pytest.skip("S3A and HDFS under Spark Connect need the endpoint (moto, the mini HDFS) in the server's conf "
                "when it starts; the shared test server has none. The classic runs: tests/storage/")


# --- the manifests of one config, run on both kinds of session ---

# Keys (section.key for the nested sections) that legitimately differ between two runs of one config.
EXCLUDED = {
    # timings
    "started_at", "finished_at", "seconds_total", "seconds_scoring", "seconds_by_phase", "rows_per_second",
    # ids: the run's; the Python workers' process ids key these (their counts and devices are compared below)
    "run_id", "workers", "devices",
    # memory of processes that are not the same processes
    "peak_worker_rss_mb",
    # paths: each run writes its own output
    "output.path", "output.quarantine_path", "output.data_path", "output.quarantine_data_path",
    # the JVM: the tests' own session, the server's session
    "spark.master", "spark.class_archive",
    # compared explicitly (test_manifests_agree_on_both_kinds_of_session)
    "planning.slots_source", "model_loads",
}
NESTED = ("model", "input", "output", "spark", "planning")


def flat(manifest: RunManifest) -> dict[str, Any]:
    """The manifest's JSON keys, the nested sections' as `section.key`."""
    data = json.loads(manifest.to_json())
    out = {k: v for k, v in data.items() if k not in NESTED}
    out.update({f"{s}.{k}": v for s in NESTED for k, v in data[s].items()})
    return out


@pytest.fixture(scope="module")
def twin_runs(spark: Any, connect_server: str, job_folder: Path, demo_input: str, demo_model: str,
              tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[RunManifest, pa.Table]]:
    """Per (lane, kind): the manifest and output of one demo config. A model copy no worker has
    loaded yet; the arrow runs first (each kind's workers load it), then the dataframe runs."""
    root = tmp_path_factory.mktemp("twins")
    model = support.fresh_copy(demo_model, str(root))
    runs = {}
    for lane in ("arrow", "dataframe"):
        for kind in ("connect", "classic"):
            out = str(root / f"{lane}_{kind}")
            manifest = make_runner(kind, spark, connect_server, job_folder).score(
                demo_input, model, out, DEMO_COLUMNS, f"input.lane={lane}", "model.batch_size=256")
            assert manifest.output.path == f"file:{out}"
            runs[lane, kind] = manifest, support.read_output(out)
    return runs


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_manifests_agree_on_both_kinds_of_session(twin_runs: dict[tuple[str, str], tuple[RunManifest, pa.Table]],
                                                   lane: str) -> None:
    (classic, classic_out), (connect, connect_out) = twin_runs[lane, "classic"], twin_runs[lane, "connect"]
    assert connect_out.equals(classic_out)  # the same rows, the same float bits
    a, b = flat(classic), flat(connect)
    assert set(a) == set(b) and EXCLUDED <= set(a)
    differing = {k: (a[k], b[k]) for k in a if k not in EXCLUDED and a[k] != b[k]}
    if lane == "dataframe":
        # A client cannot see the input's partitions: Spark's own split is kept, and the manifest says
        # so (0: not counted); the classic session counted them, and kept its split too.
        assert {k: v[1] for k, v in differing.items()} == {
            "planning.input_partitions": 0, "planning.tasks": 0,
            "planning.reason": "input partitions not known to a Spark Connect client: Spark's own split kept"}
        assert a["planning.input_partitions"] == a["planning.tasks"] >= 1 and a["planning.rebalanced"] is False
        differing = {}
    assert differing == {}, differing
    assert (connect.rows_in, connect.rows_scored, connect.lane) == (1200, 1200, lane)  # not equal by being empty
    assert connect.model_calls > 0 and classic.planning.tasks

    # Each kind's own: the slots a client cannot count from executors come from default parallelism.
    assert (classic.planning.slots_source, connect.planning.slots_source) == ("executors", "default_parallelism")
    for m in (classic, connect):
        assert len(m.workers) == m.python_workers
        assert sorted(m.devices.values()) == ["CPU:0"] * m.python_workers
        assert m.spark.master == "local[2]"
    # The arrow runs loaded the new model once per worker; the dataframe runs found it loaded,
    # on the server too: a second client run loads it 0 times.
    loads = {"arrow": (classic.python_workers, connect.python_workers), "dataframe": (0, 0)}[lane]
    assert (classic.model_loads, connect.model_loads) == loads


# --- the Python API on a Connect session, against Spark's predict_batch_udf on the same session ---

API_CLIENT = textwrap.dedent("""
    import json, sys
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession, functions as F
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType
    import batchscore

    url, path, model = sys.argv[1:4]
    spark = SparkSession.builder.remote(url).getOrCreate()
    df = spark.read.parquet(path)
    numeric = ["f0", "f1", "f2", "f3"]
    stats = batchscore.TaskStats()
    frame = batchscore.score_dataframe(df, model, columns={"image": "pixels", "numeric": numeric, "category": "cat",
                                       "count": "n"}, keep=["id"], batch_size=50, bad_rows="drop", stats=stats)
    ours = batchscore.predict_udf(model, batch_size=50)

    def make_predict_fn():
        import tensorflow as tf
        fn = tf.saved_model.load(model).signatures["serving_default"]
        def predict(category, count, image, numeric):
            out = fn(category=tf.constant(category), count=tf.constant(count), image=tf.constant(image),
                     numeric=tf.constant(numeric))
            return {k: out[k].numpy() for k in ("score", "embedding", "doubled")}
        return predict

    ret = StructType([StructField("score", FloatType()), StructField("embedding", ArrayType(FloatType())),
                      StructField("doubled", LongType())])
    theirs = predict_batch_udf(make_predict_fn, return_type=ret, batch_size=64,
                               input_tensor_shapes=[None, None, [8, 8, 3], [4]])
    stacked = F.array(*[F.col(c).cast("float") for c in numeric])
    rows = df.select("id", ours(image="pixels", numeric=numeric, category="cat", count="n").alias("ours"),
                     theirs("cat", "n", "pixels", stacked).alias("theirs")).collect()
    pick = lambda s: [s["score"], list(s["embedding"]), s["doubled"]]
    print(json.dumps({
        "session": type(spark).__module__,
        "score_dataframe": {r["id"]: pick(r) for r in frame.collect()},
        "predict_udf": {r["id"]: pick(r["ours"]) for r in rows},
        "predict_batch_udf": {r["id"]: pick(r["theirs"]) for r in rows},
        "stats": stats.value,
    }))
    spark.stop()
""")


def test_python_api_on_connect_equals_predict_batch_udf(connect_server: str, multi_model: str,
                                                        multi_table: pa.Table, tmp_path: Path) -> None:
    in_path = support.write_parquet(multi_table, str(tmp_path / "in"), files=3)
    proc = subprocess.run([sys.executable, "-c", API_CLIENT, connect_server, in_path, multi_model], cwd=PROJECT_ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["session"] == "pyspark.sql.connect.session"
    ids = [str(i) for i in multi_table.column("id").to_pylist()]
    bare = support.tf_predict(multi_model, support.multi_inputs(multi_table))
    spark_rows = [got["predict_batch_udf"][i] for i in ids]
    for api in ("score_dataframe", "predict_udf"):
        assert sorted(got[api], key=int) == ids, api
        rows = [got[api][i] for i in ids]
        for j, name in enumerate(("score", "embedding", "doubled")):
            assert support.max_abs_diff([r[j] for r in rows], [r[j] for r in spark_rows]) <= TOL, (api, name)
            assert support.max_abs_diff([r[j] for r in rows], bare[name]) <= TOL, (api, name)
    stats = got["stats"]
    assert (stats["rows"], stats.get("rows_bad", 0)) == (multi_table.num_rows, 0)
    assert stats["max_call_rows"] <= 50


# --- faults under Connect: a task retried, a client killed ---


@dataclass(frozen=True)
class RetryServer:
    url: str
    events: str  # the server application's Spark event log folder
    log: str  # the server's log: its Python workers' stderr


@pytest.fixture(scope="module")
def retry_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second local Connect server whose tasks are retried (`local[2,3]`), with an event log."""
    from batchscore.session import connect_server as server

    folder = tmp_path_factory.mktemp("retry_server")
    events = folder / "events"
    events.mkdir()
    port = server.free_port()
    url = server.start(port, master="local[2,3]", folder=str(folder), conf={
        "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": f"file://{events}", "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false"})
    try:
        state = server.status(port, folder=str(folder))
        assert state is not None
        yield RetryServer(url, str(events), state.log)
    finally:
        server.stop(port, folder=str(folder))


def _fault_input(tmp_path: Path) -> tuple[str, pa.Table]:
    """400 rows in 4 files of 2 row groups (tests/scoring/test_output_integrity.py's fault input)."""
    table = rs.rel_table(400, seed=21)
    return rs.write_files(table, str(tmp_path / "in"), files=4, row_group_size=50), table


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_task_failing_after_its_stats_row_is_retried_and_counts_once(retry_server: RetryServer, job_folder: Path,
                                                                     rel_model: str, tmp_path: Path,
                                                                     lane: str) -> None:
    in_path, table = _fault_input(tmp_path)
    model = support.fresh_copy(rel_model, str(tmp_path))  # loaded by no worker of the server yet
    out = str(tmp_path / "out")
    seen = len(task_events(retry_server.events)) if event_files(retry_server.events) else 0
    message = "fault_launcher: exit after the stats row of partition 0"
    fired = Path(retry_server.log).read_text(errors="replace").count(message)
    # one row per model call: the exact number of calls does not depend on how rows fall into tasks
    manifest = make_runner("connect", None, retry_server.url, job_folder).score(
        in_path, model, out, *rs.REL_COLUMNS, "model.batch_size=1", f"input.lane={lane}",
        fault="exit-after-stats:0")

    assert Path(retry_server.log).read_text(errors="replace").count(message) == fired + 1  # in the server's worker
    tasks = task_events(retry_server.events)[seen:]
    crashed = [t for t in tasks if t["failed"] and t["index"] == 0 and t["attempt"] == 0]
    assert len(crashed) == 1, f"the injected worker exit did not happen once: {tasks}"
    assert any(t["stage"] == crashed[0]["stage"] and t["index"] == 0 and t["attempt"] >= 1
               and t["reason"] == "Success" for t in tasks), tasks

    rs.assert_scored_like_tf(model, support.read_output(out), table)  # every id once
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined, manifest.lane) == (400, 400, 0, lane)
    assert (manifest.model_calls, manifest.max_rows_per_call) == (400, 1)  # each row's call counted once
    assert manifest.model_loads == manifest.python_workers >= 1  # once per worker: the dead attempt's not counted


def _wait_for_staged_rows(out: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> str:
    """The staging directory of the run writing `out`, once a task has written a data file into it."""
    parent, name = os.path.split(out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for staging in (n for n in os.listdir(parent) if n.startswith(f".{name}.bs-staging-")):
            for _, _, files in os.walk(os.path.join(parent, staging)):
                if any(f.endswith(".parquet") for f in files):
                    return staging
        time.sleep(0.2)
    raise AssertionError(f"no staged data file under {parent} (job exit code {proc.poll()})")


def test_a_client_killed_mid_run_leaves_nothing_half_written(retry_server: RetryServer, job_folder: Path,
                                                            rel_model: str, tmp_path: Path) -> None:
    in_path, table = _fault_input(tmp_path)
    out = str(tmp_path / "out")
    runner = make_runner("connect", None, retry_server.url, job_folder)
    overrides = (f"input.path={in_path}", f"model.path={rel_model}", f"output.path={out}", *rs.REL_COLUMNS,
                 "model.batch_size=32")
    with open(tmp_path / "client.log", "wb") as log:
        # partition 0 sleeps after its first batch: the client is killed while the server writes its rows
        client = subprocess.Popen(runner.command(*overrides, fault="sleep:0:10"), cwd=PROJECT_ROOT, env=ENV,
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            staging = _wait_for_staged_rows(out, client)
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(30)
    assert client.returncode == -signal.SIGKILL

    # Nothing published: no output, no quarantine; what the run staged is a hidden sibling readers skip.
    assert not os.path.exists(out) and not os.path.exists(out + "_quarantine")
    assert staging in rs.hidden_siblings(out)

    # The next run succeeds and publishes exactly its own rows.
    manifest = runner.score(in_path, rel_model, out, *overrides[3:])
    rs.assert_scored_like_tf(rel_model, support.read_output(out), table)
    assert (manifest.rows_in, manifest.rows_scored, manifest.status) == (400, 400, "succeeded")
    assert not staging.endswith(str(manifest.run_id))
