"""The Spark side of scoring: the partition function both lanes run, and its schema."""
from __future__ import annotations

import dataclasses
import decimal
import os
import resource
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from batchscore.core.choices import OnBadRows, Placement, Sharing
from batchscore.core.clock import process_start_time
from batchscore.core.columns import BAD_COLUMN, OK_REASON, REASON_COLUMN, STATS_COLUMN
from batchscore.core.errors import BadRowsError, ConfigError, ModelError, SchemaError
from batchscore.udfs.batches.batching import StreamScorer
from batchscore.udfs.batches.binding import InputFeed, bind_inputs, required_columns
from batchscore.udfs.host import client as host_client
from batchscore.udfs.lanes.stats import stats_json
from batchscore.udfs.model import cache as model_cache
from batchscore.udfs.model import devices, placement
from batchscore.udfs.model import tensor_types as tt
from batchscore.udfs.model.distribution import ModelSource
from batchscore.udfs.model.signature import ModelSignature
from batchscore.udfs.model.worker_tuning import keep_spark_zip_directories


@dataclass(frozen=True)
class ModelRuntime:
    """Where and how the model runs in the executors (`model.sharing`, `model.placement`, `model.gpu_memory_mb`)."""

    sharing: Sharing = "worker"
    placement: Placement = "replicate"
    gpu_memory_mb: int | None = None
    host_wait_ms: float = 5.0  # sharing executor: the host's wait for more rows after a request
    executor_cores: int = 0  # sharing executor: the host's TF threads (0: TF's default), set on the driver


@dataclass(frozen=True)
class ScoringPlan:
    """Everything a task needs to score, made on the driver and shipped in the closure."""

    signature: ModelSignature
    feeds: tuple[InputFeed, ...]
    source: ModelSource
    batch_size: int
    keep_columns: tuple[str, ...]
    output_names: tuple[str, ...]
    on_bad_rows: OnBadRows = "quarantine"
    pad_multiple: int = 1  # padded inputs: each call's length rounded up to a multiple of this
    runtime: ModelRuntime = dataclasses.field(default_factory=lambda: ModelRuntime())

    @property
    def input_columns(self) -> list[str]:
        """Columns a task reads: keep columns, then the model's features."""
        cols = dict.fromkeys(self.keep_columns)
        cols.update(dict.fromkeys(required_columns(self.feeds)))
        return list(cols)


def plan_scoring(
    signature: ModelSignature,
    schema: pa.Schema,
    source: ModelSource,
    *,
    columns: dict[str, Any] | list[str] | None = None,
    batch_size: int = 1024,
    keep_columns: Iterable[str] = (),
    rename: dict[str, str] | None = None,
    on_bad_rows: OnBadRows = "quarantine",
    pad: dict[str, Any] | None = None,
    pad_multiple: int = 1,
    mask: dict[str, str] | None = None,
    runtime: ModelRuntime | None = None,
) -> ScoringPlan:
    """Bind and check everything on the driver, before any task runs.

    `batch_size`, `on_bad_rows` and `pad_multiple` come validated from the JobSpec
    (batchscore.config.job_spec).

    Args:
        pad: variable-length input -> padding value (`input.pad`).
        pad_multiple: round each call's padded length up to a multiple of this.
        mask: mask input -> the padded input whose row lengths fill it (`input.mask`).
        runtime: model sharing, placement and GPU memory (default: one copy per worker, replicated).

    Raises:
        SchemaError: a feature or keep column is missing or of the wrong type, or
            an output name clashes with a kept column.
        ConfigError: `output.rename` names something that is not a model output, or a
            bad pad or mask value.
        ModelError: an input of unknown inner dimension that `pad`/`mask` leave out.
    """
    feeds = bind_inputs(signature, schema, columns, pad=pad, mask=mask)
    _check_padded_outputs(signature, feeds)
    keep = tuple(keep_columns)
    for c in keep:
        if schema.get_field_index(c) < 0:
            raise SchemaError(f"output.keep_columns names '{c}', which is not an input column")
    rename = dict(rename or {})
    out_keys = [o.name for o in signature.outputs]
    bad = sorted(set(rename) - set(out_keys))
    if bad:
        raise ConfigError(f"output.rename names '{bad[0]}', which is not a model output ({', '.join(out_keys)})")
    names = tuple(rename.get(k, k) for k in out_keys)
    clash = sorted((set(names) & set(keep)) | {n for n in names if names.count(n) > 1}
                   | (set(names + keep) & {REASON_COLUMN, BAD_COLUMN}))
    if clash:
        raise SchemaError(
            f"output column '{clash[0]}' would appear twice (model output and keep column); "
            "use output.rename"
        )
    return ScoringPlan(signature, feeds, source, batch_size, keep, names, on_bad_rows, pad_multiple,
                       runtime or ModelRuntime())


def _check_padded_outputs(signature: ModelSignature, feeds: tuple[InputFeed, ...]) -> None:
    """With padding, each call has its own length: outputs of unknown width cannot be joined across calls."""
    padded = [f.name for f in feeds if f.padded]
    if not padded:
        return
    for o in signature.outputs:
        if any(d is None for d in o.shape):
            raise ModelError(
                f"model output '{o.name}' has shape {[None, *o.shape]}: with input.pad.{padded[0]} its width "
                "would follow each call's padded length; per-position outputs are not supported, "
                "return outputs of fixed inner dimensions (e.g. pooled over positions)"
            )


def scored_schema(plan: ScoringPlan, schema: pa.Schema) -> pa.Schema:
    """Schema of what a task returns: keep columns, predictions, reason, column."""
    keep = [schema.field(c) for c in plan.keep_columns]
    preds = list(plan.signature.output_schema(dict(zip([o.name for o in plan.signature.outputs],
                                                        plan.output_names, strict=True))))
    return pa.schema(
        [*keep, *preds, pa.field(REASON_COLUMN, pa.string(), False), pa.field(BAD_COLUMN, pa.string(), False)]
    )


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def task_resources() -> tuple[int, list[str]]:
    """(cores, GPU addresses) Spark gave the running task; (0, []) outside Spark."""
    try:
        from pyspark import TaskContext  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used
    except ImportError:
        return 0, []
    ctx = TaskContext.get()
    if ctx is None:
        return 0, []
    gpu = ctx.resources().get("gpu")
    return ctx.cpus(), list(gpu.addresses) if gpu is not None else []


def task_predictor(plan: ScoringPlan) -> model_cache.PredictFn:
    """The predict function this task calls: devices and threads set up for the task's resources,
    the model loaded once per worker (`plan.runtime` says where and how it runs)."""
    cores, gpus = task_resources()
    if plan.runtime.sharing == "executor":  # the executor's model host scores for every worker
        return host_client.client_predictor(plan, cores=plan.runtime.executor_cores, gpus=gpus).predict
    model_cache.configure_threads(cores)
    device = devices.pin_task(gpus, memory_mb=plan.runtime.gpu_memory_mb)  # before TF's runtime starts
    key = plan.source.fingerprint + "/" + plan.signature.signature
    load = model_cache.model_loader(plan.source, plan.signature.signature)
    if plan.runtime.placement == "split":  # udfs/model/placement.py: stages over the task's devices
        names = list(device.names) or None  # the task's assigned GPUs; none: every device the worker has
        key = f"{key}/split/{plan.batch_size}/{','.join(names or [])}"
        return model_cache.get_predict_fn(key, placement.split_loader(
            plan.source, plan.signature, batch_size=plan.batch_size, replicate=load, devices=names))
    return model_cache.get_predict_fn(key, devices.placed(load, device), device=device.name)


def score_batches(
    plan: ScoringPlan, batches: Iterable[pa.RecordBatch], stats: dict[str, Any] | None = None
) -> Iterator[pa.RecordBatch]:
    """Score Arrow batches in this process with the cached model (the shared core of both lanes).

    Args:
        plan: the driver's plan.
        batches: batches holding at least `plan.input_columns`.
        stats: filled with this call's counters at the end of the stream.
    """
    task_start, spent_before = time.time(), model_cache.seconds_spent()
    loads_before = model_cache.load_count()
    predict = task_predictor(plan)
    scorer = StreamScorer(
        plan.signature, plan.feeds, predict, plan.batch_size, list(plan.keep_columns), list(plan.output_names),
        pad_multiple=plan.pad_multiple,
    )
    try:
        for out in scorer.score(batches):
            if plan.on_bad_rows == "fail" and scorer.stats.rows_bad:
                raise BadRowsError(_first_bad(out, plan))
            yield out
    finally:  # however the stream ends, keep Spark's importers (the model load and first calls add some)
        keep_spark_zip_directories()
    if stats is not None:
        stats.update(scorer.stats.as_dict())
        stats.update(worker_stats(model_cache.load_count() - loads_before, spent_before))
        if plan.runtime.sharing == "executor":
            stats.update(host_client.task_host_stats())
        stats["first_task_at"] = task_start
        stats["pipeline_stages"] = placement.pipeline_stages(predict)
        stats["last_task_end_at"] = time.time()


def worker_stats(loads: int | None, spent_before: dict[str, float], *, prefix: str = "") -> dict[str, Any]:
    """This worker's part of the run's stats: model loads (None: not a scoring task, the worker
    is not counted in python_workers), seconds spent importing TF and loading the model since
    `spent_before`, its start time, peak RSS and the device its tasks scored on (all keyed by worker)."""
    wid, spent = worker_id(), model_cache.seconds_spent()
    started, daemon, device = process_start_time(), model_cache.daemon_facts(), devices.last_label()
    return {
        **({"loads": {wid: loads}} if loads is not None else {}),
        **({"devices": {wid: device}} if loads is not None and device is not None else {}),
        f"{prefix}tf_import_s": {wid: spent["tf_import"] - spent_before["tf_import"]},
        f"{prefix}model_load_s": {wid: spent["model_load"] - spent_before["model_load"]},
        "peak_rss_mb": {wid: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        **({"worker_started_at": {wid: started}} if started is not None else {}),
        **{f"daemon_{k}": {wid: v} for k, v in daemon.items()},
    }


def _first_bad(batch: pa.RecordBatch, plan: ScoringPlan) -> str:
    reasons = batch.column(REASON_COLUMN).to_pylist()
    i = next(i for i, r in enumerate(reasons) if r != OK_REASON)
    col = batch.column(BAD_COLUMN)[i].as_py()
    where = f" in column '{col}'" if col and col != "_" else ""
    if plan.keep_columns:
        k = plan.keep_columns[0]
        row = f"row with {k}={batch.column(k)[i].as_py()!r}"
    else:
        row = "a row (add a key to output.keep_columns to name it)"
    return f"{row} is bad: {reasons[i]}{where} (quarantine.on_bad_rows: fail)"


def partition_scorer(
    plan: ScoringPlan, schema: pa.Schema | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function of the DataFrame lane.

    With `schema` (the task's output schema, `bs__stats` last) each task ends its output
    with its stats row (`scored_with_stats`). Every task that runs to its end reports, an
    empty one too: zero rows, and the model load its worker did for it.
    """

    def score_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        if schema is None:
            yield from score_batches(plan, batches)
            return
        stats: dict[str, Any] = {}
        yield from scored_with_stats(score_batches(plan, batches, stats), stats, schema)

    return score_partition


STATS_FIELD = pa.field(STATS_COLUMN, pa.string())


def scored_with_stats(
    scored: Iterable[pa.RecordBatch], stats: dict[str, Any], schema: pa.Schema
) -> Iterator[pa.RecordBatch]:
    """A task's scored batches with a null `bs__stats`, then its one stats row: `stats` (filled
    once `scored` ends, and `tasks`: 1) as JSON, and in every other column a null, or a zero value where the
    column is not nullable in `schema` (Spark refuses a null there). `schema` is the declared
    one, `STATS_FIELD` last; the row takes the batches' own (an Arrow stream keeps one schema)."""
    stream_schema = schema
    for batch in scored:
        # RecordBatch.append_column is pyarrow 15+: built from the columns on every stack
        out = pa.RecordBatch.from_arrays([*batch.columns, pa.nulls(batch.num_rows, pa.string())],
                                         schema=batch.schema.append(STATS_FIELD))
        stream_schema = out.schema
        yield out
    row = [pa.array([stats_json({**stats, "tasks": 1})], pa.string()) if f.name == STATS_COLUMN
           else pa.nulls(1, s.type) if f.nullable else pa.array([_zero(s.type)], s.type)
           for f, s in zip(schema, stream_schema, strict=True)]
    yield pa.RecordBatch.from_arrays(row, schema=stream_schema)


def _zero(t: pa.DataType) -> Any:
    """A value of type `t` with no null inside: zero, empty, or a struct of those."""
    if pa.types.is_struct(t):
        return {t.field(i).name: _zero(t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_fixed_size_list(t):
        return [_zero(t.value_type)] * t.list_size
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        return []
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return ""
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return b"\0" * getattr(t, "byte_width", 0)
    if pa.types.is_boolean(t):
        return False
    if pa.types.is_decimal(t):
        return decimal.Decimal(0)
    return 0  # numbers, dates, times, timestamps, durations


# Spark types a stacked feed's columns may have to be packed into one array column.
_PACKABLE = ("byte", "short", "integer", "long", "float", "double")


def pack_stacked_feeds(df: Any, plan: ScoringPlan) -> tuple[list[Any], ScoringPlan]:
    """The DataFrame lane's select list, with each stacked feed's columns packed into one array.

    Spark hands Python one Arrow column per selected column, filling them row by
    row; one `array(c1, ..., cD)` column costs the JVM far less than D scalar
    columns (bench/README.md). Packed only when all D columns share one numeric
    type, so the array holds exactly their values; nulls stay element nulls.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    types = {f.name: f.dataType.typeName() for f in df.schema.fields}
    feeds: list[InputFeed] = []
    packed: dict[str, Any] = {}
    for feed in plan.feeds:
        kinds = {types[c] for c in feed.columns}
        if feed.stacked and len(feed.columns) > 1 and len(kinds) == 1 and kinds <= set(_PACKABLE):
            name = f"bs__packed_{len(packed)}"
            packed[name] = F.array(*feed.columns).alias(name)
            feed = dataclasses.replace(feed, packed=name)
        feeds.append(feed)
    plan = dataclasses.replace(plan, feeds=tuple(feeds))
    plain = dict.fromkeys(plan.keep_columns)
    plain.update(dict.fromkeys(c for f in plan.feeds if not f.packed for c in f.columns))
    return [*plain, *packed.values()], plan


def with_predictions(df: Any, plan: ScoringPlan, *, partitions: int | None = None, task_stats: bool = True) -> Any:
    """DataFrame lane: `df` -> keep columns + predictions + bs__reason + bs__column (+ bs__stats).

    Args:
        partitions: rebalance first: a round-robin repartition of the selected columns into this many
            partitions (batchscore.run.planning.plan_dataframe_tasks says when it pays).
        task_stats: each task ends with its stats row (`scored_with_stats`); a `TaskStats`
            (batchscore.udfs.lanes.stats) observes them and drops them.
    """
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    select, plan = pack_stacked_feeds(df, plan)
    selected = df.select(*select)
    if partitions is not None:  # only the columns scoring reads cross the shuffle
        selected = selected.repartition(partitions)
    arrow_out = scored_schema(plan, to_arrow_schema(selected.schema))
    if task_stats:
        arrow_out = arrow_out.append(STATS_FIELD)
    return selected.mapInArrow(partition_scorer(plan, arrow_out if task_stats else None), from_arrow_schema(arrow_out))


def fixed_row_bytes(schema: pa.Schema, plan: ScoringPlan) -> int | None:
    """About how many bytes one input row takes in the DataFrame lane's Arrow batches.

    None when a column's width can vary: strings, binary, structs, or lists whose
    model input does not fix every dimension. Lets the job bound Arrow batches by
    rows alone (see batchscore.run.lane_choice.arrow_batch_conf).
    """
    elements = {f.columns[0]: f.spec.size for f in plan.feeds
                if not f.stacked and f.depth > 0 and all(d is not None for d in f.spec.shape)}
    total = 0
    for c in plan.input_columns:
        t, depth = tt.leaf_type(schema.field(c).type)
        if depth and c not in elements:
            return None
        try:
            width = max(1, t.bit_width // 8)
        except ValueError:  # not a fixed-width type
            return None
        total += (elements[c] * width + 4 * depth) if depth else width  # + list offsets
    return total


def arrow_schema_of(df: Any) -> pa.Schema:
    """The Arrow schema Spark uses for a DataFrame's batches."""
    from pyspark.sql.pandas.types import to_arrow_schema  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    return to_arrow_schema(df.schema)
