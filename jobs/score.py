"""Score a dataset with a TensorFlow model: `python -m jobs.score --config FILE [--set k=v ...]`.

Exit codes: 0 success; 2 a user error (config, input, model, schema, bad rows
with on_bad_rows=fail), one line `error: ...` on stderr; 1 anything else.
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

from batchscore.jobs import publish
from batchscore.jobs.config import load_config
from batchscore.jobs.fs import HadoopFs
from batchscore.jobs.inputs import read_input
from batchscore.jobs.manifest import to_json
from batchscore.jobs.session import build_session, temporary_conf
from batchscore.udfs import errors as udfs_errors
from batchscore.udfs.arrow_filter import filter_failure
from batchscore.udfs.batching import REASON_COLUMN
from batchscore.udfs.errors import BadRowsError, BatchscoreError, ConfigError, InputError

log = logging.getLogger("batchscore")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _local_abs(path: str) -> str:
    return path if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", path) else os.path.abspath(path)


def _inside(child: str, parent: str) -> bool:
    c, p = child.rstrip("/") + "/", parent.rstrip("/") + "/"
    return c.startswith(p)


def check_paths(fs: HadoopFs, cfg: dict[str, Any]) -> tuple[str, str]:
    """Qualified output and quarantine paths; refuse outputs inside the input or model."""
    out = fs.qualify(_local_abs(cfg["output"]["path"]))
    q = cfg["quarantine"]["path"] or cfg["output"]["path"].rstrip("/") + "_quarantine"
    q = fs.qualify(_local_abs(q))
    sources = {"model.path": fs.qualify(_local_abs(cfg["model"]["path"]))}
    if cfg["input"]["format"] != "table":
        sources["input.path"] = fs.qualify(_local_abs(cfg["input"]["path"]))
    for key, src in sources.items():
        for name, p in (("output.path", out), ("quarantine.path", q)):
            if _inside(p, src) or _inside(src, p):
                raise ConfigError(f"{name} '{p}' overlaps {key} '{src}'; write somewhere else")
    if _inside(q, out) or _inside(out, q):
        raise ConfigError(f"quarantine.path '{q}' overlaps output.path '{out}'")
    return out, q


def translate_spark_error(e: Exception) -> Exception:
    """Turn task failures a user caused into one-line BatchscoreErrors."""
    text = str(e)
    m = re.search(r"BadRowsError: (.+)", text)
    if m:
        return BadRowsError(m.group(1).strip())
    m = re.search(r"udfs\.errors\.(\w+Error): (.+)", text) or re.search(
        r"\b(ModelError|SchemaError|InputError): (.+)", text)
    if m:
        cls = getattr(udfs_errors, m.group(1), None)  # keep the type: InputError stays InputError
        cls = cls if isinstance(cls, type) and issubclass(cls, BatchscoreError) else BatchscoreError
        return cls(m.group(2).strip())
    m = re.search(r"(?:Encountered error while reading file|FAILED_READ_FILE[^\n]*?file) ([^\s.]+(?:\.[^\s.]+)*)", text)
    if m:
        return InputError(f"cannot read input file {m.group(1)} (corrupt or not Parquet?); "
                          "set input.ignore_corrupt_files: true to skip such files")
    return e


def run_scoring(spark: Any, cfg: dict[str, Any], *, run_id: str | None = None) -> dict[str, Any]:
    """Score `input` with `model` into `output` and its quarantine; returns the manifest."""
    from batchscore.udfs.arrow_lane import corrupt_parquet_files  # noqa: PLC0415
    from batchscore.udfs.binding import check_sample  # noqa: PLC0415
    from batchscore.udfs.distribution import make_model_source  # noqa: PLC0415
    from batchscore.udfs.scoring import arrow_schema_of, fixed_row_bytes, plan_scoring, with_predictions  # noqa: PLC0415
    from batchscore.udfs.signature import read_signature  # noqa: PLC0415
    from batchscore.udfs.stats import make_stats_accumulator, model_loads  # noqa: PLC0415

    started, t_start = _now(), time.monotonic()
    run_id = run_id or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:8]
    fs = HadoopFs(spark)
    out_path, q_path = check_paths(fs, cfg)
    mode = cfg["output"]["mode"]
    if mode == "error" and fs.exists(out_path):
        raise ConfigError(f"output.path '{out_path}' exists and output.mode is 'error'; "
                          "choose overwrite, append or overwrite_partitions")
    m = cfg["model"]
    signature = read_signature(_local_abs(m["path"]), m["signature"])
    t_score = time.monotonic()  # seconds_scoring: from the first read to the committed write
    if cfg["input"]["format"] != "table" and not fs.exists(fs.qualify(_local_abs(cfg["input"]["path"]))):
        raise InputError(f"input.path '{cfg['input']['path']}' does not exist")
    try:
        df = read_input(spark, cfg["input"])
    except BatchscoreError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a corrupt file met while Spark infers the schema
        raise translate_spark_error(e) from None
    keep = list(cfg["output"]["keep_columns"])
    parts = list(cfg["output"]["partition_by"])
    keep += [c for c in parts if c not in keep]
    if mode == "overwrite_partitions" and not parts:
        log.warning("output.mode overwrite_partitions without output.partition_by replaces the whole output")
    phases: dict[str, float] = {}
    t_phase = time.monotonic()

    def phase(name: str) -> None:
        nonlocal t_phase
        now = time.monotonic()
        phases[name] = round(now - t_phase, 3)
        t_phase = now

    schema = arrow_schema_of(df)
    source = make_model_source(spark.sparkContext, signature.path, signature.fingerprint, m["distribution"])
    plan = plan_scoring(signature, schema, source, columns=cfg["input"]["columns"],
                        batch_size=m["batch_size"], keep_columns=keep,
                        rename=cfg["output"]["rename"], on_bad_rows=cfg["quarantine"]["on_bad_rows"])
    corrupt: list[str] = []
    if cfg["input"]["ignore_corrupt_files"] and cfg["input"]["format"] == "parquet":
        corrupt = corrupt_parquet_files(spark, cfg["input"]["path"])
        for f in corrupt:
            log.warning("skipping corrupt input file %s (input.ignore_corrupt_files)", f)
    arrow_plan = choose_arrow_plan(spark, cfg["input"], schema, plan.input_columns,
                                   exclude=frozenset(corrupt), df=df)
    try:
        sample = _sample(df, plan, arrow_plan)
    except Exception as e:  # noqa: BLE001 - e.g. a corrupt input file met while sampling
        raise filter_failure(e, cfg["input"]["filter"]) or translate_spark_error(e) from None
    check_sample(plan.feeds, sample)
    acc = make_stats_accumulator(spark.sparkContext)
    phase("read_and_check")
    write_conf = dict(UNSORTED_WRITE)
    if arrow_plan is not None:
        from batchscore.udfs.arrow_lane import with_predictions_from_files  # noqa: PLC0415

        lane = "arrow"
        scored = with_predictions_from_files(spark, arrow_plan, plan, acc)
    else:
        lane = "dataframe"
        scored = with_predictions(df, plan, acc)
        write_conf.update(arrow_batch_conf(spark, fixed_row_bytes(schema, plan)))
    log.info("scoring with the %s lane", lane)
    staging = publish.staging_path(out_path, run_id)
    new_out = new_q = None
    try:
        try:
            phase("plan")
            with temporary_conf(spark, write_conf):
                scored.write.mode("overwrite").partitionBy(REASON_COLUMN, "bs__column", *parts).parquet(staging)
        except Exception as e:  # noqa: BLE001
            raise filter_failure(e, cfg["input"]["filter"]) or translate_spark_error(e) from None
        phase("score_and_write")
        counts = _staged_counts(fs, staging)
        rows_in = _count_input(fs, df, cfg["input"], corrupt)
        rows_scored = counts.pop("ok", 0)
        rows_quarantined = sum(counts.values())
        if rows_in != rows_scored + rows_quarantined:
            raise RuntimeError(
                f"accounting failed: rows_in={rows_in} != rows_scored={rows_scored} + "
                f"rows_quarantined={rows_quarantined}; nothing was published")
        rescored = publish.partitions_in(fs, staging) if mode == "overwrite_partitions" and parts else None
        phase("count")
        new_out = publish.new_output_dir(fs, staging, out_path, run_id)
        if new_out is None and (rescored is None or not fs.exists(out_path)):
            new_out = _write_empty_output(spark, scored, fs, out_path, run_id)
        new_q = publish.build_quarantine_tree(fs, staging, run_id, q_path)
        if rescored is not None:  # a rescored partition keeps no rows of the last run beside the new ones
            publish.drop_stale_partitions(fs, out_path, new_out, rescored, skip=0)
            publish.drop_stale_partitions(fs, q_path, new_q, rescored, skip=2)
        if new_out is not None:
            publish.publish_dir(fs, new_out, out_path, mode, run_id)
            new_out = None
        q_mode = "overwrite" if mode == "error" else mode
        if new_q is not None:
            publish.publish_dir(fs, new_q, q_path, q_mode, run_id)
            new_q = None
        elif q_mode == "overwrite":
            fs.delete(q_path)  # yesterday's bad rows are not today's
        publish.mark_success(fs, out_path)
    finally:
        publish.cleanup(fs, staging, new_out, new_q)
    phase("publish")
    seconds_scoring = time.monotonic() - t_score
    stats = acc.value
    manifest = {
        "status": "succeeded",
        "run_id": run_id,
        "rows_in": rows_in,
        "rows_scored": rows_scored,
        "rows_quarantined": rows_quarantined,
        "quarantine_reasons": counts,
        "model": {"path": signature.path, "fingerprint": signature.fingerprint,
                  "signature": signature.signature, "distribution": m["distribution"],
                  "batch_size": m["batch_size"]},
        "input": {"path": cfg["input"]["path"], "format": cfg["input"]["format"],
                  "filter": cfg["input"]["filter"]},
        "output": {"path": out_path, "mode": mode, "quarantine_path": q_path,
                   "columns": [*keep, *plan.output_names]},
        "lane": lane,
        "started_at": started,
        "finished_at": _now(),
        "seconds_total": round(time.monotonic() - t_start, 3),
        "seconds_scoring": round(seconds_scoring, 3),
        "seconds_by_phase": phases,
        "rows_per_second": round(rows_in / seconds_scoring, 1) if seconds_scoring > 0 else None,
        "model_loads": model_loads(stats),
        "model_calls": stats.get("model_calls", 0),
        "max_rows_per_call": stats.get("max_call_rows", 0),
        "max_rows_per_batch": stats.get("max_batch_rows", 0),
        "python_workers": len(stats.get("loads", {})),
        "peak_worker_rss_mb": round(max(stats.get("peak_rss_mb", {}).values(), default=0), 1),
        "corrupt_files_skipped": len(set(corrupt) | set(arrow_plan.corrupt_files if arrow_plan else []))
        + int(stats.get("corrupt_files", 0)),
        "spark": {"version": spark.version, "master": spark.sparkContext.master},
    }
    fs.write_bytes(f"{out_path}/_manifest.json", to_json(manifest))
    return manifest


def _sample(df: Any, plan: Any, arrow_plan: Any, rows: int = 100) -> Any:
    """The first rows of the array feature columns, as Arrow (for the early length check):
    read with pyarrow on the driver for the Arrow lane, else through a small Spark job."""
    import pyarrow as pa  # noqa: PLC0415

    cols = [f.columns[0] for f in plan.feeds if not f.stacked and f.depth > 0]
    if not cols:
        return pa.table({})
    if arrow_plan is not None:
        from batchscore.udfs.arrow_lane import sample_rows  # noqa: PLC0415

        return sample_rows(arrow_plan, cols, rows)
    sample = df.select(*cols).limit(rows)
    return sample.toArrow() if hasattr(sample, "toArrow") else pa.Table.from_pandas(sample.toPandas())


def choose_arrow_plan(spark: Any, cfg_input: dict[str, Any], schema: Any, columns: list[str],
                      *, exclude: frozenset[str] = frozenset(), df: Any = None) -> Any:
    """The Arrow lane's plan, or None for the DataFrame lane (`input.lane` auto falls back, logged)."""
    import pyarrow as pa  # noqa: PLC0415

    from batchscore.udfs.arrow_filter import UnsupportedFilter, arrow_filter  # noqa: PLC0415
    from batchscore.udfs.arrow_lane import plan_arrow_input  # noqa: PLC0415

    lane = cfg_input["lane"]
    if lane == "dataframe":
        return None
    if cfg_input["format"] != "parquet":
        if lane == "arrow":
            raise ConfigError(f"input.lane 'arrow' reads plain Parquet only; input.format is '{cfg_input['format']}'")
        log.info("input.lane auto: using the DataFrame lane because input.format is '%s'", cfg_input["format"])
        return None
    try:
        return plan_arrow_input(
            cfg_input["path"], schema, columns, row_filter=arrow_filter(df, schema) if cfg_input["filter"] else None,
            target_tasks=2 * spark.sparkContext.defaultParallelism,
            ignore_corrupt_files=cfg_input["ignore_corrupt_files"], exclude=exclude)
    except UnsupportedFilter as e:
        if lane == "arrow":
            raise ConfigError(f"input.lane 'arrow': {e}; use input.lane dataframe or auto") from None
        log.info("input.lane auto: using the DataFrame lane (%s)", e)
    except (OSError, ValueError, pa.ArrowException) as e:  # a filesystem pyarrow cannot open here
        if lane == "arrow":
            raise
        log.info("input.lane auto: using the DataFrame lane (pyarrow cannot open the input: %s)", e)
    return None


# Rows reach the writer in a few status/partition groups: open one writer per
# group as rows arrive instead of sorting every row by the partition columns
# first (Spark falls back to sorting past 64 open writers per task).
UNSORTED_WRITE = {
    "spark.sql.optimizer.plannedWrite.enabled": "false",
    "spark.sql.maxConcurrentOutputFileWriters": "64",
}

MAX_BYTES_KEY = "spark.sql.execution.arrow.maxBytesPerBatch"
MAX_RECORDS_KEY = "spark.sql.execution.arrow.maxRecordsPerBatch"
_INT_MAX = 2**31 - 1
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30,
          "t": 1 << 40, "tb": 1 << 40}


def _bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{MAX_BYTES_KEY} must be a size such as 64m, got '{text}'")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def arrow_batch_conf(spark: Any, row_bytes: int | None) -> dict[str, str]:
    """SQL confs that bound the DataFrame lane's Arrow batches by rows only, when rows have a fixed width.

    With `maxBytesPerBatch` set (Spark 4 default: 64 MB), Spark measures the batch
    it is filling after every row it adds: about 8% of the task threads' samples on the
    benchmark MLP (a JFR profile, bench/README.md). When every input column has a
    fixed width, the same byte bound is a row count, worked out once here; the
    byte check is then switched off for this job's write. Nothing changes when a
    column's width can vary or the byte limit is already off.
    """
    if row_bytes is None or row_bytes <= 0:
        return {}
    limit = _bytes(spark.conf.get(MAX_BYTES_KEY, str(_INT_MAX)))
    if limit >= _INT_MAX:
        return {}
    records = int(spark.conf.get(MAX_RECORDS_KEY, "10000"))
    by_bytes = max(1, limit // row_bytes)
    return {MAX_BYTES_KEY: str(_INT_MAX), MAX_RECORDS_KEY: str(by_bytes if records <= 0 else min(records, by_bytes))}


def _staged_counts(fs: HadoopFs, staging: str) -> dict[str, int]:
    """Rows per reason as written: the staged files' Parquet footers, no Spark job."""
    counts: dict[str, int] = {}
    for rel in fs.files_under(staging):
        reason = rel.split("/", 1)[0].split("=", 1)[1]
        counts[reason] = counts.get(reason, 0) + fs.parquet_rows(f"{staging}/{rel}")
    return {k: v for k, v in counts.items() if v}


def _count_input(fs: HadoopFs, df: Any, cfg_input: dict[str, Any], corrupt: list[str]) -> int:
    """rows_in, counted apart from the scoring: Parquet footers of the files Spark lists when
    nothing filters rows, else a Spark count of the filtered input."""
    if cfg_input["format"] == "parquet" and not cfg_input["filter"]:
        from batchscore.udfs.arrow_lane import normalize_uri  # noqa: PLC0415

        skip = {normalize_uri(c) for c in corrupt}
        return sum(fs.parquet_rows(f) for f in df.inputFiles() if normalize_uri(f) not in skip)
    return int(df.count())


def _write_empty_output(spark: Any, scored: Any, fs: HadoopFs, out_path: str, run_id: str) -> str:
    """No row was scored: publish an empty dataset with the output schema."""
    schema = scored.drop(REASON_COLUMN, "bs__column").schema
    dst = publish._sibling(out_path, "new", run_id)
    spark.createDataFrame([], schema).coalesce(1).write.parquet(dst)
    fs.delete(f"{dst}/_SUCCESS")
    return dst


def _one_line(e: Exception) -> str:
    """The telling line of a failure: for Py4J errors the Java exception (e.g. "Job aborted due
    to stage failure: ... Python worker exited unexpectedly"), not "An error occurred while calling o12.parquet"."""
    lines = [ln.strip().lstrip(":").strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("An error occurred while calling")]
    return lines[0][:600] if lines else type(e).__name__


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs.score", description="Score a dataset with a TensorFlow model on Spark.")
    p.add_argument("--config", required=True, help="YAML job config (see conf/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.batch_size=2048 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    return p.parse_args(argv)


def summary(manifest: dict[str, Any]) -> str:
    return (
        f"batchscore: {manifest['rows_in']:,} rows in, {manifest['rows_scored']:,} scored, "
        f"{manifest['rows_quarantined']:,} quarantined; {manifest['rows_per_second']:,.0f} rows/s "
        f"({manifest['lane']} lane, {manifest['model_loads']} model loads)\n"
        f"  output: {manifest['output']['path']}\n"
        f"  manifest: {manifest['output']['path']}/_manifest.json"
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spark = None
    try:
        cfg = load_config(args.config, args.overrides)
        spark = build_session(cfg["spark"], app_name="batchscore-score")
        spark.sparkContext.setLogLevel("WARN")
        manifest = run_scoring(spark, cfg)
        print(summary(manifest))
        return 0
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001
        user_error = translate_spark_error(e)
        if isinstance(user_error, BatchscoreError):
            print(f"error: {user_error}", file=sys.stderr)
            return 2
        log.exception("scoring failed")
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if spark is not None and not os.environ.get("BATCHSCORE_KEEP_SESSION"):
            spark.stop()


if __name__ == "__main__":
    sys.exit(main())
