"""Remove two fixed costs every PySpark task pays in a worker that holds TensorFlow.

Both are per *task*, not per row, some tenths of a second each, and both were found with py-spy on
the benchmark's Python workers (bench/README.md, "Where the time goes"): the `gc.collect()`
`pyspark.daemon` runs after every task (`freeze_long_lived_objects`), and the zip archives
`importlib.invalidate_caches()` makes re-read before every task (`keep_spark_zip_directories`).

Nothing here changes what a task computes.
"""
from __future__ import annotations

import gc
import os
import re
import sys
import zipimport

# Spark's own archives: pyspark.zip and py4j-<version>-src.zip under $SPARK_HOME/python/lib,
# and the spark-core_<scala>-<version>.jar Spark adds to the workers' PYTHONPATH
_SPARK_LIB_ZIP = re.compile(r"^(pyspark\.zip|py4j-[\w.]+-src\.zip|spark-[\w.-]+\.jar)$")


def freeze_long_lived_objects() -> None:
    """Exclude what exists now (TF, the loaded models) from every later gc pass.

    After every task, `pyspark.daemon` runs `gc.collect()` in the worker. With TensorFlow
    and a model loaded a worker holds ~400k tracked objects and one full collection takes
    ~0.3 s; frozen, those long-lived objects are out of the collector's reach, so the
    collection only walks what the tasks themselves allocated.

    Called after each model load (rare: once per model per worker). Frozen objects
    are still freed by reference counting; only reference cycles among them stay.
    """
    gc.collect()  # free what loading left behind before freezing the survivors
    gc.freeze()


def _keep_directory() -> None:
    """An archive that does not change needs no re-read."""


def keep_spark_zip_directories() -> int:
    """Stop Spark's zip importers re-reading their archives at each task; returns how many were changed.

    Before every task, `pyspark.worker` calls `importlib.invalidate_caches()`. On Python
    3.10 and 3.11 a zipimporter answers by re-reading its archive's whole directory, and the
    worker holds one zipimporter per imported package of Spark's `pyspark.zip` (CPython
    gh-103200, fixed in 3.12; SPARK-54744 in Spark after 4.1). Spark also puts its
    `spark-core` jar (5,000+ entries) on the workers' PYTHONPATH, and TensorFlow's `google.*`
    namespace imports leave zipimporters on it too: together ~0.3-0.5 s per task. Spark's
    own archives do not change while a worker lives, so their importers keep their directory.
    """
    if sys.version_info >= (3, 12):  # invalidation is lazy there (gh-103200)
        return 0
    changed = 0
    for finder in list(sys.path_importer_cache.values()):
        if (type(finder) is zipimport.zipimporter
                and "invalidate_caches" not in vars(finder)
                and _SPARK_LIB_ZIP.match(os.path.basename(finder.archive))):
            finder.invalidate_caches = _keep_directory  # type: ignore[method-assign]
            changed += 1
    return changed
