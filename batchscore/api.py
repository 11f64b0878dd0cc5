"""The Python API for pipelines and notebooks: `score_dataframe` and `predict_udf`.

Both read the model's signature on the driver, validate every argument there, ship the
model to the executors once, load it once per Python worker and re-chunk rows to
`batch_size` across Arrow batches, as the score job's DataFrame lane does. Bad rows (a
null or non-finite feature, a wrong-length array, a row the model rejects or answers
with NaN) never get a value that looks like a prediction: `score_dataframe` keeps them
with null predictions and a reason (`bad_rows="keep"`), drops them, or fails the job;
`predict_udf` gives them a null prediction or fails the job (docs/python-api.md).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa

from batchscore.config.fields import Columns, Masks, PadValues, Path, PositiveInt, Renames, Section, Wording, validate
from batchscore.core import compat
from batchscore.core.choices import ApiBadRows, Distribution, OnBadRows, UdfBadRows
from batchscore.core.columns import BAD_COLUMN, OK_REASON, REASON_COLUMN
from batchscore.core.errors import BadRowsError, ConfigError, SchemaError
from batchscore.core.storage import absolute
from batchscore.udfs.batches.binding import bind_inputs
from batchscore.udfs.lanes.scoring import ScoringPlan, arrow_schema_of, plan_scoring, score_batches, with_predictions
from batchscore.udfs.lanes.stats import TaskStats
from batchscore.udfs.model.distribution import ModelSource, make_model_source
from batchscore.udfs.model.signature import ModelSignature, read_signature


class _ModelOptions(Section):
    """The arguments both functions take, typed as the job config types them (`model:`, `input:`)."""

    model: Path
    batch_size: PositiveInt = 1024
    signature: Path = "serving_default"
    distribution: Distribution = "broadcast"
    pad: PadValues = {}
    pad_multiple: PositiveInt = 1
    mask: Masks = {}


class _FrameOptions(_ModelOptions):
    columns: Columns = {}
    keep: list[str] = []
    rename: Renames = {}
    bad_rows: ApiBadRows = "keep"


class _UdfOptions(_ModelOptions):
    bad_rows: UdfBadRows = "null"


_WORDING = Wording(subject="{key}", expected={
    "model": "must be a SavedModel directory or a .keras file path",
    "keep": "must be a list of column names",
    "columns": "must be a mapping (input -> column) or a list of columns",
    "pad": "must be a mapping (input name -> padding value)",
    "mask": "must be a mapping (mask input -> the padded input it masks)",
    "rename": "must be a mapping (model output -> column name)",
})


def _options(model: type[_ModelOptions], given: dict[str, Any]) -> Any:
    """The arguments validated on the driver, before any Spark job: None means the default."""
    return validate(model, {k: v for k, v in given.items() if v is not None}, _WORDING)


def score_dataframe(
    df: Any,
    model: str,
    *,
    columns: dict[str, Any] | list[str] | None = None,
    batch_size: int = 1024,
    keep: Iterable[str] | None = None,
    rename: dict[str, str] | None = None,
    bad_rows: ApiBadRows = "keep",
    signature: str = "serving_default",
    distribution: Distribution = "broadcast",
    pad: dict[str, Any] | None = None,
    pad_multiple: int = 1,
    mask: dict[str, str] | None = None,
    stats: TaskStats | None = None,
) -> Any:
    """Score `df` with a TensorFlow model; returns a lazy DataFrame (nothing runs until an action).

    Args:
        df: any DataFrame (a table, Delta, a join...).
        model: a SavedModel directory or a `.keras` file, readable by the driver.
        columns: signature input -> column, or a list of scalar columns stacked in order
            into one `[batch, D]` input (the score job's `input.columns`); default: the
            column named like each input.
        batch_size: rows per model call.
        keep: columns copied beside the predictions; default: every column of `df`.
        rename: signature output -> column name.
        bad_rows: `keep`: bad rows stay, with null predictions, their reason in
            `bs__reason` (`ok` for scored rows) and the offending column in `bs__column`;
            `drop`: only scored rows, without those two columns; `fail`: the first bad
            row fails the Spark job with its reason.
        signature: the SavedModel signature to call.
        distribution: how the model reaches the executors (`model.distribution`).
        pad, pad_multiple, mask: variable-length inputs (`input.pad`, `input.pad_multiple`,
            `input.mask`).
        stats: a `batchscore.TaskStats()`: once an action on the result ended, `stats.value` holds
            its tasks' counters (rows, model calls, loads per worker...), each task once.

    Returns:
        keep columns + one column per signature output (+ `bs__reason`, `bs__column`).

    Raises:
        ConfigError, ModelError, SchemaError: on the driver, before any task runs.
    """
    opts = _options(_FrameOptions, dict(
        model=model, batch_size=batch_size, signature=signature, distribution=distribution, pad=pad,
        pad_multiple=pad_multiple, mask=mask, columns=columns, keep=_names(df.columns if keep is None else keep),
        rename=rename, bad_rows=bad_rows))
    sig = read_signature(absolute(opts.model), opts.signature)
    source = make_model_source(df.sparkSession, sig.path, sig.fingerprint, opts.distribution)
    plan = plan_scoring(sig, arrow_schema_of(df), source, columns=opts.columns or None, batch_size=opts.batch_size,
                        keep_columns=opts.keep, rename=opts.rename, on_bad_rows=_on_bad_rows(opts.bad_rows),
                        pad=opts.pad, pad_multiple=opts.pad_multiple, mask=opts.mask)
    scored = with_predictions(df, plan, task_stats=stats is not None)
    scored = stats.observe(scored) if stats is not None else scored  # stats rows observed, then dropped
    if opts.bad_rows == "keep":
        return scored
    if opts.bad_rows == "drop":
        scored = scored.where(scored[REASON_COLUMN] == OK_REASON)
    return scored.drop(REASON_COLUMN, BAD_COLUMN)


def predict_udf(
    model: str,
    *,
    batch_size: int = 1024,
    signature: str = "serving_default",
    bad_rows: UdfBadRows = "null",
    distribution: Distribution = "broadcast",
    pad: dict[str, Any] | None = None,
    pad_multiple: int = 1,
    mask: dict[str, str] | None = None,
    spark: Any = None,
) -> PredictUDF:
    """A column function scoring with a TensorFlow model, for `select` / `withColumn`.

    A drop-in for `pyspark.ml.functions.predict_batch_udf` with the model loading,
    the input shapes and the return type taken from the model's signature:

        score = batchscore.predict_udf("models/cnn", batch_size=256)
        df.withColumn("pred", score("pixels"))             # a flat array reshaped to [H, W, C]
        df.withColumn("pred", score("f0", "f1", "f2"))      # scalar columns stacked into [batch, 3]
        df.withColumn("pred", score(image="pixels", numeric=["f0", "f1"], category="cat"))

    Positional columns feed the inputs in `score.input_names` order (a single input
    takes one array column or several scalar columns stacked); named ones feed the
    input of that name (a list of columns is stacked). One output gives a plain
    column, several a struct with one field per output. Bad rows get a null
    prediction (`bad_rows="null"`) or fail the Spark job (`bad_rows="fail"`).

    Raises:
        ConfigError, ModelError: on the driver. A column of the wrong type raises
        SchemaError from the first task (Spark wraps it in a PythonException).
    """
    opts = _options(_UdfOptions, dict(
        model=model, batch_size=batch_size, signature=signature, bad_rows=bad_rows, distribution=distribution,
        pad=pad, pad_multiple=pad_multiple, mask=mask))
    if spark is None:
        from pyspark.sql import SparkSession  # noqa: PLC0415 - pyspark is the API's optional extra

        spark = SparkSession.getActiveSession()
        if spark is None:
            raise ConfigError("predict_udf needs a running SparkSession (start one, or pass spark=...)")
    sig = read_signature(absolute(opts.model), opts.signature)
    source = make_model_source(spark, sig.path, sig.fingerprint, opts.distribution)
    return PredictUDF(sig, source, opts.batch_size, _on_bad_rows(opts.bad_rows), dict(opts.pad), opts.pad_multiple,
                      dict(opts.mask))


@dataclass(frozen=True)
class PredictUDF:
    """What `predict_udf` returns: call it with columns to get a Column of predictions.

    A column gives one value per row, so its tasks have no row to report counters in:
    `score_dataframe(..., stats=TaskStats())` gives them.
    """

    signature: ModelSignature
    source: ModelSource
    batch_size: int
    on_bad_rows: OnBadRows
    pad: dict[str, Any]
    pad_multiple: int
    mask: dict[str, str]

    @property
    def input_names(self) -> list[str]:
        """The signature's inputs, in the order positional columns feed them (masks excluded)."""
        return [s.name for s in self.signature.inputs if s.name not in self.mask]

    @property
    def return_type(self) -> Any:
        """The Spark type of the column: the one output's type, or a struct of all outputs."""
        from pyspark.sql.pandas.types import from_arrow_type  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

        return from_arrow_type(_result_type(self.signature))

    def __call__(self, *cols: Any, **named: Any) -> Any:
        """The predictions of `cols` (see `predict_udf`) as a Column."""
        args, columns = _feed_columns(self.input_names, cols, named)
        plan = ScoringPlan(self.signature, (), self.source, self.batch_size, (),
                           tuple(o.name for o in self.signature.outputs), self.on_bad_rows, self.pad_multiple)
        fn = _udf_function(plan, [name for name, _ in args], columns, self.pad, self.mask)
        # Iterator[tuple[pa.Array, ...]] -> Iterator[pa.Array]: the worker keeps state (the re-chunking
        # queue) across the task's Arrow batches
        return compat.arrow_iter_udf(fn, self.return_type)(*(c for _, c in args))


def _feed_columns(
    inputs: list[str], cols: tuple[Any, ...], named: dict[str, Any]
) -> tuple[list[tuple[str, Any]], dict[str, str | list[str]]]:
    """The UDF's argument columns, each with a unique name, and signature input -> argument name(s).

    Raises:
        SchemaError: too many columns, an unknown or twice-fed input, or a missing one.
    """
    unknown = sorted(set(named) - set(inputs))
    if unknown:
        raise SchemaError(f"predict_udf: '{unknown[0]}' is not an input of the model (inputs: {', '.join(inputs)})")
    wanted: dict[str, Any] = {}
    if len(inputs) == 1 and len(cols) > 1:
        wanted[inputs[0]] = list(cols)  # several scalar columns stacked into the one input
    else:
        if len(cols) > len(inputs):
            raise SchemaError(f"predict_udf: {len(cols)} columns given for {len(inputs)} model inputs "
                              f"({', '.join(inputs)}); stack scalar columns with a list, e.g. name=[...]")
        wanted.update(zip(inputs, cols, strict=False))  # fewer columns: the rest come by name
    twice = sorted(set(wanted) & set(named))
    if twice:
        raise SchemaError(f"predict_udf: model input '{twice[0]}' is given both by position and by name")
    wanted.update(named)
    missing = [n for n in inputs if n not in wanted]
    if missing:
        raise SchemaError(f"predict_udf: no column for model input '{missing[0]}' (inputs: {', '.join(inputs)})")
    args: list[tuple[str, Any]] = []
    columns: dict[str, str | list[str]] = {}
    for name in inputs:
        given = wanted[name]
        many = isinstance(given, (list, tuple))
        names = [_arg_name(c, len(args) + i, args) for i, c in enumerate(given if many else [given])]
        args.extend(zip(names, given if many else [given], strict=True))
        columns[name] = names if many else names[0]
    return args, columns


def _arg_name(col: Any, i: int, taken: list[tuple[str, Any]]) -> str:
    """A readable, unique name for an argument column (errors name it)."""
    name = col if isinstance(col, str) else str(getattr(col, "_jc", None) or f"argument {i}")
    used = {n for n, _ in taken}
    return name if name not in used else f"{name} (argument {i})"


def _udf_function(
    plan: ScoringPlan, names: list[str], columns: dict[str, str | list[str]],
    pad: dict[str, Any], mask: dict[str, str],
) -> Any:
    """The function each task runs: bind the columns on the first batch, then score the stream."""

    def predict(arrays: Iterator[tuple[pa.Array, ...] | pa.Array]) -> Iterator[pa.Array]:
        batches = (pa.RecordBatch.from_arrays(list(a) if isinstance(a, tuple) else [a], names=names)
                   for a in arrays)
        first = next(batches, None)
        if first is None:
            return
        feeds = bind_inputs(plan.signature, first.schema, columns, pad=pad, mask=mask)
        try:
            for out in score_batches(replace(plan, feeds=feeds), itertools.chain([first], batches)):
                yield _result_column(out, plan)
        except BadRowsError as e:  # the engine words it for the job's config
            message = str(e).replace(" (add a key to output.keep_columns to name it)", "")
            raise BadRowsError(message.replace("quarantine.on_bad_rows: fail", "predict_udf bad_rows='fail'")) from None

    return predict


def _result_type(sig: ModelSignature) -> pa.DataType:
    schema = sig.output_schema()
    return schema.field(0).type if len(schema) == 1 else pa.struct(list(schema))


def _result_column(batch: pa.RecordBatch, plan: ScoringPlan) -> pa.Array:
    """One output's column, or a struct of all outputs, null on the batch's bad rows."""
    if len(plan.output_names) == 1:
        return batch.column(plan.output_names[0])  # bad rows are null already
    import pyarrow.compute as pc  # noqa: PLC0415 - loaded on first use, off the import path of `import batchscore`

    bad = pc.not_equal(batch.column(REASON_COLUMN), OK_REASON)
    return pa.StructArray.from_arrays([batch.column(n) for n in plan.output_names],
                                      names=list(plan.output_names), mask=bad)


def _names(columns: Iterable[str]) -> Any:
    """`keep` as a list (any iterable of names); one string stays as it is, refused by the options."""
    return columns if isinstance(columns, str) else list(columns)


def _on_bad_rows(bad_rows: str) -> OnBadRows:
    """The engine's `on_bad_rows` for the API's `bad_rows`."""
    return "fail" if bad_rows == "fail" else "quarantine"
