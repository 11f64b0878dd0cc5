"""Delta Lake output (`output.format: delta`): the scored rows committed by Delta's own transaction log.

The run scores into staging exactly as for Parquet output; then the staged `ok` rows are
written to the table in one Delta commit (no rename publish: a reader sees the table
before or after the commit, never half of it), the quarantine is published as Parquet
the usual way, and the manifest is written last, inside the table's directory (Delta
reads only `_delta_log`, so `_manifest.json` beside the data files is ignored by it).
A rerun of the same `run_id` is idempotent (`txn_app_id`); the modes are in `commit_ok_rows`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from batchscore.core.columns import BAD_COLUMN, REASON_COLUMN
from batchscore.core.errors import ConfigError, SchemaError
from batchscore.core.session_kind import is_connect
from batchscore.output import publish
from batchscore.output.filesystem import FileSystem
from batchscore.output.manifest import MANIFEST_NAME

log = logging.getLogger("batchscore")

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
TXN_VERSION = 0  # one commit per run id: the app id names the run, the version never moves
_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"


@dataclass(frozen=True)
class DeltaCommit:
    """What the Delta write did."""

    version: int | None  # the table version committed; None: no commit
    rows: int  # rows in that commit (its operationMetrics' numOutputRows)
    skipped: bool = False  # Delta skipped the write: this run id had committed already


def txn_app_id(run_id: str) -> str:
    """Delta's `txnAppId` of a run: the same run id, the same app id.

    Every commit carries it with `txnVersion` `TXN_VERSION` (0), and Delta skips a write whose
    app id has already committed that version: a rerun of the same `run_id` appends nothing.
    """
    return f"batchscore-{run_id}"


def check_delta_output(spark: Any, fs: FileSystem, out_path: str) -> None:
    """Refuse `output.format: delta` where it cannot work, before anything is scored.

    Raises:
        ConfigError: the session has no Delta Lake (jar and extension), or `output.path`
            holds data that is not a Delta table.
    """
    if not delta_session(spark):
        raise ConfigError(
            "output.format 'delta' needs a session with Delta Lake: the delta-spark jar on the classpath "
            f"(`make jars`, or the cluster's) and spark.sql.extensions={DELTA_EXTENSION}, "
            f"spark.sql.catalog.spark_catalog={DELTA_CATALOG} set when the session starts")
    if fs.exists(out_path) and not fs.exists(f"{out_path}/_delta_log") and any(
            not name.startswith(("_", ".")) for name, _ in fs.list(out_path)):
        raise ConfigError(f"output.path '{out_path}' holds data but is not a Delta table "
                          "(output.format is 'delta'); write somewhere else or remove it")


def delta_session(spark: Any) -> bool:
    """Whether the session can write Delta: on Databricks, or Delta's extension is set and its classes load."""
    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return True
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if DELTA_EXTENSION not in extensions.split(","):
        return False
    if is_connect(spark):  # the server's classpath is not visible from a client: its extension conf says it
        return True
    jvm = spark.sparkContext._jvm
    try:
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable", False,
                                    jvm.java.lang.Thread.currentThread().getContextClassLoader())
    except Exception:  # noqa: BLE001 - py4j's error for ClassNotFoundException: not on the classpath
        return False
    return True


def publish_delta(spark: Any, fs: FileSystem, *, staging: str, scored: Any, out_path: str, q_path: str,
                  mode: str, partition_by: list[str], run_id: str, rows_scored: int) -> DeltaCommit:
    """Commit the staged `ok` rows to the Delta table at `out_path`, then publish the quarantine.

    Raises:
        RuntimeError: Delta's commit holds another number of rows than were staged.
    """
    rescored = publish.partitions_in(fs, staging) if mode == "overwrite_partitions" and partition_by else None
    commit = commit_ok_rows(spark, fs, staging=staging, scored=scored, out_path=out_path, mode=mode,
                            partition_by=partition_by, run_id=run_id, rescored=rescored)
    if commit.skipped:
        log.info("Delta table %s: run %s committed already (txnAppId %s); nothing appended",
                 out_path, run_id, txn_app_id(run_id))
        if _manifest_run_id(spark, fs, out_path) == run_id:
            return commit  # that run published its quarantine and manifest too
    elif commit.version is not None and commit.rows != rows_scored:
        raise RuntimeError(f"accounting failed: Delta commit {commit.version} of {out_path} holds "
                           f"{commit.rows} rows, {rows_scored} were scored")
    publish_quarantine(fs, staging=staging, q_path=q_path, mode=mode, run_id=run_id, rescored=rescored)
    return commit


def commit_ok_rows(spark: Any, fs: FileSystem, *, staging: str, scored: Any, out_path: str, mode: str,
                   partition_by: list[str], run_id: str, rescored: set[str] | None) -> DeltaCommit:
    """One Delta write of the staged `ok` rows in `mode` (idempotent per run id).

    Modes: `error` (the table must not exist), `overwrite`, `append`, and
    `overwrite_partitions`: an overwrite with `replaceWhere` over exactly the partitions this
    run rescored (`rescored`: good or bad rows alike), so a partition whose rows are all
    quarantined now keeps no stale rows, and every other partition is untouched.

    Raises:
        SchemaError: Delta refuses the rows (another schema or partitioning than the table's).
    """
    schema = scored.drop(REASON_COLUMN, BAD_COLUMN).schema
    ok = publish.ok_dir(staging)
    if fs.exists(ok):  # the staged schema as written, partition values typed by it (not inferred)
        rows = spark.read.schema(schema).option("basePath", ok).parquet(ok).select(*schema.fieldNames())
    else:
        rows = spark.createDataFrame([], schema)
    writer = (rows.write.format("delta").partitionBy(*partition_by)
              .option("txnAppId", txn_app_id(run_id)).option("txnVersion", TXN_VERSION))
    if rescored is not None and fs.exists(f"{out_path}/_delta_log"):
        if not rescored:
            return DeltaCommit(None, 0)  # nothing rescored: no partition to replace
        writer = writer.mode("overwrite").option("replaceWhere", replace_where(rescored, schema))
    else:  # overwrite_partitions of a table not there yet: it is made
        # "error", not its alias "errorifexists": Spark Connect's writer knows the first only
        writer = writer.mode("overwrite" if mode == "overwrite_partitions" else mode)
    before = latest_commit(spark, fs, out_path)
    try:
        writer.save(out_path)
    except Exception as e:
        if type(e).__name__ != "AnalysisException":  # pyspark's, raised by Delta's schema checks
            raise
        raise SchemaError(f"output.path '{out_path}': the scored rows do not fit the Delta table "
                          f"({str(e).splitlines()[0][:300]})") from None
    after = latest_commit(spark, fs, out_path)
    if after is None or (before is not None and after[0] == before[0]):
        return DeltaCommit(None, 0, skipped=True)
    return DeltaCommit(after[0], after[1])


def replace_where(partitions: set[str], schema: Any) -> str:
    """A `replaceWhere` predicate matching exactly `partitions` (`k=v/k2=v2` directory paths,
    values escaped as Spark writes them), typed by `schema`."""
    types = {f.name: f.dataType.simpleString() for f in schema.fields}
    clauses = []
    for rel in sorted(partitions):
        terms = []
        for level in rel.split("/"):
            key, raw = (unquote(x) for x in level.split("=", 1))
            if raw == _NULL_PARTITION:
                terms.append(f"`{key}` IS NULL")
            else:
                literal = raw.replace("\\", "\\\\").replace("'", "\\'")
                terms.append(f"`{key}` = CAST('{literal}' AS {types[key]})")
        clauses.append("(" + " AND ".join(terms) + ")")
    return " OR ".join(clauses)


def latest_commit(spark: Any, fs: FileSystem, path: str) -> tuple[int, int] | None:
    """(version, numOutputRows) of the Delta table's latest commit; None if it is not a Delta table."""
    if not fs.exists(f"{path}/_delta_log"):
        return None
    quoted = path.replace("`", "``")
    (row,) = spark.sql(f"DESCRIBE HISTORY delta.`{quoted}` LIMIT 1").select("version", "operationMetrics").collect()
    metrics = row["operationMetrics"] or {}
    return int(row["version"]), int(metrics.get("numOutputRows", 0))


def publish_quarantine(fs: FileSystem, *, staging: str, q_path: str, mode: str, run_id: str,
                       rescored: set[str] | None) -> None:
    """The staged bad rows to `q_path` as Parquet, by renames, as for Parquet output."""
    new_q = publish.build_quarantine_tree(fs, staging, run_id, q_path)
    try:
        if rescored is not None:
            publish.drop_stale_partitions(fs, q_path, new_q, rescored, skip=2)
        publish.publish_quarantine(fs, new_q, q_path, mode, run_id)
        new_q = None
    finally:
        publish.cleanup(fs, new_q)


def _manifest_run_id(spark: Any, fs: FileSystem, out_path: str) -> str | None:
    """The run id in the manifest beside the table, if there is a readable one."""
    raw = fs.read_bytes(f"{out_path}/{MANIFEST_NAME}")
    if raw is None:
        return None
    try:
        run_id = json.loads(raw).get("run_id")
    except (ValueError, AttributeError):
        return None
    return run_id if isinstance(run_id, str) else None
