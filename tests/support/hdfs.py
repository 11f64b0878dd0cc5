"""A MiniDFSCluster on 127.0.0.1 for tests: a real HDFS (NameNode + one DataNode) in its own JVM.

`make jars` puts `hadoop-client-minicluster` (the Hadoop of the pinned pyspark) under
`jars/lib/hdfs/` (`make jars-lts`: under `jars/lib-spark3.5/hdfs/` for pyspark 3.5). Use it in a test module with

    pytest_plugins = ["tests.support.hdfs"]

    def test_x(spark, hdfs_uri: str) -> None:
        df.write.parquet(f"{hdfs_uri}/some/path")

Spark needs nothing extra for `hdfs://`: the HDFS client is inside pyspark's own
hadoop-client-api/-runtime jars, so the shared `spark` fixture reads and writes it as is.
The fixtures skip when the jars are missing (run `make jars`).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchscore.session.builder import jars_folder

ROOT = Path(__file__).resolve().parents[2]
HDFS_JARS = Path(jars_folder("hdfs"))  # this pyspark's Hadoop: jars/lib/hdfs (Spark 4) or jars/lib-spark3.5/hdfs
MANAGER = "org.apache.hadoop.test.MiniDFSClusterManager"


def hdfs_jars_present(jars_dir: Path = HDFS_JARS) -> bool:
    """True when `make jars` fetched the minicluster."""
    return any(jars_dir.glob("hadoop-client-minicluster-*.jar"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def minidfs(workdir: Path, *, jars_dir: Path = HDFS_JARS, timeout: float = 120.0) -> Iterator[str]:
    """Start a MiniDFSCluster (fresh, formatted, data under `workdir`), yield its `hdfs://` URI, stop it.

    Raises:
        AssertionError: the cluster did not come up within `timeout` seconds (with its log's tail).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port, details, log_path = free_port(), workdir / "details.json", workdir / "minidfs.log"
    cmd = ["java", "-Xmx512m", "-cp", f"{jars_dir}/*", MANAGER, "-format", "-nnport", str(port),
           "-httpport", "0", "-writeDetails", str(details),
           "-D", f"hdfs.minidfs.basedir={workdir / 'dfs'}", "-D", "dfs.replication=1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, port, details, log_path, timeout)
        yield f"hdfs://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_until_up(proc: subprocess.Popen[bytes], port: int, details: Path, log_path: Path, timeout: float) -> None:
    """Bounded wait: the manager writes its details file once the cluster is active."""
    deadline = time.monotonic() + timeout
    up = False
    while time.monotonic() < deadline and proc.poll() is None:
        if details.is_file() and details.stat().st_size and _listening(port):
            up = json.loads(details.read_text()).get("namenode_port") == port
            if up:
                break
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:]
    assert up, f"MiniDFSCluster not up on 127.0.0.1:{port} (exit {proc.poll()}) within {timeout:.0f}s:\n{tail}"


@pytest.fixture(scope="session")
def hdfs_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`hdfs://127.0.0.1:PORT` of a MiniDFSCluster shared by the session's tests (stopped at the end)."""
    if not hdfs_jars_present():
        pytest.skip(f"no hadoop-client-minicluster under {HDFS_JARS} (run `make jars` / `make jars-lts`)")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    with minidfs(tmp_path_factory.mktemp("minidfs")) as uri:
        yield uri
