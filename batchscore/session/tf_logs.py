"""Keep TensorFlow's start-up chatter out of a job's output unless `--verbose`.

The lines it prints when imported and first run (`cpu_feature_guard` "This TensorFlow
binary is optimized to use...", "oneDNN custom operations are on ... TF_ENABLE_ONEDNN_OPTS",
absl's "All log messages before absl::InitializeLog() ...") are C++ INFO logs; TensorFlow's
C++ logger reads `TF_CPP_MIN_LOG_LEVEL` once, when it is loaded, so the level is set before
any import of TensorFlow, in the driver and in the executors' environment. Python-side
warnings go through the `tensorflow` and `absl` loggers. oneDNN itself stays as it is
(`TF_ENABLE_ONEDNN_OPTS` changes numerics; only its message is hidden).
"""
from __future__ import annotations

import logging
import os

TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LEVEL = "2"  # errors still show
EXECUTOR_ENV = f"spark.executorEnv.{TF_LOG_LEVEL}"


def tensorflow_logs(*, verbose: bool) -> dict[str, str]:
    """Set the driver's TF log level (before TF is imported); returns the Spark conf that gives
    the executors' Python workers the same level (local workers inherit the driver's env).

    Quiet keeps a level the caller's environment already sets; `verbose` shows everything.
    """
    if verbose:
        os.environ[TF_LOG_LEVEL] = "0"
    else:
        os.environ.setdefault(TF_LOG_LEVEL, QUIET_LEVEL)
        for name in ("tensorflow", "absl", "py4j"):  # py4j: "Closing down clientserver connection"
            logging.getLogger(name).setLevel(logging.WARNING if name == "py4j" else logging.ERROR)
    return {EXECUTOR_ENV: os.environ[TF_LOG_LEVEL]}
