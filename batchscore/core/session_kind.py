"""Which kind of Spark session the engine was handed: a classic one (a JVM in this
process, py4j, `sparkContext`) or a Spark Connect client (`SparkSession.builder.remote`,
Databricks serverless and standard access mode, Spark 4's thin client).

The engine takes one path for both; where a classic session allows something faster
(Hadoop's FileSystem through py4j, a broadcast variable, the status tracker), that path
sits behind this one test, never behind a flag the user sets.
"""
from __future__ import annotations

from typing import Any


def is_connect(spark: Any) -> bool:
    """Whether `spark` is a Spark Connect session (no JVM in this process)."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession  # noqa: PLC0415 - the connect client's deps are optional
    except ImportError:  # pyspark without the connect extra: every session is classic
        return False
    return isinstance(spark, ConnectSession)


def is_classic(spark: Any) -> bool:
    """Whether `spark` is a classic session (its JVM reachable through py4j)."""
    return not is_connect(spark)
