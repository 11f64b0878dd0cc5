"""Nothing half-written: atomic publish, partition overwrite, reruns, worker crashes and
speculation; and no secret from the Spark conf in the manifest, the logs or the event log.

In-process runs go through `run_scoring` with the shared session; the fault-injection
runs start the job in its own Spark application with another master, through
`python -m tests.support.fault_launcher`, which wraps the engine's scoring with the fault.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from batchscore.core.compat import spark_version
from batchscore.core.errors import BadRowsError, ConfigError, InputError, SchemaError
from batchscore.output.manifest import RunManifest
from batchscore.run.steps import run_scoring
from batchscore.udfs.model.signature import model_fingerprint
from tests import support
from tests.support import reliability as rs
from tests.support.reliability import (
    assert_scored_like_tf,
    config,
    corrupt_files,
    quarantine_rows,
    read_manifest,
    read_spark,
)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "SHOULD_NOT_LEAK_7f3a"


# --- nothing half-written ---


@pytest.fixture(params=["hadoop", "arrow"])
def driver_fs(request, monkeypatch) -> str:
    """The runs' driver filesystem: HadoopFs (a classic session's) or ArrowFs (what a Spark
    Connect client uses, batchscore/output/filesystem.py), both on this classic session."""
    if request.param == "arrow":
        from batchscore.output.arrow_fs import ArrowFs
        from batchscore.run import steps

        monkeypatch.setattr(steps, "filesystem_for", ArrowFs.for_session)
    return request.param


@pytest.fixture(scope="module")
def published(spark, rel_model, tmp_path_factory):
    """A good run's output and quarantine (two bad rows), to be copied and then failed over."""
    base = tmp_path_factory.mktemp("published")
    table = rs.set_cells(rs.set_cells(rs.rel_table(60), "b", {3: None}), "code", {50: "x"})
    in_path = rs.write_files(table, str(base / "in"), files=2)
    out = str(base / "out")
    manifest = run_scoring(spark, config(in_path, rel_model, out))
    assert manifest.rows_quarantined == 2
    return out


def _failing_input(case: str, path: str) -> tuple[str, list[str], type, str]:
    """(input path, overrides, exception type, message) of a run that must fail."""
    table = rs.rel_table(60, seed=9)
    if case == "bad_rows_with_fail":
        rs.write_files(rs.set_cells(table, "a", {17: float("nan")}), path, files=2)
        return path, ["quarantine.on_bad_rows=fail"], BadRowsError, "id=17"
    if case == "model_fails_every_row":
        rs.write_files(rs.set_cells(table, "code", dict.fromkeys(range(60), "zz")), path, files=2)
        return path, ["model.batch_size=16"], Exception, "zz"
    if case == "corrupt_input":
        rs.write_files(table, path, files=3)
        corrupt_files(path, rs.rel_table(5))
        return path, [], InputError, "cannot read input file"
    rs.write_files(table.drop_columns(["code"]), path, files=2)  # missing_column
    return path, [], SchemaError, "column 'code'"


@pytest.mark.parametrize("case", ["bad_rows_with_fail", "model_fails_every_row", "corrupt_input", "missing_column"])
def test_failed_overwrite_leaves_the_previous_output_byte_identical(spark, rel_model, published, tmp_path, case,
                                                                     driver_fs):
    out, q = str(tmp_path / "run" / "out"), str(tmp_path / "run" / "out_quarantine")
    shutil.copytree(published, out)
    shutil.copytree(published + "_quarantine", q)
    before, before_q = rs.tree_hashes(out), rs.tree_hashes(q)
    assert "_manifest.json" in before and "_SUCCESS" in before and before_q

    in_path, overrides, error, message = _failing_input(case, str(tmp_path / "in"))
    with pytest.raises(error, match=message):
        run_scoring(spark, config(in_path, rel_model, out, "output.mode=overwrite", *overrides))
    assert rs.tree_hashes(out) == before
    assert rs.tree_hashes(q) == before_q
    assert rs.hidden_siblings(out) == [], "staging or swap directories left behind"


def test_output_mode_error_refuses_an_existing_output(spark, rel_model, published, tmp_path):
    in_path = rs.write_files(rs.rel_table(10), str(tmp_path / "in"), files=1)
    before = rs.tree_hashes(published)
    with pytest.raises(ConfigError, match=r"exists and output.mode is 'error'"):
        run_scoring(spark, config(in_path, rel_model, published))
    assert rs.tree_hashes(published) == before


@pytest.mark.parametrize(("output", "quarantine", "overlaps"), [
    ("in/scores", None, "input.path"),
    ("in", None, "input.path"),
    ("model/scores", None, "model.path"),
    ("out", "in/bad_rows", "input.path"),
    ("out", "out/bad_rows", "output.path"),
])
def test_output_overlapping_input_or_model_is_refused(spark, rel_model, tmp_path, output, quarantine, overlaps):
    in_path = rs.write_files(rs.rel_table(10), str(tmp_path / "in"), files=1)
    model = str(tmp_path / "model")
    shutil.copytree(rel_model, model)
    before = rs.tree_hashes(str(tmp_path))
    extra = [f"quarantine.path={tmp_path / quarantine}"] if quarantine else []
    with pytest.raises(ConfigError, match=rf"overlaps {overlaps}"):
        run_scoring(spark, config(in_path, model, str(tmp_path / output), *extra))
    assert rs.tree_hashes(str(tmp_path)) == before


# --- partition overwrite and reruns ---

DATES = ["2026-01-31", "2026-02-28", "2026-03-31"]


def _write_dated(table: pa.Table, path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    ds.write_dataset(table, path, format="parquet", partitioning=["as_of_date"], partitioning_flavor="hive")


def _partition_hashes(root: str, prefix: str = "") -> dict[str, dict[str, str]]:
    """File hashes per `as_of_date=...` directory (under `prefix`), data files only."""
    out: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for rel, h in rs.tree_hashes(root).items():
        parts = rel.split("/")
        if rel.startswith(prefix) and not parts[-1].startswith((".", "_")):
            date = next(p for p in parts if p.startswith("as_of_date="))
            out[date][rel] = h
    return dict(out)


def test_overwrite_partitions_replaces_only_the_rescored_partition(spark, rel_model, tmp_path, driver_fs):
    table = rs.rel_table(60, dates=DATES)  # row i is in DATES[i % 3]
    table = rs.set_cells(rs.set_cells(table, "code", {0: "zz"}), "b", {1: float("nan")})  # Jan, Feb bad rows
    in_path, out = str(tmp_path / "in"), str(tmp_path / "out")
    q = out + "_quarantine"
    _write_dated(table, in_path)
    run_scoring(spark, config(in_path, rel_model, out, "output.partition_by=[as_of_date]"))
    hashes, q_hashes = _partition_hashes(out), _partition_hashes(q)
    assert sorted(hashes) == [f"as_of_date={d}" for d in DATES]
    assert sorted(q_hashes) == ["as_of_date=2026-01-31", "as_of_date=2026-02-28"]

    # February is restated: its bad row fixed, every feature changed. Rescore February only.
    feb = pc.equal(table.column("as_of_date"), "2026-02-28")
    c = pc.if_else(feb, pc.add(table.column("c"), 1.5), table.column("c"))
    restated = rs.set_cells(table.set_column(table.schema.get_field_index("c"), "c", c), "b", {1: 0.25})
    _write_dated(restated, in_path)
    manifest = run_scoring(spark, config(in_path, rel_model, out, "output.partition_by=[as_of_date]",
                                         "output.mode=overwrite_partitions", "input.filter=as_of_date = '2026-02-28'"))
    assert (manifest.rows_in, manifest.rows_quarantined) == (20, 0)

    after, q_after = _partition_hashes(out), _partition_hashes(q)
    for d in ("as_of_date=2026-01-31", "as_of_date=2026-03-31"):
        assert after[d] == hashes[d], f"{d} was touched"
    assert q_after == {"as_of_date=2026-01-31": q_hashes["as_of_date=2026-01-31"]}, "stale February quarantine"
    assert set(after["as_of_date=2026-02-28"]).isdisjoint(hashes["as_of_date=2026-02-28"])

    scored, bad = read_spark(spark, out), read_spark(spark, q)
    assert bad.column("id").to_pylist() == [0]
    assert sorted([*scored.column("id").to_pylist(), 0]) == list(range(60)), "a row is missing or twice"
    feb_ids = np.arange(1, 60, 3)
    feb_out = scored.filter(pc.is_in(scored.column("id"), pa.array(feb_ids)))
    assert_scored_like_tf(rel_model, feb_out, restated.take(feb_ids))

    # Rescoring a date with no rows at all leaves every partition as it was.
    before = rs.tree_hashes(out)
    manifest = run_scoring(spark, config(in_path, rel_model, out, "output.partition_by=[as_of_date]",
                                         "output.mode=overwrite_partitions", "input.filter=as_of_date = '2027-01-31'"))
    assert manifest.rows_in == 0
    assert _partition_hashes(out) == after
    assert {k: v for k, v in rs.tree_hashes(out).items() if "_manifest" not in k and "_SUCCESS" not in k} == {
        k: v for k, v in before.items() if "_manifest" not in k and "_SUCCESS" not in k}
    assert _partition_hashes(q) == q_after


def test_rerun_gives_identical_rows_and_values(spark, rel_model, tmp_path, driver_fs):
    table = rs.set_cells(rs.set_cells(rs.rel_table(120, seed=3), "a", {5: None}), "code", {77: "?"})
    in_path = rs.write_files(table, str(tmp_path / "in"), files=3)
    out = str(tmp_path / "out")
    first = run_scoring(spark, config(in_path, rel_model, out))
    first_out, first_q = read_spark(spark, out), read_spark(spark, out + "_quarantine")
    second = run_scoring(spark, config(in_path, rel_model, out, "output.mode=overwrite"))
    assert read_spark(spark, out).equals(first_out)  # exact: same rows, same float bits
    assert read_spark(spark, out + "_quarantine").equals(first_q)
    assert first_out.num_rows == 118 and quarantine_rows(first_q) == {5: ("null_feature", "a"), 77: ("model_error", "_")}
    assert second.run_id != first.run_id
    assert second.model.fingerprint == first.model.fingerprint == model_fingerprint(rel_model)
    assert read_manifest(out)["run_id"] == second.run_id
    # Hadoop's local filesystem writes a checksum beside each file it writes; pyarrow does not
    assert os.path.exists(os.path.join(out, "._manifest.json.crc")) == (driver_fs == "hadoop")


# --- faults survived: worker crashes and speculation, in their own Spark applications ---


def run_job(tmp_path, overrides: list[str], fault: str | None, *, timeout: int = 600) -> subprocess.CompletedProcess:
    """The scoring job in a subprocess (`python -m tests.support.fault_launcher`), with `fault` injected, or
    plain `python -m jobs.score` without one."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("spark:\n  spark.ui.enabled: false\n  spark.eventLog.compress: false\n"
                   "  spark.eventLog.rolling.enabled: false\n")
    launcher = ["tests.support.fault_launcher", fault] if fault else ["jobs.score"]
    cmd = [sys.executable, "-m", *launcher, "--config", str(cfg), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def task_events(event_dir: str, event: str = "SparkListenerTaskEnd") -> list[dict]:
    """Task end (or start) events of the run's Spark event log: stage, partition index, attempt,
    speculative, host, result."""
    tasks = []
    for path in event_files(event_dir):
        for line in read_event_file(path).splitlines():
            e = json.loads(line)
            if e["Event"] == event:
                info = e["Task Info"]
                tasks.append({"stage": e["Stage ID"], "index": info["Index"], "attempt": info["Attempt"],
                              "speculative": info["Speculative"], "host": info["Host"],
                              "reason": e.get("Task End Reason", {}).get("Reason"), "failed": info["Failed"]})
    assert tasks, f"no task events under {event_dir}"
    return tasks


def event_files(event_dir: str) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(event_dir) for n in names
            if n.startswith(("app-", "local-", "events_", "eventlog")) and not n.endswith(".crc")]


def read_event_file(path: str) -> str:
    """One Spark event log file as text (rolled and zstd-compressed logs too)."""
    if path.endswith(".zstd"):
        with pa.OSFile(path) as raw, pa.CompressedInputStream(raw, "zstd") as f:
            return f.read().decode()
    with open(path) as fh:
        return fh.read()


def fault_input(tmp_path) -> tuple[str, pa.Table]:
    """400 rows in 4 files of 2 row groups: several Arrow batches per task, one task per file."""
    table = rs.rel_table(400, seed=21)
    return rs.write_files(table, str(tmp_path / "in"), files=4, row_group_size=50), table


def job_overrides(in_path: str, model: str, out: str, event_dir: str, master: str) -> list[str]:
    os.makedirs(event_dir, exist_ok=True)
    return [f"input.path={in_path}", f"model.path={model}", f"output.path={out}", *rs.REL_COLUMNS,
            "output.keep_columns=[id]", "model.batch_size=32", f"spark.spark.master={master}",
            "spark.spark.eventLog.enabled=true", f"spark.spark.eventLog.dir=file://{event_dir}",
            f"spark.spark.hadoop.fs.s3a.secret.key={SECRET}", f"spark.spark.hadoop.fs.s3a.access.key=AK{SECRET}"]


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])  # the fault wraps the scoring both lanes' tasks run
def test_worker_killed_mid_task_with_retries_every_row_exactly_once(rel_model, tmp_path, lane):
    in_path, table = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    proc = run_job(tmp_path, [*job_overrides(in_path, rel_model, out, events, "local[2,4]"), f"input.lane={lane}"],
                   "exit:0")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The fault fired: partition 0 of the scoring stage failed once, then succeeded on attempt 1.
    tasks = task_events(events)
    crashed = [t for t in tasks if t["failed"] and t["index"] == 0 and t["attempt"] == 0]
    assert crashed, f"the injected worker crash did not happen: {tasks}"
    stage = crashed[0]["stage"]
    assert any(t["stage"] == stage and t["index"] == 0 and t["attempt"] >= 1 and t["reason"] == "Success" for t in tasks)

    scored = support.read_output(out)
    assert_scored_like_tf(rel_model, scored, table)  # every id once, no more, no fewer
    manifest = RunManifest.from_dict(read_manifest(out))
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined, manifest.lane) == (400, 400, 0, lane)

    # Secrets from the Spark conf appear nowhere: manifest, stdout, stderr, Spark's event log.
    with open(os.path.join(out, "_manifest.json")) as fh:
        assert SECRET not in fh.read()
    assert SECRET not in proc.stdout + proc.stderr
    for path in event_files(events):
        assert SECRET not in read_event_file(path)


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_task_failing_after_its_stats_row_counts_once(rel_model, tmp_path, lane):
    """A task's counters travel as its output's last row (udfs/lanes/stats.py): an attempt that dies
    after sending it (and a thousand copies) is retried, and only the accepted attempt counts."""
    in_path, table = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    # one row per model call: the exact number of calls does not depend on how rows fall into tasks
    overrides = [*job_overrides(in_path, rel_model, out, events, "local[2,3]"), f"input.lane={lane}",
                 "model.batch_size=1"]
    proc = run_job(tmp_path, overrides, "exit-after-stats:0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    if spark_version() >= (4, 0):  # Spark 3.5's Python workers' stderr does not reach the job's here
        assert proc.stderr.count("fault_launcher: exit after the stats row of partition 0") == 1, proc.stderr[-3000:]
    tasks = task_events(events)  # the event log: attempt 0 of partition 0 crashed, a later one succeeded
    crashed = [t for t in tasks if t["failed"] and t["index"] == 0 and t["attempt"] == 0]
    assert crashed, f"the injected worker exit did not happen: {tasks}"
    assert any(t["stage"] == crashed[0]["stage"] and t["index"] == 0 and t["attempt"] >= 1
               and t["reason"] == "Success" for t in tasks)

    assert_scored_like_tf(rel_model, support.read_output(out), table)  # every id once
    manifest = RunManifest.from_dict(read_manifest(out))
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined, manifest.lane) == (400, 400, 0, lane)
    assert (manifest.model_calls, manifest.max_rows_per_call) == (400, 1)  # each row's call counted once
    assert manifest.model_loads == manifest.python_workers >= 1  # once per worker: the dead attempt's not counted


def test_worker_killed_without_retries_fails_clearly_and_keeps_the_previous_output(rel_model, published, tmp_path):
    in_path, _ = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    shutil.copytree(published, out)  # yesterday's good output
    shutil.copytree(published + "_quarantine", out + "_quarantine")
    before, before_q = rs.tree_hashes(out), rs.tree_hashes(out + "_quarantine")

    proc = run_job(tmp_path, [*job_overrides(in_path, rel_model, out, events, "local[2]"), "output.mode=overwrite"],
                   "exit:0")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Job aborted due to stage failure" in errors[0] and "Python worker exited unexpectedly" in errors[0], errors[0]
    assert SECRET not in proc.stdout + proc.stderr
    assert any(t["failed"] and t["index"] == 0 for t in task_events(events)), "the injected crash did not happen"

    assert rs.tree_hashes(out) == before
    assert rs.tree_hashes(out + "_quarantine") == before_q
    assert rs.hidden_siblings(out) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_host_cluster(tmp_path):
    """A standalone master and two 1-core workers on different loopback addresses.

    Spark never launches a speculative copy on a host where the task already ran,
    and every executor of `local[...]` or `local-cluster[...]` is on one host, so
    speculation needs executors on two "hosts": 127.0.0.1 and 127.0.0.2.
    """
    import pyspark

    spark_home = os.path.dirname(pyspark.__file__)
    spark_class = os.path.join(spark_home, "bin", "spark-class")
    port = _free_port()
    env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_NO_DAEMONIZE": "1", "PYTHONPATH": PROJECT_ROOT}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    logs = tmp_path / "cluster"
    logs.mkdir()
    procs, files = [], []

    def start(name: str, args: list[str], host: str) -> None:
        files.append(open(logs / f"{name}.log", "w"))
        procs.append(subprocess.Popen([spark_class, *args], env={**env, "SPARK_LOCAL_IP": host},
                                      stdout=files[-1], stderr=subprocess.STDOUT))

    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(_free_port())], "127.0.0.1")
        for i, host in enumerate(["127.0.0.1", "127.0.0.2"]):
            (logs / f"work{i}").mkdir()
            start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", host, "--cores", "1",
                                 "--memory", "1g", "--webui-port", str(_free_port()),
                                 "--work-dir", str(logs / f"work{i}"), f"spark://127.0.0.1:{port}"], host)
        deadline = time.monotonic() + 240
        while not all("Successfully registered with master" in (logs / f"worker{i}.log").read_text() for i in range(2)):
            assert all(p.poll() is None for p in procs), "a standalone daemon exited"
            assert time.monotonic() < deadline, "standalone workers did not register"
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in files:
            f.close()


def test_speculative_copy_of_a_slow_task_writes_no_duplicates(rel_model, two_host_cluster, tmp_path):
    in_path, table = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    overrides = [
        *job_overrides(in_path, rel_model, out, events, two_host_cluster),
        "spark.spark.speculation=true", "spark.spark.speculation.multiplier=1.5",
        "spark.spark.speculation.quantile=0.25", "spark.spark.speculation.minTaskRuntime=100ms",
        "spark.spark.speculation.interval=100ms", "spark.spark.executor.cores=1", "spark.spark.cores.max=2",
        "spark.spark.executor.memory=512m", "spark.spark.driver.host=127.0.0.1",
        f"spark.spark.executorEnv.PYTHONPATH={PROJECT_ROOT}",
    ]
    proc = run_job(tmp_path, overrides, "sleep:0:8")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Spark did launch a speculative copy of the slow partition, on the other host.
    tasks = task_events(events)
    speculative = [t for t in tasks if t["speculative"] and t["index"] == 0]
    assert speculative, f"no speculative attempt was launched: {tasks}"
    spec = speculative[0]
    started = task_events(events, "SparkListenerTaskStart")
    original = [t for t in started if t["stage"] == spec["stage"] and t["index"] == 0 and not t["speculative"]]
    assert original and original[0]["host"] != spec["host"], started

    scored = support.read_output(out)
    assert_scored_like_tf(rel_model, scored, table)  # each id exactly once despite two attempts
    assert read_manifest(out)["rows_in"] == read_manifest(out)["rows_scored"] == 400
