"""Spark's Python daemon, with TensorFlow imported before it forks the workers.

With `spark.python.daemon.module=batchscore.udfs.daemon` (set for local masters by the
session builder; set it on a cluster whose executors have batchscore installed) the daemon
imports TensorFlow and the scoring modules once, and the workers it forks share those
pages instead of importing TensorFlow each (~3 s a worker). A local job also starts a
pre-started daemon before its JVM (`start_prestarted`), which does those imports while the
JVM boots and takes over when the JVM launches its daemon (`_hand_over`). Importing
TensorFlow starts no threads and no runtime, so forking after it is safe; each worker
sizes its thread pools and devices after the fork, and loads the model itself.
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

_LAUNCHED_AT = time.time()  # this process's start (close enough: nothing heavy is imported above)
MODULE = "batchscore.udfs.daemon"  # the value of spark.python.daemon.module
PRESTART_FLAG = "--prestart"
PRESTARTED_ENV = "BATCHSCORE_PRESTARTED_DAEMON"  # the pre-started daemon's socket, for the launched daemon
# Variables read while Python, numpy, pyarrow or TensorFlow import: the pre-started daemon
# imported under the driver's values, so it serves only a launch that has the same ones.
IMPORT_SENSITIVE = ("PYTHONHASHSEED", "TF_", "CUDA_", "OMP_", "OPENBLAS_", "MKL_", "KMP_", "XLA_", "LD_",
                    "ARROW_", "NUMEXPR_", "PYTHONMALLOC")


def preload() -> None:
    """Import TensorFlow, PySpark's worker and the scoring modules into this process (timed in model_cache)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t = time.time()
    try:
        import pyspark.worker  # noqa: F401, PLC0415 - imported for the forks to inherit

        from batchscore.udfs.lanes import scoring  # noqa: F401, PLC0415 - imported for the forks to inherit
        from batchscore.udfs.model import cache as model_cache  # noqa: PLC0415 - imported for the forks to inherit

        model_cache.import_tensorflow()
        model_cache.mark_daemon(tf_import_s=time.time() - t, prestarted=float(PRESTART_FLAG in sys.argv),
                                launched_at=_LAUNCHED_AT)
    except Exception as e:  # noqa: BLE001 - a daemon that cannot preload still forks workers that import TF themselves
        print(f"batchscore daemon: TensorFlow not preloaded ({type(e).__name__}: {e})", file=sys.stderr)


def _serve() -> None:
    """Run PySpark's daemon loop in this process (argv[1]: the worker module, as for pyspark.daemon)."""
    from pyspark import daemon  # noqa: PLC0415 - its import reads sys.argv for the worker module

    daemon.manager()


def _sensitive(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_SENSITIVE)}


# --- the launched daemon (python -m batchscore.udfs.daemon <worker module>) ---


def _hand_over(path: str) -> int | None:
    """Give this process's stdio, environment and arguments to the pre-started daemon at `path`;
    its pid when it took them, None when it is not there or refused."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(120)  # the pre-started daemon answers once its imports are done
            conn.connect(path)
            message = json.dumps({"env": dict(os.environ), "argv": sys.argv, "cwd": os.getcwd(),
                                  "path": sys.path, "launched_at": _LAUNCHED_AT}).encode()
            socket.send_fds(conn, [len(message).to_bytes(8, "big") + message], [0, 1, 2])
            reply = json.loads(conn.makefile("rb").readline() or b"{}")
    except OSError:
        return None
    pid = reply.get("pid")
    return int(pid) if pid else None


def _stand_in(pid: int) -> None:
    """Stay alive while the daemon `pid` serves: Spark watches and stops this process, not that one."""
    signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGTERM))
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # it has ended already
    while True:
        try:
            if select.select([fd], [], [])[0]:
                return  # the daemon exited
        except InterruptedError:
            continue


def main() -> None:
    """As Spark's daemon: hand over to the pre-started daemon when there is one, else preload and serve."""
    path = os.environ.get(PRESTARTED_ENV)
    pid = _hand_over(path) if path else None
    if pid is not None:
        _stand_in(pid)
        return
    preload()
    _serve()


# --- the pre-started daemon (python -m batchscore.udfs.daemon --prestart SOCKET) ---


def _take_over(conn: socket.socket) -> bool:
    """Become the launched daemon: its stdio, environment, arguments and directory; False if refused."""
    size_bytes, fds, _, _ = socket.recv_fds(conn, 8, 3)
    size = int.from_bytes(size_bytes, "big")
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return False
        data += chunk
    launch: dict[str, Any] = json.loads(data)
    theirs, ours = _sensitive(launch["env"]), _sensitive(_STARTED_WITH)
    if len(fds) != 3 or theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        print(f"batchscore daemon: not taking over a launch whose environment differs in {differ}", file=sys.stderr)
        for fd in fds:
            os.close(fd)
        conn.sendall(b"{}\n")
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(launch["env"])
    os.chdir(launch["cwd"])
    sys.argv = launch["argv"]
    sys.path[:] = [*launch["path"], *(p for p in sys.path if p not in launch["path"])]
    from batchscore.udfs.model import cache as model_cache  # noqa: PLC0415 - imported by the preload already

    model_cache.mark_daemon(launched_at=float(launch.get("launched_at", time.time())))
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
    return True


_STARTED_WITH = dict(os.environ)  # the environment the imports ran under
_started: list[subprocess.Popen[bytes]] = []  # driver side: the pre-started daemons of this process


def _prestarted(path: str) -> None:
    """Listen, preload, then take over the first launched daemon that matches (or end when the
    driver closes our stdin: its process ended without needing us)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(path)  # first: a launch that comes early waits for the preload, not falls back
            listener.listen(4)
            preload()
            while True:
                ready = select.select([listener, sys.stdin], [], [])[0]
                if listener in ready:
                    conn, _ = listener.accept()
                    with conn:
                        if _take_over(conn):
                            break
                elif sys.stdin in ready:
                    return
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    _serve()


def start_prestarted(conf: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """Driver side, before the JVM starts: start a pre-started daemon for a session of `conf`
    and point this process's environment (which the JVM and its daemon inherit) at it."""
    folder = tempfile.mkdtemp(prefix="batchscore-daemon-")  # 0700: only this user connects
    path = os.path.join(folder, "daemon.sock")
    try:
        proc = subprocess.Popen([sys.executable, "-m", MODULE, PRESTART_FLAG, path], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, env=worker_environment(conf))
    except OSError:
        return None
    os.environ[PRESTARTED_ENV] = path
    _started.append(proc)  # its stdin pipe stays open while this process lives: closed, it ends
    return proc


def worker_environment(conf: dict[str, str]) -> dict[str, str]:
    """This process's environment as PySpark's local daemon will get it: the executor
    environment of `conf`, PYTHONHASHSEED (PySpark's default 0) and OMP_NUM_THREADS (Spark
    caps it at the executor's cores, 1 in local mode, unless the executor environment sets it)."""
    env = {**os.environ, **{k.removeprefix("spark.executorEnv."): v for k, v in conf.items()
                            if k.startswith("spark.executorEnv.")}}
    env.setdefault("PYTHONHASHSEED", "0")
    if "spark.executorEnv.OMP_NUM_THREADS" not in conf:
        env["OMP_NUM_THREADS"] = conf.get("spark.executor.cores", "1")
    return env


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == PRESTART_FLAG:
        _prestarted(sys.argv[2])
    else:
        main()
