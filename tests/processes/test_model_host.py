"""`model.sharing: executor`: one model host process per executor serves every Python worker
(udfs/host/model_host.py, udfs/host/client.py, udfs/host/protocol.py)."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import ml_dtypes
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore import package_root
from batchscore.core.errors import ConfigError, ModelUnavailable
from batchscore.demo_data import NUMERIC
from batchscore.output.manifest import RunManifest
from batchscore.run.steps import run_scoring
from batchscore.udfs.host import client as host_client
from batchscore.udfs.host import protocol as host_protocol
from batchscore.udfs.host.model_host import RequestBatcher
from tests import support

PROJECT_ROOT = package_root()
NUMERIC_COLUMNS = "input.columns={numeric: [" + ", ".join(NUMERIC) + "]}"
# Rows of different workers may share a host's model call, so a row meets other rows in
# its batch than under sharing: worker; float32 matmuls may then round in the last bit.
FLOAT_TOL = 1e-6


# --- the wire format and the request batching (no Spark) ---


def test_protocol_round_trip_keeps_values_dtypes_and_shapes() -> None:
    rng = np.random.default_rng(1)
    n = 7
    arrays: dict[str, np.ndarray] = {
        "image": rng.random((n, 4, 4, 3), dtype=np.float32),
        "ids": rng.integers(-5, 5, n).astype(np.int64),
        "flags": rng.random((n, 2)) > 0.5,
        "half": rng.random((n, 3)).astype(np.float16),
        "bf16": rng.random((n, 2)).astype(ml_dtypes.bfloat16),  # no Arrow type: raw bytes
        "text": np.asarray([f"t{i}" for i in range(n)], dtype=object),
        "blob": np.asarray([bytes([i]) * i for i in range(n)], dtype=object).reshape(n, 1),
    }
    got, fields = host_protocol.decode(host_protocol.encode(arrays, {"op": "predict", "x": "1"}))
    assert fields == {"op": "predict", "x": "1"}
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert got[k].tolist() == v.tolist(), k
    assert host_protocol.decode(host_protocol.encode({}, {"op": "hello"})) == ({}, {"op": "hello"})


def _doubling_model(calls: list[int]):
    """A numpy model: out = 2 * x; raises on a negative input (a row it rejects)."""

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if (inputs["x"] < 0).any():
            raise ValueError("negative input")
        return {"y": inputs["x"] * 2.0}

    return predict


def test_batcher_joins_concurrent_requests_into_one_call_and_returns_each_its_rows() -> None:
    calls: list[int] = []
    batcher = RequestBatcher(_doubling_model(calls), batch_size=100, wait_s=2.0)
    threading.Thread(target=batcher.run, daemon=True).start()
    a, b = np.arange(30, dtype=np.float32)[:, None], np.arange(100, 140, dtype=np.float32)[:, None]
    got: dict[str, np.ndarray] = {}

    def client(name: str, x: np.ndarray) -> None:
        got[name] = batcher.submit({"x": x})["y"]

    threads = [threading.Thread(target=client, args=(n, x)) for n, x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert calls == [70]  # one model call served both (the second arrived within the wait)
    np.testing.assert_array_equal(got["a"], a * 2)
    np.testing.assert_array_equal(got["b"], b * 2)

    calls.clear()  # larger than batch_size: scored in batch-size chunks, in order
    big = np.arange(250, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(batcher.submit({"x": big})["y"], big * 2)
    assert calls == [100, 100, 50]


def test_batcher_gives_a_rejected_request_its_own_error_and_serves_the_other() -> None:
    calls: list[int] = []
    batcher = RequestBatcher(_doubling_model(calls), batch_size=100, wait_s=2.0)
    threading.Thread(target=batcher.run, daemon=True).start()
    results: dict[str, object] = {}

    def client(name: str, x: np.ndarray) -> None:
        try:
            results[name] = batcher.submit({"x": x})["y"]
        except RuntimeError as e:
            results[name] = e

    good, bad = np.ones((5, 1), np.float32), -np.ones((3, 1), np.float32)
    threads = [threading.Thread(target=client, args=a) for a in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    np.testing.assert_array_equal(results["good"], good * 2)
    assert isinstance(results["bad"], RuntimeError) and "negative input" in str(results["bad"])
    assert calls[0] == 8 and sorted(calls[1:]) == [3, 5]  # joined, rejected, then one by one


# --- a real host process, no Spark ---


@pytest.fixture
def host_dir(monkeypatch):
    """A short private folder for the hosts' files (AF_UNIX paths stay under ~107 bytes)."""
    folder = tempfile.mkdtemp(prefix="bsh-", dir="/tmp")
    monkeypatch.setenv(host_client.HOST_DIR_ENV, folder)
    yield folder
    for pid in _host_pids(folder):  # a failed test leaves none behind
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


def _host_pids(folder: str) -> list[int]:
    """Live model host processes whose socket is under `folder`: started fresh (from the process
    list) or forked from a worker (from their pid files)."""
    pids = host_client.live_host_pids(folder)
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as fh:
                args = fh.read().split(b"\0")
        except OSError:
            continue
        if b"batchscore.udfs.host.model_host" in args and any(a.startswith(folder.encode()) for a in args):
            pids.append(int(cmdline.split("/")[2]))
    return sorted(set(pids))


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive after waiting up to `seconds` for them to end."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def test_host_serves_two_connections_their_own_rows_restarts_and_ends_with_its_executor(
        host_dir, monkeypatch, demo_model, demo_table, demo_reference) -> None:
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{host_dir}/blockmgr-test")  # this "executor"
    executor = subprocess.Popen(["sleep", "600"])  # stands in for the PySpark daemon the host watches
    try:
        connect: dict[str, Any] = dict(model_path=lambda: demo_model, fingerprint="fp-host-test", signature="serving_default",
                       batch_size=64, wait_ms=20, cores=1, gpus=[], watch=executor.pid)
        first = host_client.connect(**connect)
        assert first.started_here and first.fields["loads"] == "1" and first.fields["host_id"].endswith("/1")
        second = host_client._try_connect(first.files)  # another worker's connection to the same host
        assert second is not None and second.fields["pid"] == first.fields["pid"]

        inputs = support.demo_inputs(demo_table)
        n = demo_table.num_rows
        got = np.zeros(n, dtype=np.float32)

        def score(client: host_client.HostClient, rows: range) -> None:
            for i in range(rows.start, rows.stop, 50):
                j = min(i + 50, rows.stop)
                got[i:j] = client.predict({k: v[i:j] for k, v in inputs.items()})["output_0"].reshape(-1)

        threads = [threading.Thread(target=score, args=(c, r))
                   for c, r in ((first, range(0, n // 2)), (second, range(n // 2, n)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert support.max_abs_diff(got, demo_reference) <= FLOAT_TOL

        # A host killed mid-run: the next request fails naming it; the next connect starts host 2.
        pid = int(first.fields["pid"])
        os.kill(pid, signal.SIGKILL)
        assert _wait_gone([pid], 5) == []
        with pytest.raises(ModelUnavailable, match=rf"model host pid {pid} \({first.files.socket}\) ended"):
            second.predict({k: v[:10] for k, v in inputs.items()})
        again = host_client.connect(**connect)
        assert again.started_here and again.fields["host_id"].endswith("/2") and again.fields["pid"] != str(pid)
        np.testing.assert_allclose(again.predict({k: v[:10] for k, v in inputs.items()})["output_0"].reshape(-1),
                                   demo_reference[:10], atol=FLOAT_TOL)

        # The executor goes (kill -9): the host exits within 2 s and removes its socket and pid file.
        host = int(again.fields["pid"])
        executor.kill()
        executor.wait()
        assert _wait_gone([host], 3) == []
        assert not os.path.exists(again.files.socket) and not os.path.exists(again.files.path("pid"))
    finally:
        executor.kill()
        executor.wait()
        host_client._clients.clear()


_FORK_CHILD = """
import json, os, subprocess, sys
import numpy as np
import pyarrow.parquet as pq
import tensorflow  # imported and not run, as the Python daemon preloads it before forking workers
from batchscore.udfs.host import client as host_client
from tests import support

model, rows, watch_forever = sys.argv[1], sys.argv[2], subprocess.Popen(["sleep", "600"])
forkable = host_client.can_fork_host()
client = host_client.connect(model_path=lambda: model, fingerprint="fp-fork-" + str(os.getpid()),
                             signature="serving_default", batch_size=64, wait_ms=1, cores=1, gpus=[],
                             watch=watch_forever.pid)
inputs = support.demo_inputs(pq.read_table(rows))
got = client.predict(inputs)["output_0"].reshape(-1)
want = support.tf_predict(model, inputs)["output_0"].reshape(-1)  # this process's own TF, after the fork
pid = int(client.fields["pid"])
print(json.dumps({"forkable": forkable, "forked_after": host_client.can_fork_host(), "pid": pid,
                  "comm": open(f"/proc/{pid}/comm").read().strip(),
                  "cmdline": open(f"/proc/{pid}/cmdline").read(), "max_diff": float(np.max(np.abs(got - want))),
                  "listed": host_client.live_host_pids(client.files.folder)}))
watch_forever.kill()
"""


def test_a_worker_with_tensorflow_imported_and_not_run_forks_the_host(host_dir, demo_model, demo_table,
                                                                       tmp_path) -> None:
    # a fork shares the daemon's preloaded TensorFlow with the workers (no second ~600 MB import)
    rows = str(tmp_path / "rows.parquet")
    pq.write_table(demo_table.slice(0, 200), rows)
    proc = subprocess.run([sys.executable, "-c", _FORK_CHILD, demo_model, rows], cwd=PROJECT_ROOT,
                          env=_env(host_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["forkable"] and not got["forked_after"]  # TF ran here afterwards: the next start would exec
    assert got["comm"] == "bs-model-host" and "batchscore.udfs.host.model_host" not in got["cmdline"]
    assert got["max_diff"] <= FLOAT_TOL and got["listed"] == [got["pid"]]
    assert _wait_gone([got["pid"]], 5) == []  # its watched process ended with the child


def test_executor_cores_from_conf_and_local_masters() -> None:
    assert host_client.executor_cores("yarn", "4") == 4
    assert host_client.executor_cores("local[2]", None) == 2
    assert host_client.executor_cores("local[3, 4]", None) == 3
    assert host_client.executor_cores("local[*]", None) == os.cpu_count()
    assert host_client.executor_cores("local-cluster[2, 1, 1024]", None) == 1
    assert host_client.executor_cores("spark://m:7077", None) == 0


def test_host_wait_ms_is_validated_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.host_wait_ms"):
        support.job_spec("in", "m", "out", "model.host_wait_ms=-1")


# --- the scoring job on Spark ---


@pytest.fixture(scope="module")
def four_files(tmp_path_factory, demo_table) -> str:
    """The demo rows in 4 Parquet files: 4 tasks, so both task slots of local[2] score."""
    return support.write_parquet(demo_table.drop_columns(["as_of_date"]),
                                 str(tmp_path_factory.mktemp("host") / "in"), files=4)


def _spec(inp: str, model: str, out: str, *extra: str):
    return support.job_spec(inp, model, out, NUMERIC_COLUMNS, "output.keep_columns=[id]", "model.batch_size=64",
                            *extra)


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_sharing_executor_on_local2_equals_worker_with_one_load(spark, four_files, demo_model, tmp_path,
                                                                lane) -> None:
    model = support.fresh_copy(demo_model, str(tmp_path))  # a fingerprint no host or worker has yet
    worker = run_scoring(spark, _spec(four_files, model, str(tmp_path / "w"), f"input.lane={lane}"))
    shared = run_scoring(spark, _spec(four_files, model, str(tmp_path / "e"), f"input.lane={lane}",
                                      "model.sharing=executor"))
    _assert_same(support.read_output(str(tmp_path / "e")), support.read_output(str(tmp_path / "w")))
    assert (shared.rows_in, shared.rows_scored, shared.model.sharing) == (1200, 1200, "executor")
    assert shared.model_loads == 1 and shared.model_loads_by_executor == {"driver": 1}
    assert shared.python_workers >= 2  # both task slots' workers were served by the one host
    assert all(w["loads"] == 0 for w in shared.workers.values())  # no worker loaded a copy
    assert list(shared.devices.values()) == ["CPU:0"] and all(k.startswith("host driver/") for k in shared.devices)
    assert worker.model_loads == worker.python_workers >= 2 and worker.model_loads_by_executor == {}


def test_sharing_executor_reuses_the_host_in_a_later_run(spark, four_files, demo_model, tmp_path) -> None:
    model = support.fresh_copy(demo_model, str(tmp_path))
    first = run_scoring(spark, _spec(four_files, model, str(tmp_path / "a"), "model.sharing=executor"))
    again = run_scoring(spark, _spec(four_files, model, str(tmp_path / "b"), "model.sharing=executor"))
    assert first.model_loads_by_executor == {"driver": 1}
    assert again.model_loads == 0 and again.model_loads_by_executor == {"driver": 0}  # served, nothing loaded
    _assert_same(support.read_output(str(tmp_path / "b")), support.read_output(str(tmp_path / "a")))


def _assert_same(a: pa.Table, b: pa.Table) -> None:
    """Whole outputs equal: same ids in the same order, predictions within FLOAT_TOL."""
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    assert a.column("id").equals(b.column("id"))
    for name in a.column_names:
        if pa.types.is_floating(a.column(name).type):
            assert support.max_abs_diff(a.column(name).to_numpy(), b.column(name).to_numpy()) <= FLOAT_TOL, name
        else:
            assert a.column(name).equals(b.column(name)), name


# --- whole applications in subprocesses ---


def _env(host_dir: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT, "SPARK_LOCAL_IP": "127.0.0.1",
           host_client.HOST_DIR_ENV: host_dir, **extra}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


def _score_command(tmp_path, inp: str, model: str, out: str, host_dir: str, *sets: str, fault: str | None = None,
                   timeout: int = 600) -> subprocess.CompletedProcess:
    """The score job in a subprocess: `batchscore score`, or with `fault` `tests.support.fault_launcher FAULT`."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("spark:\n  spark.ui.enabled: false\n")
    job = ["tests.support.fault_launcher", fault] if fault else ["batchscore", "score"]
    cmd = [sys.executable, "-m", *job, "--config", str(cfg), "--quiet"]
    for s in (f"input.path={inp}", f"model.path={model}", f"output.path={out}", NUMERIC_COLUMNS,
              "output.keep_columns=[id]", "model.batch_size=64", "model.sharing=executor", *sets):
        cmd += ["--set", s]
    # a local-cluster worker keeps its executors' logs in SPARK_WORKER_DIR (default: inside pyspark's install)
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=_env(host_dir, SPARK_WORKER_DIR=str(tmp_path / "spark-work")),
                          capture_output=True, text=True, timeout=timeout)


def test_two_executor_local_cluster_loads_once_per_executor_and_leaves_no_host(
        spark, host_dir, four_files, demo_model, tmp_path) -> None:
    worker_out = str(tmp_path / "w")
    run_scoring(spark, _spec(four_files, demo_model, worker_out))
    out = str(tmp_path / "cluster")
    proc = _score_command(tmp_path, four_files, demo_model, out, host_dir,
                          "spark.spark.master=local-cluster[2,1,1024]", "spark.spark.executor.memory=512m")
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = RunManifest.from_json(open(os.path.join(out, "_manifest.json")).read())
    assert manifest.model_loads == 2 and len(manifest.model_loads_by_executor) == 2, manifest.model_loads_by_executor
    assert set(manifest.model_loads_by_executor.values()) == {1}
    _assert_same(support.read_output(out), support.read_output(worker_out))
    # The application ended with the command: its hosts are gone, with their sockets and pid files.
    assert _wait_gone(_host_pids(host_dir), 5) == []
    assert glob.glob(os.path.join(host_dir, "*.sock")) + glob.glob(os.path.join(host_dir, "*.pid")) == []


def test_host_killed_mid_run_is_retried_every_row_once(host_dir, four_files, demo_model, demo_reference,
                                                       tmp_path) -> None:
    out, events = str(tmp_path / "out"), tmp_path / "events"
    events.mkdir()
    # tests/support/fault_launcher.py: partition 0's first attempt SIGKILLs the executor's host after two model calls
    proc = _score_command(tmp_path, four_files, demo_model, out, host_dir, "spark.spark.master=local[2,3]",
                          "spark.spark.eventLog.enabled=true", f"spark.spark.eventLog.dir=file://{events}",
                          "spark.spark.eventLog.compress=false", "spark.spark.eventLog.rolling.enabled=false",
                          fault="kill-host:0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (killed,) = re.findall(r"fault_launcher: killed model host pid (\d+)", proc.stderr)
    # A task failed on the dead host, with the one-line error naming it, and was retried.
    log = "".join(p.read_text() for p in events.iterdir())
    assert re.search(rf"ModelUnavailable: model host pid {killed} \(/tmp/bsh-[^)]+\.sock\) ended during a request",
                     log)
    scored = support.read_output(out)
    assert scored.column("id").to_pylist() == list(range(1200))  # every row exactly once
    assert support.max_abs_diff(scored.column("output_0").to_numpy(), demo_reference) <= FLOAT_TOL
    manifest = RunManifest.from_json(open(os.path.join(out, "_manifest.json")).read())
    assert manifest.rows_scored == 1200 and manifest.rows_quarantined == 0
    assert "host driver/2" in manifest.devices  # the retry started the executor's second host, which scored
    assert _wait_gone(_host_pids(host_dir), 5) == []


def _java_children(pid: int) -> list[int]:
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                name, rest = fh.read().split(" (", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if name == "java" and int(rest.split()[1]) == pid:
            found.append(int(stat.split("/")[2]))
    return found


@pytest.mark.parametrize("end", ["session stop", "kill -9 of the JVM"])
def test_host_ends_with_the_application(host_dir, four_files, demo_model, tmp_path, end) -> None:
    app = subprocess.Popen([sys.executable, "-m", "tests.support.host_app", four_files, demo_model, str(tmp_path / "out")],
                           cwd=PROJECT_ROOT, env=_env(host_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        assert app.stdout is not None and app.stdin is not None
        assert app.stdout.readline().strip() == "scored 1"
        hosts = _host_pids(host_dir)
        assert len(hosts) == 1  # one executor (local[2]), one host, alive between jobs
        if end == "session stop":
            app.stdin.write("stop\n")
            app.stdin.flush()
            assert app.stdout.readline().strip() == "stopped"
        else:
            (jvm,) = _java_children(app.pid)
            os.kill(jvm, signal.SIGKILL)
        assert _wait_gone(hosts, 5) == []  # the driver process still runs: the host went with the executor
        assert app.poll() is None
        assert glob.glob(os.path.join(host_dir, "*.sock")) + glob.glob(os.path.join(host_dir, "*.pid")) == []
    finally:
        app.kill()
        app.wait()
