"""Read the job's input as a DataFrame (the DataFrame lane's source)."""
from __future__ import annotations

from typing import Any

from batchscore.udfs.errors import ConfigError, InputError
from batchscore.udfs.job_spec import InputSpec


def read_input(spark: Any, spec: InputSpec) -> Any:
    """`input.path` in `input.format`, with `input.filter` applied.

    Raises:
        InputError: the path or table does not exist or cannot be read.
        ConfigError: the filter is not a valid Spark SQL predicate on the input.
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
    if spec.filter:
        try:
            df = df.where(spec.filter)
            df.schema  # noqa: B018 - analyse now, so a bad filter fails before any task
        except AnalysisException as e:
            raise ConfigError(f"input.filter {spec.filter!r} is not valid: {str(e).splitlines()[0]}") from None
        except Exception as e:  # noqa: BLE001 - ParseException
            raise ConfigError(f"input.filter {spec.filter!r} is not valid: {str(e).splitlines()[0]}") from None
    return df
