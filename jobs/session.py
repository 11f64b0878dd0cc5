"""The one place a SparkSession is built from a config's `spark:` section."""
from __future__ import annotations

import os
import sys
from typing import Any

from batchscore import conf_dir, package_root
from batchscore.udfs.delta_output import DELTA_CATALOG, DELTA_EXTENSION

PROJECT_ROOT = package_root()  # what workers need on their path to import batchscore

# Settings the engine relies on unless the config says otherwise.
ENGINE_DEFAULTS = {
    "spark.python.worker.reuse": "true",  # keeps the model loaded once per worker
    "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.enabled": "false",  # a batch job: the web UI's server costs start-up time (set true to keep it)
}
# Added for local masters only: one machine, so few shuffle partitions (the default 200
# would be 200 tiny tasks for any shuffle a user's filter or table brings in).
LOCAL_DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
}
LOG_CONFIG = os.path.join(conf_dir(), "log4j2.properties")
# `make jars` puts Spark's connectors (hadoop-aws + AWS SDK, delta-spark) here.
CONNECTOR_JARS_DIR = os.path.join(PROJECT_ROOT, "jars", "lib", "spark")
JARS_ENV = "BATCHSCORE_JARS"  # "none": add no jars (the cluster has them); or a folder of jars
# Where a config or spark-submit puts jars: delta-spark among them turns Delta's extension on.
_JAR_KEYS = ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")


def connector_jars() -> list[str]:
    """The connector jars a session built here puts on its classpath (sorted paths).

    Those of `make jars` (`jars/lib/spark/*.jar` in a checkout), or of the folder in
    $BATCHSCORE_JARS; none when that is `none` or the folder holds no jars.
    """
    folder = os.environ.get(JARS_ENV, "").strip() or CONNECTOR_JARS_DIR
    if folder.lower() == "none" or not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".jar"))


def _with_connector_jars(conf: dict[str, str], master: str) -> None:
    """Add `connector_jars()` to `conf` (in place), after any classpath the config sets.

    Local masters (`local[...]`, `local-cluster[...]`) put the jars straight on the driver's
    and executors' JVM classpath: nothing is copied per session (the AWS SDK bundle alone is
    ~640 MB). Other masters ship them with `spark.jars`.
    """
    jars = connector_jars()
    if not jars:
        return
    if master.startswith("local"):
        for key in ("spark.driver.extraClassPath", "spark.executor.extraClassPath"):
            conf[key] = os.pathsep.join(p for p in (conf.get(key, ""), *jars) if p)
    else:
        conf["spark.jars"] = ",".join(p for p in (conf.get("spark.jars", ""), *jars) if p)


def with_delta(conf: dict[str, str], *, given: dict[str, str] | None = None) -> None:
    """Add Delta Lake's extension and catalog to `conf` (in place) when delta-spark is on its classpath.

    The jar is looked for in the classpath settings of `conf` and of `given` (what spark-submit
    was already given). An extension list the config sets keeps its entries (Delta's is
    appended); a `spark_catalog` it sets wins.
    """
    settings = {**(given or {}), **conf}
    if not any("delta-spark" in settings.get(k, "") for k in _JAR_KEYS):
        return
    extensions = [e.strip() for e in settings.get("spark.sql.extensions", "").split(",") if e.strip()]
    if DELTA_EXTENSION not in extensions:
        conf["spark.sql.extensions"] = ",".join([*extensions, DELTA_EXTENSION])
    if "spark.sql.catalog.spark_catalog" not in settings:
        conf["spark.sql.catalog.spark_catalog"] = DELTA_CATALOG


def under_spark_submit() -> bool:
    """True when spark-submit launched this process (it owns the master and the code)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_is_shared() -> bool:
    """True when the session a job gets is not the job's to stop: on Databricks (the
    cluster's session, shared by every notebook and job task on it) or when a SparkContext
    is already running in this process (a notebook or pipeline called the job)."""
    from pyspark import SparkContext  # noqa: PLC0415 - pyspark is the job's optional extra

    return "DATABRICKS_RUNTIME_VERSION" in os.environ or SparkContext._active_spark_context is not None


def build_session(spark_conf: dict[str, Any] | None = None, app_name: str = "batchscore") -> Any:
    """Build (or get) the SparkSession for a job.

    `spark.master` from the config is honoured only when not run by spark-submit;
    Python workers use this interpreter unless PYSPARK_PYTHON says otherwise;
    `connector_jars()` go on the classpath (not under spark-submit: ./spark-submit.sh adds them);
    with delta-spark among the jars, Delta's SQL extension and catalog are set (`with_delta`).
    """
    from pyspark.sql import SparkSession  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    conf = {**ENGINE_DEFAULTS, **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                  for k, v in (spark_conf or {}).items()}}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # inherited by local Python workers
    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        master = conf.pop("spark.master", "local[*]")
        if master.startswith("local"):
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
            conf = {**LOCAL_DEFAULTS, **conf}
        builder = builder.master(master)
        _with_connector_jars(conf, master)
        with_delta(conf)
        if os.path.isfile(LOG_CONFIG):  # quiet driver logs, as ./spark-submit.sh does
            conf.setdefault("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{LOG_CONFIG}")
        # The workers' interpreter is read from the driver's environment.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # Local Python workers import `udfs` from this checkout.
        path = os.environ.get("PYTHONPATH", "")
        if PROJECT_ROOT not in path.split(os.pathsep):
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (PROJECT_ROOT, path) if p)
    else:
        conf.pop("spark.master", None)
        # --conf / --properties-file given to spark-submit win over the config file
        # and the engine's defaults
        from pyspark import SparkConf, SparkContext  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

        SparkContext._ensure_initialized()
        given = SparkConf()
        conf = {k: v for k, v in conf.items() if not given.contains(k)}
        with_delta(conf, given=dict(given.getAll()))
    for k, v in conf.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()
