"""TensorFlow's start-up lines held to TF_CPP_MIN_LOG_LEVEL (udfs/model/tf_startup.py): in Spark's
Python daemon as the JVM launches it, in a driver that imports Keras, and real errors still shown."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from batchscore.udfs import daemon
from tests.scoring.test_progress import TF_CHATTER

ROOT = Path(__file__).resolve().parents[2]


def _env(level: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", daemon.PRESTARTED_ENV)}
    env.update(PYTHONPATH=str(ROOT), PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return env


def _daemon_stderr(level: str) -> str:
    """Start the daemon as PySpark's worker factory does, wait until it serves (its port on stdout:
    TensorFlow is imported by then), end it by closing its stdin; its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", daemon.MODULE, "pyspark.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(level), cwd=ROOT)
    assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
    port = proc.stdout.read(4)
    proc.stdin.close()  # PySpark's daemon loop ends at the end of its stdin
    err = proc.stderr.read().decode()  # until the daemon exits (status 1, as PySpark's daemon ends)
    proc.wait(timeout=60)
    assert len(port) == 4, err[-3000:]
    return err


@pytest.mark.slow
def test_daemon_imports_tensorflow_quietly_and_level_0_shows_its_start_up_lines() -> None:
    quiet = _daemon_stderr("2")
    assert "TensorFlow not preloaded" not in quiet, quiet
    assert not TF_CHATTER.search(quiet), quiet
    shown = _daemon_stderr("0")  # --verbose: the same daemon prints them
    assert "absl::InitializeLog" in shown and "oneDNN custom operations" in shown, shown


@pytest.mark.slow
def test_driver_that_asked_for_quiet_logs_imports_keras_and_tensorflow_quietly() -> None:
    code = ("from batchscore.session.tf_logs import tensorflow_logs; tensorflow_logs(verbose=False)\n"
            "import keras, tensorflow as tf\n"
            "print(float(tf.reduce_sum(tf.constant([1.0, 2.0]))), keras.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env(None), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["3.0", "keras"]
    assert not TF_CHATTER.search(proc.stderr), proc.stderr


def test_held_stderr_keeps_errors_warnings_and_a_crashing_process_last_line() -> None:
    code = r"""
import os, sys, warnings
from batchscore.udfs.model import tf_startup
with tf_startup.held_to_log_level():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1796685586.273733   17929 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"W1207 23:15:37.123456   17929 some.cc:1] a warning below level 2\n")
    os.write(2, b"2026-01-30 22:44:42.456316: I tensorflow/core/util/port.cc:153] an info line\n")
    os.write(2, b"E1207 23:15:37.123456   17929 some.cc:2] an error\n")
    os.write(2, b"2026-01-30 22:44:42.456316: E tensorflow/core/some.cc:3] another error\n")
    print("python's stderr", file=sys.stderr)
    warnings.warn("a Python warning")
print("after", file=sys.stderr)
with tf_startup.held_to_log_level():
    os.write(2, b"F0000 00:00:1796685586.273733   17929 some.cc:4] fatal: aborting\n")
    os.abort()
"""
    proc = subprocess.run([sys.executable, "-c", code], env=_env("2"), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.splitlines() == [
        "E1207 23:15:37.123456   17929 some.cc:2] an error",
        "2026-01-30 22:44:42.456316: E tensorflow/core/some.cc:3] another error",
        "python's stderr",
        "<string>:12: UserWarning: a Python warning",
        "after",
        "F0000 00:00:1796685586.273733   17929 some.cc:4] fatal: aborting",
    ]


def test_level_0_leaves_stderr_alone() -> None:
    code = ("import os\nfrom batchscore.udfs.model import tf_startup\n"
            "with tf_startup.held_to_log_level():\n"
            "    os.write(2, b'I0000 00:00:1796685586.273733   17929 port.cc:153] oneDNN custom operations are on.\\n')\n"
            "    print(os.readlink('/proc/self/fd/2') == os.readlink('/proc/self/fd/1'))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_env("0"), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.stdout.splitlines() == [
        "I0000 00:00:1796685586.273733   17929 port.cc:153] oneDNN custom operations are on.", "True"]
