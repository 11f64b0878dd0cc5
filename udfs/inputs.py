"""Read the job's input as a DataFrame (the DataFrame lane's source)."""
from __future__ import annotations

from typing import Any

from batchscore.udfs.arrow_filter import apply_filter
from batchscore.udfs.errors import InputError
from batchscore.udfs.job_spec import InputSpec


def read_input(spark: Any, spec: InputSpec) -> Any:
    """`input.path` in `input.format`, with `input.filter` applied.

    Raises:
        InputError: the path or table does not exist or cannot be read.
        ConfigError: Spark rejects the filter (see udfs.arrow_filter.apply_filter).
    """
    from pyspark.errors import AnalysisException  # noqa: PLC0415

    path, fmt = spec.path, spec.format
    reader = spark.read
    if spec.ignore_corrupt_files:
        reader = reader.option("ignoreCorruptFiles", "true")
    try:
        if fmt == "table":
            df = spark.table(path)
        elif fmt == "delta":
            df = reader.format("delta").load(path)
        else:
            df = reader.format(fmt).load(path)
    except AnalysisException as e:
        msg = str(e).splitlines()[0]
        if "PATH_NOT_FOUND" in msg or "does not exist" in msg.lower():
            raise InputError(f"input.path '{path}' does not exist") from None
        if "TABLE_OR_VIEW_NOT_FOUND" in msg:
            raise InputError(f"input table '{path}' not found") from None
        raise InputError(f"input.path '{path}' cannot be read as {fmt}: {msg}") from None
    except Exception as e:  # noqa: BLE001 - e.g. the delta data source is not installed
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "DATA_SOURCE_NOT_FOUND" in first or "delta" in first.lower():
            raise InputError(f"input.format '{fmt}' is not available in this Spark: {first[:200]}") from None
        raise
    return apply_filter(df, spec.filter)
