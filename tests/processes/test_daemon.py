"""The Python daemon that imports TensorFlow before forking, and the pre-started one a local
job starts while its JVM starts (udfs/daemon.py): real processes, PySpark's real daemon loop,
and (tests/scoring/test_cold_start.py) real cold scoring jobs whose workers come from it."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from batchscore.udfs import daemon

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ("import sys; from batchscore.udfs import daemon; pid = daemon._hand_over(sys.argv[1]); "
          "print('PID', pid, file=sys.stderr, flush=True); pid and daemon._stand_in(pid)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != daemon.PRESTARTED_ENV}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **extra}


def _prestart(path: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", daemon.MODULE, daemon.PRESTART_FLAG, path],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)


def _launch(path: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A stand-in for the JVM's daemon launch: stdin/stdout pipes, the worker module as argv[1]."""
    return subprocess.Popen([sys.executable, "-c", LAUNCH, path, "pyspark.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_gone(proc: subprocess.Popen[bytes], seconds: float = 20) -> int:
    return proc.wait(timeout=seconds)


def test_prestarted_daemon_takes_over_a_matching_launch_and_refuses_another() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "daemon.sock")
        pre = _prestart(path, _env())
        try:
            # A launch whose environment differs in a variable the imports read is refused
            # (it serves by itself), and the pre-started daemon waits for the next one.
            other = _launch(path, _env(OMP_NUM_THREADS="2"))
            _, err = other.communicate(timeout=120)
            assert b"PID None" in err
            assert pre.poll() is None
            launch = _launch(path, _env())
            assert launch.stdout is not None and launch.stdin is not None
            port = struct.unpack("!i", launch.stdout.read(4))[0]  # PySpark's daemon writes its port first
            assert 0 < port < 65536
            # The daemon serving that port is the pre-started process, and it did the imports.
            ps = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False)
            if ps.returncode == 0 and ps.stdout:
                assert f"pid={pre.pid}," in ps.stdout
            assert not os.path.exists(path), "the socket is removed once taken over"
            # Spark stops its daemon by closing its stdin: the pre-started daemon ends, then the stand-in.
            launch.stdin.close()
            assert _wait_gone(launch) == 0
            pre.wait(timeout=20)
        finally:
            for p in (pre,):
                if p.poll() is None:
                    p.kill()


def test_unclaimed_prestarted_daemon_ends_with_its_driver() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "daemon.sock")
        pre = _prestart(path, _env())
        deadline = time.time() + 60
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.1)
        assert pre.stdin is not None
        pre.stdin.close()  # the driver's process ended
        assert pre.wait(timeout=120) == 0
        assert not os.path.exists(os.path.dirname(path)) or not os.path.exists(path)


def test_worker_environment_mirrors_what_spark_gives_local_workers() -> None:
    env = daemon.worker_environment({"spark.executorEnv.FOO": "bar"})
    assert env["FOO"] == "bar" and env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONHASHSEED"] == os.environ.get("PYTHONHASHSEED", "0")
    assert daemon.worker_environment({"spark.executorEnv.OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"
    assert daemon.worker_environment({"spark.executor.cores": "4"})["OMP_NUM_THREADS"] == "4"
