"""batchscore: offline batch scoring of TensorFlow models on Apache Spark.

One import root. `batchscore.jobs` (entry points) and `batchscore.udfs` (code that runs in
Spark's Python workers) are the repository's top-level `jobs/` and `udfs/` folders, as the
design card lays them out: the wheel installs them under `batchscore/`, and in a checkout
this package appends the repository root to its own search path so the same imports
resolve there. The driver-side engine lives in this folder's subpackages (core, config,
session, run, output, training, evaluation). Nothing is installed as a top-level `jobs`
or `udfs`.
"""
from __future__ import annotations

import importlib
import os as _os
from typing import Any

__version__ = "0.2.0"

_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "udfs")) and _os.path.isfile(
    _os.path.join(_checkout, "udfs", "__init__.py")
):
    __path__.append(_checkout)  # a checkout: batchscore.udfs -> <repo>/udfs, batchscore.jobs -> <repo>/jobs


def package_root() -> str:
    """The directory that holds the `batchscore` package (a checkout's root, or site-packages):
    what Python workers need on their path to import the engine."""
    return _checkout


def conf_dir() -> str:
    """The shipped `conf/` examples and profiles: `<checkout>/conf`, or `batchscore/conf` when installed."""
    inside = _os.path.join(_here, "conf")
    return inside if _os.path.isdir(inside) else _os.path.join(_checkout, "conf")


_API = ("score_dataframe", "predict_udf", "TaskStats")


def __getattr__(name: str) -> Any:
    """`batchscore.score_dataframe`, `batchscore.predict_udf` and `batchscore.TaskStats`, imported
    on first use, so `import batchscore` stays light (no pyspark, no TensorFlow). Typed Any for callers: the
    import contracts keep this module from importing batchscore.api, even for type checkers."""
    if name in _API:
        api = importlib.import_module("batchscore.api")  # on first use: pyspark and TF stay unloaded
        return getattr(api, name)
    raise AttributeError(f"module 'batchscore' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
