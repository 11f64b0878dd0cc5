"""Read the job's input as a DataFrame (the DataFrame lane's source)."""
from __future__ import annotations

import posixpath
from typing import Any

import pyarrow as pa

from batchscore.config.job_spec import InputSpec
from batchscore.core.errors import InputError
from batchscore.core.storage import list_input_files, pyarrow_fs, pyarrow_uri
from batchscore.udfs.batches.arrow_filter import apply_filter


def read_input(spark: Any, spec: InputSpec) -> Any:
    """`input.path` in `input.format`, with `input.filter` applied.

    Raises:
        InputError: the path or table does not exist or cannot be read.
        ConfigError: Spark rejects the filter (see batchscore.udfs.batches.arrow_filter.apply_filter).
    """
    from pyspark.errors import AnalysisException  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    path, fmt = spec.path, spec.format
    reader = spark.read
    if spec.ignore_corrupt_files:
        reader = reader.option("ignoreCorruptFiles", "true")
    known = footer_schema(spark, spec) if fmt == "parquet" else None
    if known is not None:  # Spark would run a job to read the same footer
        reader = reader.schema(known)
    try:
        if fmt == "table":
            df = spark.table(path)
        elif fmt == "delta":
            df = _time_travel(reader, spec).format("delta").load(path)
        else:
            df = reader.format(fmt).load(path)
    except AnalysisException as e:
        msg = str(e).splitlines()[0]
        if "PATH_NOT_FOUND" in msg or "does not exist" in msg.lower():
            raise InputError(f"input.path '{path}' does not exist") from None
        if "TABLE_OR_VIEW_NOT_FOUND" in msg:
            raise InputError(f"input table '{path}' not found") from None
        travel = ("version", spec.version) if spec.version is not None else ("timestamp", spec.timestamp)
        if travel[1] is not None:  # e.g. a version the table does not have (any more)
            raise InputError(f"input.path '{path}' cannot be read at input.{travel[0]} {travel[1]!r}: {msg}") from None
        raise InputError(f"input.path '{path}' cannot be read as {fmt}: {msg}") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "DATA_SOURCE_NOT_FOUND" in first or "delta" in first.lower():
            raise InputError(f"input.format '{fmt}' is not available in this Spark: {first[:200]}") from None
        raise
    return apply_filter(df, spec.filter)


def _time_travel(reader: Any, spec: InputSpec) -> Any:
    """`input.version` -> `versionAsOf`, `input.timestamp` -> `timestampAsOf` (at most one is set)."""
    if spec.version is not None:
        return reader.option("versionAsOf", spec.version)
    if spec.timestamp is not None:
        return reader.option("timestampAsOf", spec.timestamp)
    return reader


def footer_schema(spark: Any, spec: InputSpec) -> Any:
    """The Spark schema of plain, unpartitioned Parquet input from its first file's footer, read
    with pyarrow on the driver: what Spark's schema inference finds (it reads that footer in a
    Spark job), for the types where the mapping is fixed. None where Spark might infer
    differently: partition directories, schema merging, corrupt files allowed, other types,
    a file pyarrow cannot open."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - loaded on first use, off the import path of `import batchscore`

    conf = spark.conf
    if spec.ignore_corrupt_files or any(conf.get(k, "false").lower() == "true" for k in _SCHEMA_CONFS):
        return None
    try:
        fs, base = pyarrow_fs(pyarrow_uri(spec.path))
        files = list_input_files(fs, base)
        if not files or any("=" in posixpath.relpath(posixpath.dirname(f.path), base) for f in files):
            return None
        with fs.open_input_file(files[0].path) as fh:
            schema = pq.read_schema(fh)
    except (OSError, ValueError, InputError, pa.ArrowException):
        return None
    return spark_struct(schema)


# Settings under which Spark's inference reads more than one footer or maps types otherwise.
_SCHEMA_CONFS = ("spark.sql.parquet.mergeSchema", "spark.sql.parquet.binaryAsString")


def spark_struct(schema: pa.Schema) -> Any:
    """A Spark StructType (every field nullable, as Spark reads Parquet) or None for a type outside
    the fixed mapping (integers, floats, booleans, strings, binary and lists of them)."""
    from pyspark.sql import types as T  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    simple = {pa.int8(): T.ByteType(), pa.int16(): T.ShortType(), pa.int32(): T.IntegerType(),
              pa.int64(): T.LongType(), pa.float32(): T.FloatType(), pa.float64(): T.DoubleType(),
              pa.bool_(): T.BooleanType(), pa.string(): T.StringType(), pa.large_string(): T.StringType(),
              pa.binary(): T.BinaryType(), pa.large_binary(): T.BinaryType()}

    def convert(t: pa.DataType) -> Any:
        if t in simple:
            return simple[t]
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            inner = convert(t.value_type)
            return None if inner is None else T.ArrayType(inner, True)
        return None

    fields = []
    for f in schema:
        t = convert(f.type)
        if t is None:
            return None
        fields.append(T.StructField(f.name, t, True))
    return T.StructType(fields)
