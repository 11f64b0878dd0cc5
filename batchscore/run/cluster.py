"""What the driver knows of the cluster, the same way for classic and Spark Connect sessions.

A classic session answers from its SparkContext (the conf, the master, the default
parallelism, the live executors' task slots); a Connect client has only the session's
conf (`spark.conf.getAll`) and, when the conf does not say, one small job that counts
the partitions `spark.range` gets (the default parallelism).
"""
from __future__ import annotations

import re
from typing import Any

from batchscore.core.session_kind import is_connect

_LOCAL = re.compile(r"^local(?:-cluster)?\[\s*(\*|\d+)")
_PROBE_ROWS = 1 << 20


def spark_conf(spark: Any) -> dict[str, str]:
    """The session's Spark conf, as strings."""
    if is_connect(spark):
        return {k: str(v) for k, v in spark.conf.getAll.items()}
    return dict(spark.sparkContext.getConf().getAll())


def master(spark: Any) -> str:
    """`spark.master` (`local[2]`, `yarn`, ...), as the session's conf gives it."""
    if is_connect(spark):
        return str(spark.conf.get("spark.master", "") or "")
    return str(spark.sparkContext.master)


def default_parallelism(spark: Any) -> int:
    """Spark's default parallelism: the conf's `spark.default.parallelism`, a classic session's
    own figure, a `local[N]` master's N, else the partitions of a `spark.range` (one small job)."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    conf = spark_conf(spark)
    given = _int(conf.get("spark.default.parallelism"))
    if given > 0:
        return given
    m = _LOCAL.match(conf.get("spark.master", ""))
    if m and m.group(1) != "*" and not conf.get("spark.master", "").startswith("local-cluster"):
        return int(m.group(1))
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    probe = spark.range(0, _PROBE_ROWS).select(F.spark_partition_id().alias("p")).agg(F.max("p"))
    return int(probe.first()[0]) + 1


def live_task_slots(spark: Any) -> int:
    """Spark's count of concurrent tasks on the registered executors (0 when unknown, as under Connect)."""
    if is_connect(spark):
        return 0
    try:
        jsc = spark.sparkContext._jsc.sc()
        return int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - a private Spark method: any failure means "not known", the conf decides
        return 0


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0
