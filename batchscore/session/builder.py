"""The one place a SparkSession is built from a config's `spark:` section."""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from batchscore import conf_dir, package_root
from batchscore.core import compat
from batchscore.core.errors import ConfigError
from batchscore.output.delta_output import DELTA_CATALOG, DELTA_EXTENSION

log = logging.getLogger("batchscore")

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
    # The Python daemon imports TensorFlow once, before it forks the workers (udfs/daemon.py);
    # local executors share the driver's environment, so the module is importable there.
    "spark.python.daemon.module": "batchscore.udfs.daemon",
}
LOG_CONFIG = os.path.join(conf_dir(), "log4j2.properties")
JARS_ENV = "BATCHSCORE_JARS"  # "none": add no jars (the cluster has them); or a folder of jars
# Where a config or spark-submit puts jars: delta-spark among them turns Delta's extension on.
_JAR_KEYS = ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")


def jars_folder(kind: str = "spark") -> str:
    """The folder of jars `make jars` fetched for this pyspark's Spark, one per Spark the project tests.

    Args:
        kind: `spark` (the connectors a session puts on its classpath) or `hdfs` (the test
            MiniDFSCluster's jars).

    Returns:
        `jars/lib/<kind>` (Spark 4, `make jars`) or `jars/lib-spark3.5/<kind>` (Spark 3.5,
        `make jars-lts`) in this checkout.
    """
    return os.path.join(PROJECT_ROOT, "jars", compat.jars_folder_name(), kind)


def connector_jars() -> list[str]:
    """The connector jars a session built here puts on its classpath (sorted paths).

    Those of `make jars` for this pyspark (`jars_folder()`: `jars/lib/spark/*.jar` in a
    checkout on Spark 4), or of the folder in $BATCHSCORE_JARS; none when that is `none` or
    the folder holds no jars.
    """
    folder = os.environ.get(JARS_ENV, "").strip() or jars_folder()
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


def local_driver_class_path(conf: dict[str, str] | None = None) -> str:
    """`spark.driver.extraClassPath` of a local session built here from `conf`
    (the connector jars after the config's own)."""
    given = dict(conf or {})
    _with_connector_jars(given, "local")
    return given.get("spark.driver.extraClassPath", "")


def _with_class_archive(conf: dict[str, str], dump: str | None) -> None:
    """Add the JVM class-data archive (batchscore/session/jvm_cache.py) to the driver's Java options, in place:
    use it when one exists for this classpath, or dump one to `dump` when the JVM exits."""
    from batchscore.session import jvm_cache  # noqa: PLC0415 - imports pyspark

    class_path = conf.get("spark.driver.extraClassPath", "")
    extra = (f"-XX:ArchiveClassesAtExit={dump} {jvm_cache.QUIET}" if dump else jvm_cache.java_options(class_path))
    if extra:
        key = "spark.driver.extraJavaOptions"
        conf[key] = " ".join(p for p in (conf.get(key, ""), extra) if p)


# S3A settings taken from the standard AWS environment when the config leaves them unset.
S3A = "spark.hadoop.fs.s3a."


def s3a_env_conf(env: Mapping[str, str]) -> dict[str, str]:
    """S3A settings from the standard AWS environment variables (never the keys themselves).

    `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (an S3-compatible store: MinIO, Ceph, a test
    server) set the endpoint with path-style access and the region (`AWS_REGION`,
    `AWS_DEFAULT_REGION`, else us-east-1), and pass the endpoint to the executors' pyarrow
    (the Arrow lane); `AWS_PROFILE` without `AWS_ACCESS_KEY_ID` reads that profile. The keys
    stay in the environment, where S3A's default credential chain (and pyarrow's) reads
    them, so they never enter the Spark conf, its logs or the manifest. Nothing is set on
    plain AWS with keys or an instance role: S3A's defaults work there.
    """
    conf: dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        conf[S3A + "endpoint"] = endpoint
        conf[S3A + "path.style.access"] = "true"
        conf[S3A + "endpoint.region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        conf["spark.executorEnv.AWS_ENDPOINT_URL_S3"] = endpoint
    if env.get("AWS_PROFILE") and not env.get("AWS_ACCESS_KEY_ID"):
        conf[S3A + "aws.credentials.provider"] = compat.s3a_profile_provider()
    return conf


def _with_s3a_env(conf: dict[str, str]) -> dict[str, str]:
    """`conf` with `s3a_env_conf(os.environ)` under it: a key the config sets wins. A config
    that sets its own S3A endpoint (`fs.s3a.endpoint`) gets no other S3A key from here, and
    that endpoint is given to pyarrow too (`AWS_ENDPOINT_URL_S3`, unless the environment
    names one), so both lanes read the same store."""
    env_conf = s3a_env_conf(os.environ)
    endpoint = conf.get(S3A + "endpoint")
    if endpoint:
        env_conf = {k: v for k, v in env_conf.items() if k == S3A + "aws.credentials.provider"}
        # The Arrow lane's pyarrow (driver and executors) reads the same endpoint.
        if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
            os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
            env_conf["spark.executorEnv.AWS_ENDPOINT_URL_S3"] = endpoint
    return {**env_conf, **conf}


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
    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return True
    pyspark = sys.modules.get("pyspark")  # not imported yet: no SparkContext can be running
    return pyspark is not None and pyspark.SparkContext._active_spark_context is not None


REMOTE_KEY = "spark.remote"  # the config's Spark Connect address (pyspark's own key)
REMOTE_ENV = "SPARK_REMOTE"  # pyspark's own variable


def remote_url(given: str | None, spark_conf: Mapping[str, Any] | None, env: Mapping[str, str]) -> str | None:
    """The Spark Connect address a job uses, or None for a classic session.

    The first set of: `given` (`--remote`), the config's `spark.remote`, $SPARK_REMOTE.

    Raises:
        ConfigError: the address chosen is not `sc://host[:port][/;params]`.
    """
    for source, value in (("--remote", given), (REMOTE_KEY, (spark_conf or {}).get(REMOTE_KEY)),
                          (REMOTE_ENV, env.get(REMOTE_ENV))):
        text = str(value).strip() if value is not None else ""
        if text:
            if not text.startswith("sc://") or len(text) <= len("sc://"):
                raise ConfigError(f"{source} {text!r}: expected a Spark Connect address sc://host:port")
            return text
    return None


def _connect_session(url: str, conf: Mapping[str, str], given: Mapping[str, Any]) -> Any:
    """A Spark Connect client session at `url` with the runtime SQL settings of `conf` set on it.

    Every other setting (master, memory, jars, executor environment, static SQL settings)
    belongs to the server; those the config gave (`given`) are logged once as ignored.
    """
    from pyspark.sql.connect.session import SparkSession as ConnectSession  # noqa: PLC0415 - the connect client's deps are optional

    spark = ConnectSession.builder.remote(url).create()  # the job's own: never another session at another address
    # pyspark's own builder marks a process that talks Spark Connect so `pyspark.sql.functions`, UDFs and
    # Observation build Connect plans (`pyspark.sql.utils.is_remote`); its `.create()` above does not.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    ignored = [k for k in conf if not k.startswith("spark.sql.") and k in given and k != REMOTE_KEY]
    for key, value in conf.items():
        if key.startswith("spark.sql."):
            try:
                spark.conf.set(key, value)
            except Exception:  # noqa: BLE001 - a static SQL setting: the server's to set
                if key in given:
                    ignored.append(key)
    if ignored:
        log.info("Spark Connect at %s: settings the server owns are ignored: %s", url, ", ".join(sorted(ignored)))
    return spark


def build_session(spark_conf: dict[str, Any] | None = None, app_name: str = "batchscore", *,
                  class_archive_dump: str | None = None, prestart_daemon: bool = False,
                  remote: str | None = None) -> Any:
    """Build (or get) the SparkSession for a job.

    `spark.master` from the config is honoured only when not run by spark-submit; Python workers
    use this interpreter unless PYSPARK_PYTHON says otherwise; `connector_jars()` go on the classpath
    (not under spark-submit: ./spark-submit.sh adds them); S3A's endpoint and credential source
    come from the AWS environment (`s3a_env_conf`) where the config sets none.
    A local session's driver JVM maps its classes from the class-data archive when `batchscore
    jvm-cache` built one (`class_archive_dump`: build one at exit instead). `prestart_daemon`: a new
    local session's Python daemon imports TensorFlow while the JVM starts (udfs/daemon.py), for
    jobs whose tasks all score. With delta-spark among the jars, Delta's SQL extension and catalog
    are set (`with_delta`). `remote` (a `remote_url`): a Spark Connect client (`_connect_session`).
    """
    from pyspark.sql import SparkSession  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    conf = {**ENGINE_DEFAULTS, **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                  for k, v in (spark_conf or {}).items()}}
    if remote:
        return _connect_session(remote, conf, spark_conf or {})
    conf.pop(REMOTE_KEY, None)  # pyspark's builder would make it a Connect client
    conf = _with_s3a_env(conf)
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
        if master.startswith("local"):
            _with_class_archive(conf, class_archive_dump)
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
    if prestart_daemon and _prestart_applies(conf):
        from batchscore.udfs import daemon  # noqa: PLC0415 - starts nothing on import

        daemon.start_prestarted(conf)
    return builder.getOrCreate()


def _prestart_applies(conf: dict[str, str]) -> bool:
    """A pre-started daemon serves a new local session whose daemon module is ours."""
    from pyspark import SparkContext  # noqa: PLC0415 - pyspark is the optional [spark] extra

    from batchscore.udfs.daemon import MODULE  # noqa: PLC0415 - starts nothing on import

    return (not under_spark_submit() and SparkContext._active_spark_context is None
            and conf.get("spark.python.daemon.module") == MODULE)
