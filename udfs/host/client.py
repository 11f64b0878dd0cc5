"""The worker side of `model.sharing: executor`: find the executor's model host, or start it,
and send it the task's batches (the host itself: udfs/host/model_host.py).

One host serves one executor's workers for one model (`host_files`). A worker keeps one
connection per host across its tasks and checks it at each task start (a `hello`); a dead
host is replaced by the next task that finds it dead. A host that dies during a request
raises `ModelUnavailable` naming its pid and socket: the task fails (its rows are not
quarantined) and Spark's retry starts a new host.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchscore.core.errors import ModelError, ModelUnavailable
from batchscore.udfs.host import protocol as host_protocol
from batchscore.udfs.model.worker_tuning import freeze_long_lived_objects

HOST_DIR_ENV = "BATCHSCORE_HOST_DIR"
START_TIMEOUT_S = 600.0  # TF's import and a large model's load
LOCAL_MASTER = re.compile(r"^local(?:\[(\*|\d+)(?:,\s*\d+)?\])?$")
LOCAL_CLUSTER = re.compile(r"^local-cluster\[\s*\d+\s*,\s*(\d+)\s*,\s*\d+\s*\]$")


def executor_cores(master: str, conf_cores: str | None) -> int:
    """The cores of one executor, for the host's thread pools (on the driver).

    `spark.executor.cores` when set; else from a local master (`local[N]`, `local[*]`,
    `local-cluster[n, cores, mem]`); else 0: TF's own default (the machine's cores).
    """
    if conf_cores:
        return int(conf_cores)
    m = LOCAL_MASTER.match(master)
    if m:
        return (os.cpu_count() or 1) if m.group(1) in (None, "*") else int(m.group(1))
    m = LOCAL_CLUSTER.match(master)
    return int(m.group(1)) if m else 0


def live_host_pids(folder: str) -> list[int]:
    """The model hosts alive now whose files are under `folder`, from their pid files (a host
    forked from a worker keeps the worker's command line, so the process list cannot name it)."""
    pids = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".pid"):
            continue
        try:
            with open(os.path.join(folder, name)) as fh:
                pid = int(fh.read().strip())
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":
            pids.append(pid)
    return pids


@dataclass(frozen=True)
class HostFiles:
    """The files of one host, in `host_folder()`, named by its `key` (`host_files`).

    `<key>.sock`, `.pid`, `.lock` (fcntl.flock: concurrent tasks start one host), `.log`
    (the host's stderr), `.count` (hosts started so far: the host id's incarnation) and
    `.fault` (the fault hook's marker).
    """

    folder: str
    key: str

    def path(self, suffix: str) -> str:
        return os.path.join(self.folder, f"{self.key}.{suffix}")

    @property
    def socket(self) -> str:
        return self.path("sock")

    def for_host(self) -> dict[str, str]:
        return {k: self.path(k) for k in ("pid", "lock", "fault", "log", "count")}


def host_folder() -> str:
    """`$BATCHSCORE_HOST_DIR` or `/tmp/bs-host-<uid>` (AF_UNIX paths stay short), made private to this user."""
    folder = os.environ.get(HOST_DIR_ENV) or f"/tmp/bs-host-{os.getuid()}"
    os.makedirs(folder, mode=0o700, exist_ok=True)
    if os.stat(folder).st_uid != os.getuid():
        raise PermissionError(f"model host folder {folder} belongs to another user")
    return folder


def executor_scope() -> str:
    """What names this worker's executor: its block-manager directories, else its parent process."""
    return os.environ.get("SPARK_LOCAL_DIRS") or f"parent:{os.getppid()}"


def host_files(*, fingerprint: str, signature: str, gpus: list[str]) -> HostFiles:
    """The files of this executor's host for the model: one host per executor, model and GPU set.

    The key names the executor (`executor_scope`: `SPARK_LOCAL_DIRS`, the executor's own
    block-manager directories, one per executor JVM and application, set in every Python
    worker's environment), the model fingerprint and signature, and the task's GPU addresses.
    """
    raw = json.dumps([executor_scope(), fingerprint, signature, sorted(gpus)])
    return HostFiles(host_folder(), hashlib.sha256(raw.encode()).hexdigest()[:20])


def spark_executor_id() -> str:
    """Spark's id of this worker's executor: `driver` on local masters.

    From `SPARK_EXECUTOR_ID` (Kubernetes), else `--executor-id` on the command line of an
    ancestor process (the executor JVM on standalone, YARN and local-cluster), else a
    standalone work directory (`.../<app-id>/<executor-id>`, the cwd of a daemon that a
    pre-started one took over, udfs/daemon.py); else `driver`.
    """
    given = os.environ.get("SPARK_EXECUTOR_ID")
    if given:
        return given
    pid = os.getppid()
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])  # the ppid field
        except (OSError, ValueError, IndexError):
            break
        if "--executor-id" in args[:-1]:
            return args[args.index("--executor-id") + 1]
        if "org.apache.spark.deploy.SparkSubmit" in args or pid <= 1:
            break
    m = re.search(r"/app-[^/]+/(\d+)$", os.getcwd())
    return m.group(1) if m else "driver"


class HostClient:
    """One connection to a model host."""

    def __init__(self, files: HostFiles, sock: socket.socket) -> None:
        self.files = files
        self._sock = sock
        self.fields: dict[str, str] = {}  # the host's last reply: host_id, loads, pid, devices
        self.started_here = False  # this connect() started the host: its load is this task's

    def hello(self) -> dict[str, str]:
        """Ask the host who it is (raises OSError/EOFError when it is gone)."""
        self._exchange({}, "hello")
        return self.fields

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The host's model outputs for `inputs`.

        Raises:
            ModelUnavailable: the host died or closed the connection during the request.
            RuntimeError: the model rejected the rows (the host's one-line message).
        """
        try:
            outputs = self._exchange(inputs, "predict")
        except (OSError, EOFError) as e:
            self.close()
            raise ModelUnavailable(
                f"model host pid {self.fields.get('pid', '?')} ({self.files.socket}) ended during a request "
                f"({type(e).__name__}: {e}); the task fails and Spark retries it on a new host") from None
        if "error" in self.fields:
            raise RuntimeError(f"model host pid {self.fields.get('pid', '?')}: {self.fields['error']}")
        return outputs

    def _exchange(self, arrays: dict[str, np.ndarray], op: str) -> dict[str, np.ndarray]:
        host_protocol.send(self._sock, arrays, {"op": op})
        outputs, self.fields = host_protocol.recv(self._sock)
        return outputs

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def stats(self) -> dict[str, Any]:
        """This host in the run's stats, by host id (max-merged): its model load when this task
        started it, else 0 (a host reused from an earlier task, stage or run loaded nothing now),
        and the device it scores on (the manifest's `devices`, keyed `host <executor>/<incarnation>`)."""
        host = self.fields["host_id"]
        return {"host_loads": {host: int(self.fields["loads"]) if self.started_here else 0},
                **({"devices": {f"host {host}": self.fields["devices"]}} if self.fields.get("devices") else {})}


_clients: dict[str, HostClient] = {}  # this worker's connections, by host key
# `python -c _DETACH -m batchscore.udfs.host.model_host ...`: fork, the parent exits at once, the child
# execs the host (a fresh interpreter: nothing is forked after imports)
_DETACH = "import os, sys; os.fork() and os._exit(0); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"


def connect(*, model_path: Callable[[], str], fingerprint: str, signature: str, batch_size: int, wait_ms: float,
            gpu_memory_mb: int | None = None,
            cores: int, gpus: list[str], watch: int | None = None) -> HostClient:
    """A live connection to this executor's host for the model, starting the host if needed.

    Args:
        model_path: gives the model's local path (resolved in the worker only when it starts the host,
            which loads from there).
        cores: the host's TF thread pools (0: TF's default).
        gpus: the task's GPU addresses (part of the host's key; shown to its TF).
        watch: the process whose end ends a host started here (default: this worker's parent,
            PySpark's daemon or the executor JVM).

    Raises:
        ModelError: the host could not load the model.
        RuntimeError: the host did not start (its log's last lines).
    """
    files = host_files(fingerprint=fingerprint, signature=signature, gpus=gpus)
    client = _clients.pop(files.key, None)
    if client is not None:
        try:
            client.hello()
            client.started_here = False
            _clients[files.key] = client
            return client
        except (OSError, EOFError):
            client.close()
    client = _try_connect(files)
    if client is None:
        with open(files.path("lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent tasks start one host; the others wait here
            client = _try_connect(files)
            if client is None:
                _start_host(files, model_path=model_path, fingerprint=fingerprint, signature=signature,
                            batch_size=batch_size, wait_ms=wait_ms, cores=cores, gpus=gpus,
                            gpu_memory_mb=gpu_memory_mb,
                            watch=os.getppid() if watch is None else watch)
                client = _try_connect(files)
                if client is None:
                    raise RuntimeError(f"model host at {files.socket} started but does not answer; "
                                       f"see {files.path('log')}")
                client.started_here = True
    _clients[files.key] = client
    return client


def _try_connect(files: HostFiles) -> HostClient | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(files.socket)
        client = HostClient(files, sock)
        client.hello()
        return client
    except (OSError, EOFError):
        sock.close()
        return None


def _start_host(files: HostFiles, *, model_path: Callable[[], str], fingerprint: str, signature: str, batch_size: int,
                wait_ms: float, cores: int, gpus: list[str], watch: int, gpu_memory_mb: int | None = None) -> None:
    """Start a host (under the lock) and wait until it listens; stale files of a dead one go first."""
    for stale in (files.socket, files.path("pid")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    incarnation, path = _next_incarnation(files), model_path()
    argv = ["--socket", files.socket, "--model", path,
            "--fingerprint", fingerprint, "--signature", signature, "--batch-size", str(batch_size),
            "--wait-ms", str(wait_ms), "--cores", str(cores), "--gpus", ",".join(gpus),
            *(["--gpu-memory-mb", str(gpu_memory_mb)] if gpu_memory_mb else []),
            "--watch", str(watch), "--host-id", f"{spark_executor_id()}/{incarnation}",
            "--files", json.dumps(files.for_host())]
    line = _fork_host(argv, files.path("log")) if can_fork_host() else _exec_host(argv, files.path("log"))
    if line.startswith("ready"):
        return
    if line.startswith("error"):
        raise ModelError(f"model host for '{path}' could not load it: {line.removeprefix('error ').strip()}")
    raise RuntimeError(f"model host for '{path}' exited while starting; last lines of {files.path('log')}: "
                       f"{_tail(files.path('log'))}")


def can_fork_host() -> bool:
    """Whether this worker can fork the host instead of starting a fresh interpreter.

    A fork shares the TensorFlow this worker's daemon preloaded (udfs/daemon.py) page for page
    with every worker of the executor, so the host adds its model, not a second TensorFlow
    (~600 MB resident). Safe only before anything here started threads: no other Python
    thread, and TF's runtime not started by this process (no thread pools sized, no model
    loaded: a worker that scored under `sharing: worker` before execs a fresh host instead).
    """
    from batchscore.udfs.model import cache as model_cache  # noqa: PLC0415 - TensorFlow-side module: imported where needed

    return threading.active_count() == 1 and model_cache.load_count() == 0 and not model_cache.runtime_started()


def _fork_host(argv: list[str], log_path: str) -> str:
    """Fork, detach (own session, double fork) and run the host in the grandchild; its start line."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is the host's own behaviour
        code = 1
        try:
            os.close(r)
            os.setsid()  # Spark's signals to the worker's process group miss it
            if os.fork():
                os._exit(0)
            _host_stdio(w, log_path)
            with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
                comm.write("bs-model-host")  # its name in ps/top (the command line stays the worker's)
            from batchscore.udfs.host import model_host  # noqa: PLC0415 - only in the host

            code = model_host.main(argv)
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)  # the short-lived parent of the double fork: the host is re-parented, never our zombie
    try:
        return _read_line(r, START_TIMEOUT_S)
    finally:
        os.close(r)


def _host_stdio(ready_fd: int, log_path: str) -> None:
    """In the forked host: stdin from /dev/null, stdout the start pipe, stderr the log; no other
    inherited descriptor (the worker's socket to the JVM must not outlive the worker)."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(devnull, 0)
    os.dup2(ready_fd, 1)
    os.dup2(log, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))


def _exec_host(argv: list[str], log_path: str) -> str:
    """Start the host as a fresh interpreter (detached by `_DETACH`); its start line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # the worker's own imports
    cmd = [sys.executable, "-c", _DETACH, "-m", "batchscore.udfs.host.model_host", *argv]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                                start_new_session=True)  # its own session: Spark's signals to workers miss it
    proc.wait()  # the short-lived parent of the double fork: the host is re-parented, never our zombie
    assert proc.stdout is not None
    try:
        return _read_line(proc.stdout.fileno(), START_TIMEOUT_S)
    finally:
        proc.stdout.close()


def _read_line(fd: int, timeout: float) -> str:
    """One line from the host's start pipe; '' on end-of-file or timeout."""
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def _next_incarnation(files: HostFiles) -> int:
    """1 for an executor's first host, then 2, 3, ... (under the lock)."""
    path = files.path("count")
    try:
        with open(path) as fh:
            n = int(fh.read().strip() or 0) + 1
    except (OSError, ValueError):
        n = 1
    with open(path, "w") as fh:
        fh.write(f"{n}\n")
    return n


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(line.strip() for line in fh.readlines()[-lines:])
    except OSError:
        return "(no log)"


_task_client: list[HostClient] = []  # the host of this worker's current task


def client_predictor(plan: Any, *, cores: int, gpus: list[str]) -> HostClient:
    """The executor's model host for `plan` (a ScoringPlan), connected; its `predict` scores the task's rows."""
    client = connect(model_path=plan.source.local_path, fingerprint=plan.source.fingerprint,
                     signature=plan.signature.signature, batch_size=plan.batch_size,
                     wait_ms=plan.runtime.host_wait_ms, cores=cores, gpus=gpus,
                     gpu_memory_mb=plan.runtime.gpu_memory_mb)
    if not _task_client:  # this worker's first scoring task: what it holds now (TF's modules from the
        freeze_long_lived_objects()  # daemon) leaves PySpark's per-task gc pass, as a model load does
    _task_client[:] = [client]
    return client


def task_host_stats() -> dict[str, Any]:
    """The current task's host in the run's stats: `host_loads` {host id: its model loads}."""
    return _task_client[0].stats() if _task_client else {}
