"""Keep TensorFlow's start-up chatter out of a job's output unless `--verbose`.

The lines it prints when imported and first run (`cpu_feature_guard` "This TensorFlow
binary is optimized to use...", "oneDNN custom operations are on ... TF_ENABLE_ONEDNN_OPTS",
absl's "All log messages before absl::InitializeLog() ...") are C++ INFO logs. TensorFlow's
C++ logger reads `TF_CPP_MIN_LOG_LEVEL` once, so the level is set before any import of
TensorFlow, in the driver and in the executors' environment; the lines its libraries print
while loading, before that, are held to the same level where it is imported
(udfs/model/tf_startup.py: here through an import hook, in the workers by `import_tensorflow`).
Python-side warnings go through the `tensorflow` and `absl` loggers. oneDNN itself stays as it
is (`TF_ENABLE_ONEDNN_OPTS` changes numerics; only its message is hidden).
"""
from __future__ import annotations

import logging
import os

from batchscore.udfs.model import tf_startup

TF_LOG_LEVEL = tf_startup.LEVEL_ENV
QUIET_LEVEL = "2"  # errors still show
EXECUTOR_ENV = f"spark.executorEnv.{TF_LOG_LEVEL}"


def quiet_tensorflow_start() -> None:
    """Before this process imports TensorFlow: the level at `QUIET_LEVEL` unless the environment
    sets one, and the lines TensorFlow prints while loading, before it reads the level, held to it."""
    os.environ.setdefault(TF_LOG_LEVEL, QUIET_LEVEL)
    tf_startup.hold_startup_logs_on_import()


def tensorflow_logs(*, verbose: bool) -> dict[str, str]:
    """Set the driver's TF log level (before TF is imported); returns the Spark conf that gives
    the executors' Python workers the same level (local workers inherit the driver's env).

    Quiet keeps a level the caller's environment already sets; `verbose` shows everything.
    """
    if verbose:
        os.environ[TF_LOG_LEVEL] = "0"
    else:
        quiet_tensorflow_start()
        for name in ("tensorflow", "absl", "py4j"):  # py4j: "Closing down clientserver connection"
            logging.getLogger(name).setLevel(logging.WARNING if name == "py4j" else logging.ERROR)
    return {EXECUTOR_ENV: os.environ[TF_LOG_LEVEL]}
