"""A local Spark Connect server: one classic session, built with the project's profile
(`build_session`: pre-started Python daemon, connector jars, JVM class archive, worker reuse),
with Spark's Connect plugin serving clients at `sc://127.0.0.1:N`.

Spark's own `SparkConnectServer` forces artifact isolation on, which gives every client
session its own Python daemon; this server turns it off, so client sessions share warm
Python workers (TensorFlow imported, models loaded). `start` launches it detached
(`python -m batchscore.jobs.server --serve`), in its own session, logging to a file beside a
state file (pid, port) under batchscore's cache folder; `stop` ends it and every process it
started. Bound to 127.0.0.1 only.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from batchscore.core.errors import BatchscoreError
from batchscore.session import jvm_cache

DEFAULT_PORT = 15002
HOST = "127.0.0.1"
SERVE_MODULE = "batchscore.jobs.server"
PLUGIN = "org.apache.spark.sql.connect.SparkConnectPlugin"
# Variables that make pyspark's classic builder return a Connect client: never the server's.
CLIENT_ENV = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_LOCAL_REMOTE", "SPARK_API_MODE")
SERVING = "serving "  # the server process's line once its session is up: "serving sc://..."
PR_SET_CHILD_SUBREAPER = 36


class ServerError(BatchscoreError):
    """The server cannot start: its port is taken, or it failed (the log's tail says why)."""


@dataclass(frozen=True)
class ServerState:
    """A running server: its process, port and log."""

    pid: int
    port: int
    log: str

    @property
    def url(self) -> str:
        return url(self.port)


def url(port: int) -> str:
    """The Connect address of a local server on `port`."""
    return f"sc://{HOST}:{port}"


def plugin_conf(port: int) -> dict[str, str]:
    """The Spark conf that makes a classic session serve Connect clients on 127.0.0.1:`port`,
    sharing its Python workers across client sessions."""
    return {
        "spark.plugins": PLUGIN,
        "spark.connect.grpc.binding.address": HOST,
        "spark.connect.grpc.binding.port": str(port),
        "spark.connect.grpc.port.maxRetries": "0",  # the port asked for, or fail
        "spark.sql.artifact.isolation.enabled": "false",  # one Python daemon for every client session
    }


def state_dir() -> str:
    """Where servers' state and log files live: `<batchscore cache>/connect`."""
    return os.path.join(os.path.dirname(jvm_cache.cache_dir()), "connect")


def _files(port: int, folder: str | None) -> tuple[str, str]:
    base = os.path.join(folder or state_dir(), f"server-{port}")
    return f"{base}.json", f"{base}.log"


def port_taken(port: int) -> bool:
    """Whether 127.0.0.1:`port` cannot be bound (something listens there; closed connections do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return True
    return False


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie child of this process is reaped, and is not running)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_server(pid: int) -> bool:
    """Whether `pid` runs and is a server of this module (not a pid reused since)."""
    if not _alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return SERVE_MODULE.encode() in fh.read()
    except OSError:
        return True  # no /proc: trust the state file


def status(port: int = DEFAULT_PORT, *, folder: str | None = None) -> ServerState | None:
    """The server running on `port` per its state file, or None (a stale file is removed)."""
    state_file, _ = _files(port, folder)
    try:
        with open(state_file, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    state = ServerState(pid=int(data["pid"]), port=int(data["port"]), log=str(data["log"]))
    if _is_server(state.pid):
        return state
    with contextlib.suppress(OSError):
        os.unlink(state_file)
    return None


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).strip()
    except OSError:
        return ""


def serve_command(port: int, master: str, conf: Mapping[str, str]) -> list[str]:
    """The server process's command line."""
    extra = [a for k, v in conf.items() for a in ("--conf", f"{k}={v}")]
    return [sys.executable, "-m", SERVE_MODULE, "--serve", "--port", str(port), "--master", master, *extra]


def start(port: int = DEFAULT_PORT, *, master: str = "local[*]", conf: Mapping[str, str] | None = None,
          folder: str | None = None, timeout: float = 240.0) -> str:
    """Start a server on `port` and return its URL once a Connect client's query ran on it.

    Raises:
        ServerError: the port is taken (or a server of ours runs there), or the server
            exited or did not answer within `timeout` seconds (the log's tail in the message).
    """
    running = status(port, folder=folder)
    if running is not None:
        raise ServerError(f"port {port} is taken: a batchscore Connect server runs there (pid {running.pid})")
    if port_taken(port):
        raise ServerError(f"port {port} is taken on {HOST}")
    state_file, log_file = _files(port, folder)
    os.makedirs(os.path.dirname(state_file), exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(serve_command(port, master, dict(conf or {})), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    with open(state_file, "w", encoding="utf-8") as fh:
        json.dump({"pid": proc.pid, "port": port, "log": log_file, "started": time.time()}, fh)
    try:
        _wait_ready(proc, port, log_file, timeout)
    except ServerError:
        stop(port, folder=folder)
        raise
    return url(port)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_file: str, timeout: float) -> None:
    """Return once a Connect client's `range(1).count()` ran on the server; ServerError if it ends or times out."""
    deadline = time.monotonic() + timeout
    error = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(_failed(port, f"it exited with code {proc.returncode}", log_file))
        if port_taken(port) and SERVING in _tail(log_file, 200):
            try:
                probe(url(port))
                return
            except Exception as e:  # noqa: BLE001 - not serving yet: retried until the deadline
                error = (str(e).strip().splitlines() or [type(e).__name__])[0]
        time.sleep(0.5)
    raise ServerError(_failed(port, f"no answer within {timeout:.0f} s ({error})", log_file))


def _failed(port: int, why: str, log_file: str) -> str:
    """One line: why the server on `port` failed, with the last lines of its log."""
    tail = " | ".join(line.strip() for line in _tail(log_file).splitlines()[-3:] if line.strip())
    return f"the Connect server on port {port} failed to start: {why}" + (f"; log {log_file}: {tail}" if tail else "")


def probe(address: str) -> int:
    """Run `spark.range(1).count()` in a new Connect client session at `address`, then close it."""
    from pyspark.sql.connect.session import SparkSession  # noqa: PLC0415 - the connect client's deps are optional

    client = SparkSession.builder.remote(address).create()
    try:
        return int(client.range(1).count())
    finally:
        client.stop()


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (its JVM, Python daemon and workers, a model host), when psutil is there."""
    try:
        import psutil  # noqa: PLC0415 - optional: without it the process group is what stop ends
    except ImportError:
        return []
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait up to `timeout` s for `pids` to end; those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if _alive(p)]
    return left


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(port: int = DEFAULT_PORT, *, folder: str | None = None, timeout: float = 60.0) -> bool:
    """Stop the server on `port` and every process it started; False when none was running.

    SIGTERM lets it stop its session (the JVM stops the Python daemon and workers; a model
    host follows its daemon); whatever is left after `timeout` s is killed.
    """
    state = status(port, folder=folder)
    state_file, _ = _files(port, folder)
    if state is None:
        return False
    tree = _descendants(state.pid)
    os.kill(state.pid, signal.SIGTERM)
    if _wait_gone([state.pid], timeout):
        _kill_group(state.pid, signal.SIGKILL)
        _wait_gone([state.pid], 10.0)
    if _wait_gone(tree, 10.0):
        _kill_group(state.pid, signal.SIGKILL)  # its session started them: the group is ours
        for pid in _wait_gone(tree, 1.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_gone(tree, 5.0)
    with contextlib.suppress(OSError):
        os.unlink(state_file)
    return True


# --- the server process's own end ---


def adopt_orphans() -> None:
    """Make this process the parent of its descendants whose parent ends (Linux), so that
    `reap_all` can wait for each one (Python workers outlive their daemon by a moment)."""
    with contextlib.suppress(Exception):  # not Linux: the init process reaps them
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)


def reap_all(timeout: float = 30.0) -> bool:
    """After the session stopped: end its JVM (close the gateway's stdin) and wait up to `timeout`
    s for every child of this process; False when some still run."""
    context = getattr(sys.modules.get("pyspark"), "SparkContext", None)
    proc = getattr(getattr(context, "_gateway", None), "proc", None)
    if proc is not None and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the JVM exits when its stdin closes
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                time.sleep(0.1)
        except ChildProcessError:
            return True
    return False
