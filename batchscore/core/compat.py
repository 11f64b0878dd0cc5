"""What differs between the Spark stacks batchscore runs on, each behind one named shim.

Two stacks are tested (docs/stacks.md; `make test`, `make test-lts`):

    current  pyspark 4.x, pyarrow >= 18, numpy 2      (`requirements.txt`)
    lts      pyspark 3.5, pyarrow 14, numpy 1.26       (`requirements-lts.txt`, with petastorm)

Code elsewhere calls these functions instead of checking versions itself, so a stack that
is dropped later is dropped here. Nothing is imported at module import beyond the standard library
(./spark-submit.sh asks `jars_folder_name` before every job).
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

# A column function's body on Arrow arrays: the task's batches in (one array per argument
# column, a tuple when there are several), one result array per batch out.
ArrowIterFunction = Callable[[Iterator[Any]], Iterator["pa.Array"]]


@functools.cache
def spark_version() -> tuple[int, int]:
    """The installed pyspark's (major, minor), e.g. (4, 1) or (3, 5)."""
    import pyspark  # noqa: PLC0415 - pyspark is the optional [spark] extra

    major, minor = pyspark.__version__.split(".")[:2]
    return int(major), int(minor)


def jars_folder_name() -> str:
    """The folder under `jars/` that holds the connector jars for this pyspark's Spark:
    `lib` (Spark 4, `make jars`) or `lib-spark3.5` (Spark 3.5, `make jars-lts`)."""
    return "lib-spark3.5" if spark_version() < (4, 0) else "lib"


def jars_pom_name() -> str:
    """The pom under `jars/` that pins those jars: `pom.xml` (Spark 4) or `pom-spark3.5.xml`."""
    return "pom-spark3.5.xml" if spark_version() < (4, 0) else "pom.xml"


def s3a_profile_provider() -> str:
    """S3A's credential provider class that reads an AWS profile: hadoop-aws 3.4 (Spark 4) is
    built on the AWS SDK v2, hadoop-aws 3.3 (Spark 3.5) on v1."""
    if spark_version() < (4, 0):
        return "com.amazonaws.auth.profile.ProfileCredentialsProvider"
    return "software.amazon.awssdk.auth.credentials.ProfileCredentialsProvider"


def arrow_batches_have_a_byte_bound() -> bool:
    """Whether Spark also bounds the Arrow batches it sends Python by bytes
    (`spark.sql.execution.arrow.maxBytesPerBatch`, Spark 4.0+); Spark 3.5 counts records only."""
    return spark_version() >= (4, 0)


def udf_gives_null_structs() -> bool:
    """Whether an `arrow_iter_udf` with a struct result can give a null struct (Spark 4.1's
    `arrow_udf`); Spark 3.5's pandas UDF turns it into a struct of nulls."""
    return spark_version() >= (4, 1)


def to_arrow(df: Any) -> pa.Table:
    """`df.toArrow()`: the DataFrame collected to the driver as one Arrow table.

    Spark 4.0+ has the method; on Spark 3.5 the same Arrow collect that its `toPandas` uses
    (`_collect_as_arrow`), cast to the schema Spark 4 would give (`to_arrow_schema`).
    """
    import pyarrow as pa  # noqa: PLC0415 - kept off this module's import (see the module doc)

    if hasattr(df, "toArrow"):
        return df.toArrow()
    from pyspark.sql.pandas.types import to_arrow_schema  # noqa: PLC0415 - pyspark is the optional [spark] extra

    schema = to_arrow_schema(df.schema)
    batches = df._collect_as_arrow()
    if not batches:
        return schema.empty_table()
    return pa.Table.from_batches(batches).cast(schema)


def arrow_iter_udf(fn: ArrowIterFunction, return_type: Any) -> Callable[..., Any]:
    """A scalar column function whose body sees each task's Arrow batches as one iterator
    (state, e.g. a re-chunking queue, kept across batches); call it with columns.

    Spark 4.1: `arrow_udf` (eval type SQL_SCALAR_ARROW_ITER_UDF), Arrow end to end. Spark 3.5
    has no Arrow scalar UDF: a pandas iterator UDF whose batches are turned back into Arrow
    for `fn` and its results into pandas for Spark. There a null float input reaches `fn` as
    null (pandas' NaN is read as null), and a null struct result becomes a struct of nulls.
    """
    body: Any = fn  # an iterator function: pyspark's stubs type the iterator UDF's body as Iterable -> Iterable
    with warnings.catch_warnings():  # "prefer type hints": the eval type is stated, not inferred
        warnings.simplefilter("ignore", UserWarning)
        if spark_version() >= (4, 1):
            from pyspark.sql.functions import arrow_udf  # noqa: PLC0415 - pyspark is the optional [spark] extra
            from pyspark.util import PythonEvalType  # noqa: PLC0415 - pyspark is the optional [spark] extra

            return arrow_udf(body, return_type, functionType=PythonEvalType.SQL_SCALAR_ARROW_ITER_UDF)
        from pyspark.sql.functions import pandas_udf  # noqa: PLC0415 - pyspark is the optional [spark] extra
        from pyspark.sql.pandas.functions import PandasUDFType  # noqa: PLC0415 - pyspark is the optional [spark] extra

        through: Any = _through_pandas(fn)
        return pandas_udf(through, return_type, PandasUDFType.SCALAR_ITER)


def _through_pandas(fn: ArrowIterFunction) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """`fn` as a pandas iterator UDF body: Series in -> Arrow arrays -> `fn` -> Series (or a
    DataFrame of fields, pandas' form of a struct result) out."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        arrays = (tuple(_from_pandas(s) for s in b) if isinstance(b, tuple) else _from_pandas(b) for b in batches)
        for out in fn(arrays):
            yield _to_pandas(out)

    return run


def _from_pandas(series: Any) -> pa.Array:
    import pyarrow as pa  # noqa: PLC0415 - kept off this module's import (see the module doc)

    return pa.Array.from_pandas(series)  # NaN -> null, as Spark 3.5 wrote a null float into pandas


def _to_pandas(array: pa.Array) -> Any:
    import pandas as pd  # noqa: PLC0415 - the lts fallback only
    import pyarrow as pa  # noqa: PLC0415 - kept off this module's import (see the module doc)

    if pa.types.is_struct(array.type):
        fields = array.flatten()  # a null struct: null in every field
        return pd.DataFrame({f.name: col.to_pandas() for f, col in zip(array.type, fields, strict=True)})
    return array.to_pandas()


def cast_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch.cast(schema)`: RecordBatch.cast is pyarrow 16+; column by column before it."""
    if hasattr(batch, "cast"):
        return batch.cast(schema)
    import pyarrow as pa  # noqa: PLC0415 - kept off this module's import (see the module doc)

    return pa.RecordBatch.from_arrays([col.cast(f.type) for col, f in zip(batch.columns, schema, strict=True)],
                                      schema=schema)


@functools.cache
def _pyarrow_version() -> tuple[int, int]:
    import pyarrow as pa  # noqa: PLC0415 - kept off this module's import (see the module doc)

    major, minor = pa.__version__.split(".")[:2]
    return int(major), int(minor)


def filter_batch(batch: pa.RecordBatch, expression: Any) -> pa.RecordBatch:
    """`batch.filter(expression)` with a compute Expression: older pyarrow (14) filters a RecordBatch by
    a boolean mask only, so there the one-batch Table (which takes an Expression) does it."""
    if _pyarrow_version() >= (16, 0):
        return batch.filter(expression)
    import pyarrow as pa  # noqa: PLC0415 - kept off this module's import (see the module doc)

    kept = pa.Table.from_batches([batch]).filter(expression).combine_chunks()
    return kept.to_batches()[0] if kept.num_rows else batch.slice(0, 0)


def spark_rejects_bad_casts() -> bool:
    """Whether Spark's default SQL mode (ANSI, Spark 4.0+) rejects a comparison whose literal
    cannot be cast (`x > 'abc'`); Spark 3.5 reads it as null and keeps no row."""
    return spark_version() >= (4, 0)
