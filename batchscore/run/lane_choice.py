"""Which lane scores a run, the early sample check's rows, and the Spark settings of the scoring write."""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from batchscore.config.job_spec import InputSpec
from batchscore.core import compat
from batchscore.core.errors import ConfigError
from batchscore.output.filesystem import filesystem_for
from batchscore.run.cluster import default_parallelism
from batchscore.run.planning import TASKS_PER_SLOT
from batchscore.udfs.batches.arrow_filter import UnsupportedFilter, arrow_filter
from batchscore.udfs.lanes.arrow import ArrowPlan, UnsupportedInput, plan_arrow_input, sample_rows
from batchscore.udfs.lanes.scoring import ScoringPlan

log = logging.getLogger("batchscore")

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


def choose_arrow_plan(spark: Any, spec: InputSpec, schema: pa.Schema, columns: list[str],
                      *, df: Any, exclude: frozenset[str] = frozenset(), slots: int | None = None) -> ArrowPlan | None:
    """The Arrow lane's plan, or None for the DataFrame lane (`input.lane` auto falls back, logged).

    `df` is the filtered input DataFrame: Spark's optimised plan of it gives the filter
    the Arrow lane applies (batchscore.udfs.batches.arrow_filter). `slots`: the executors' task slots
    (batchscore.run.planning.task_slots; default: the default parallelism); the plan aims at
    `TASKS_PER_SLOT` tasks per slot.

    Raises:
        ConfigError: `input.lane: arrow` where the Arrow lane cannot read the input.
    """
    if spec.lane == "dataframe":
        return None
    slots = slots or default_parallelism(spark)
    if spec.format != "parquet":
        if spec.lane == "arrow":
            raise ConfigError(f"input.lane 'arrow' reads plain Parquet only; input.format is '{spec.format}'")
        log.info("input.lane auto: using the DataFrame lane because input.format is '%s'", spec.format)
        return None
    try:
        return plan_arrow_input(
            filesystem_for(spark).qualify(spec.path), schema, columns,
            row_filter=arrow_filter(df, schema) if spec.filter else None,
            target_tasks=TASKS_PER_SLOT * slots, slots=slots,
            ignore_corrupt_files=spec.ignore_corrupt_files, exclude=exclude)
    except (UnsupportedFilter, UnsupportedInput) as e:
        if spec.lane == "arrow":
            raise ConfigError(f"input.lane 'arrow': {e}; use input.lane dataframe or auto") from None
        log.info("input.lane auto: using the DataFrame lane (%s)", e)
    except (OSError, ValueError, pa.ArrowException) as e:  # a filesystem pyarrow cannot open here
        if spec.lane == "arrow":
            raise
        log.info("input.lane auto: using the DataFrame lane (pyarrow cannot open the input: %s)", e)
    return None


def sample_array_columns(df: Any, plan: ScoringPlan, arrow_plan: ArrowPlan | None, rows: int = 100) -> pa.Table:
    """The first rows of the array feature columns, as Arrow (for the early length check):
    read with pyarrow on the driver for the Arrow lane, else through a small Spark job.
    Padded (variable-length) inputs have no length to check and are not read."""
    cols = [f.columns[0] for f in plan.feeds if not f.stacked and f.depth > 0 and not f.padded]
    if not cols:
        return pa.table({})
    if arrow_plan is not None:
        return sample_rows(arrow_plan, cols, rows)
    sample = df.select(*cols).limit(rows)
    return compat.to_arrow(sample)


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


@contextlib.contextmanager
def temporary_conf(spark: Any, settings: dict[str, str]) -> Iterator[None]:
    """Set runtime SQL confs for one block, then put the old values back."""
    old = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                spark.conf.unset(k)
            else:
                spark.conf.set(k, v)
