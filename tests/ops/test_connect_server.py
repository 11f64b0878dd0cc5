"""The local Spark Connect server (`batchscore server`, batchscore/session/connect_server.py) and
`--remote`: client sessions share its warm Python workers, a killed client leaves it healthy,
`stop` leaves no process behind, and jobs pick their Connect address in one documented order."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from batchscore.core.compat import spark_version
from batchscore.jobs import score
from batchscore.jobs.runner import Job, Run, run_job
from batchscore.session import connect_server as server
from batchscore.session.builder import remote_url

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
ENV.pop("SPARK_REMOTE", None)

# A client process: a 2-partition mapInArrow returning each row's Python worker pid; with
# SLEEP set, each task touches MARKER and sleeps (a query to kill the client in).
CLIENT = textwrap.dedent("""
    import os, sys, time
    from pyspark.sql.connect.session import SparkSession
    url, marker, sleep = sys.argv[1], sys.argv[2], float(sys.argv[3])
    spark = SparkSession.builder.remote(url).create()
    def pids(batches):
        import pyarrow as pa
        for b in batches:
            if sleep:
                open(marker, "a").close()
                time.sleep(sleep)
            yield pa.RecordBatch.from_pydict({"pid": [os.getpid()] * b.num_rows})
    print(sorted({r.pid for r in spark.range(0, 100, 1, 2).mapInArrow(pids, "pid long").collect()}))
    spark.stop()
""")

NEEDS_SPARK_4 = pytest.mark.skipif(spark_version() < (4, 0), reason="Spark Connect runs on the current stack: Spark "
                                   "3.5's Connect client has no Observation (the task counters)")


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchscore", "server", *args], env=ENV, capture_output=True,
                          text=True, check=False, timeout=timeout)


def _worker_pids(url: str) -> list[int]:
    """The Python worker pids of a new client session's mapInArrow (the session is closed after)."""
    from pyspark.sql.connect.session import SparkSession

    def pids(batches):
        import pyarrow as pa

        for b in batches:
            yield pa.RecordBatch.from_pydict({"pid": [os.getpid()] * b.num_rows})

    client = SparkSession.builder.remote(url).create()
    try:
        return sorted({r.pid for r in client.range(0, 100, 1, 2).mapInArrow(pids, "pid long").collect()})
    finally:
        client.stop()


def _listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.net_connections(kind="tcp"))


def _left(procs: list[psutil.Process]) -> list[str]:
    """Those of `procs` still running (a zombie has ended)."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:100]}")
        except psutil.NoSuchProcess:
            continue
    return left


def _assert_nothing_left(pid: int, tree: list[psutil.Process], port: int) -> None:
    assert tree, "the server had started no process (no JVM?)"
    assert not _left([*tree]), _left(tree)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not _listening(port)


@NEEDS_SPARK_4
@pytest.mark.slow
def test_start_status_warm_workers_across_sessions_stop_leaves_nothing() -> None:
    port = server.free_port()
    started = _cli("start", "--port", str(port), "--master", "local[2]")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        url = f"sc://127.0.0.1:{port}"
        assert started.stdout.strip().splitlines()[-1] == url
        status = _cli("status", "--port", str(port))
        assert status.returncode == 0 and status.stdout.startswith(f"running {url}")
        first, second = _worker_pids(url), _worker_pids(url)
        assert first and first == second  # two client sessions, in turn, in the same warm workers
        state = server.status(port)
        assert state is not None
        pid = state.pid
        tree = psutil.Process(pid).children(recursive=True)
        assert {p.pid for p in tree} >= set(first)
    finally:
        stopped = _cli("stop", "--port", str(port))
    assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped {url}"
    status = _cli("status", "--port", str(port))
    assert status.returncode == 1 and status.stdout.strip() == f"stopped {url}"
    _assert_nothing_left(pid, tree, port)


@NEEDS_SPARK_4
@pytest.mark.slow
def test_a_client_killed_mid_query_leaves_the_server_healthy(tmp_path: Path) -> None:
    port, folder = server.free_port(), str(tmp_path / "state")
    url = server.start(port, master="local[2]", folder=folder)
    try:
        state = server.status(port, folder=folder)
        assert state is not None
        pid = state.pid
        marker = tmp_path / "task-running"
        client = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(marker), "20"], env=ENV)
        deadline = time.monotonic() + 120
        while not marker.exists() and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), "the client's query never started a task"
        client.send_signal(signal.SIGKILL)
        client.wait(30)
        assert server.probe(url) == 1  # another client is served while the dead one's tasks still run
        assert server.status(port, folder=folder) is not None
        tree = psutil.Process(pid).children(recursive=True)
    finally:
        assert server.stop(port, folder=folder)
    assert server.status(port, folder=folder) is None
    _assert_nothing_left(pid, tree, port)


@NEEDS_SPARK_4
def test_start_on_a_taken_port_exits_2_with_one_line() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = _cli("start", "--port", str(port), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"port {port} is taken" in lines[0]
    assert proc.stdout == ""


def test_the_connect_address_is_remote_then_the_config_then_spark_remote() -> None:
    conf = {"spark.remote": "sc://from-config:1"}
    env = {"SPARK_REMOTE": "sc://from-env:2"}
    assert remote_url("sc://from-flag:3", conf, env) == "sc://from-flag:3"
    assert remote_url(None, conf, env) == "sc://from-config:1"
    assert remote_url("", {}, env) == "sc://from-env:2"
    assert remote_url(None, {"spark.master": "local[2]"}, {}) is None


def test_a_config_error_under_remote_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert score.main(["--config", str(tmp_path / "missing.yaml"), "--remote", "sc://127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    config = tmp_path / "job.yaml"
    config.write_text(f"input: {{path: {tmp_path}/in}}\nmodel: {{path: {tmp_path}/model}}\n"
                      f"output: {{path: {tmp_path}/out}}\n")
    assert score.main(["--config", str(config), "--remote", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--remote 'http://127.0.0.1:1'" in err[0], err


def test_a_job_on_connect_closes_its_session_and_leaves_the_server_running(connect_server: str,
                                                                          connect_spark) -> None:
    def count(run: Run) -> int:
        assert run.spark.conf.get("spark.sql.shuffle.partitions") == "3"  # a runtime setting reaches the session
        return int(run.spark.range(7).count())

    job = Job(prog="t", description="t", options=lambda p: None, run=count, remote=True,
              spark_conf=lambda run: {"spark.sql.shuffle.partitions": "3", "spark.executor.memory": "1g"},
              summary=lambda r: None)
    assert run_job(job, ["--remote", connect_server]) == 0
    assert server.probe(connect_server) == 1
    assert connect_spark.range(5).count() == 5  # a session opened before the job still works
