"""The scoring job's config as typed objects, validated once where the job starts.

`batchscore.config.loader` reads YAML and `--set` overrides into a plain mapping
and calls `parse_job_spec`; everything after that (the engine included) takes
these models. Unknown keys are refused, choices are the Literals of
`batchscore.core.choices`, and every validation error becomes one `ConfigError`
line naming the dotted key (`batchscore.config.fields`).
"""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import Field, StrictBool, field_validator

from batchscore.config.fields import (
    ColumnNames,
    Columns,
    Masks,
    PadValues,
    Path,
    PositiveInt,
    Renames,
    Section,
    Wording,
    none_is_empty,
    validate,
)
from batchscore.core.choices import (
    Distribution,
    InputFormat,
    Lane,
    OnBadRows,
    OutputFormat,
    OutputMode,
    Placement,
    Sharing,
)
from batchscore.core.errors import ConfigError

REQUIRED = ("input.path", "model.path", "output.path")


def _date_is_text(v: Any) -> Any:
    """YAML reads `2026-03-01` as a date and `2026-03-01 12:00:00` as a datetime: Spark takes the text."""
    return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat() if isinstance(v, dt.date) else v


def _one_name_is_a_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v  # `--set output.partition_by=as_of_date`


class InputSpec(Section):
    """`input:` where the rows come from and how columns feed the model."""

    path: Path
    format: InputFormat = "parquet"
    filter: str | None = None
    columns: Columns = {}
    lane: Lane = "auto"
    ignore_corrupt_files: StrictBool = False
    pad: PadValues = {}
    pad_multiple: PositiveInt = 1
    mask: Masks = {}
    version: Annotated[int, Field(strict=True, ge=0)] | None = None  # Delta time travel: a table version
    timestamp: str | None = None  # ... or a timestamp (`2026-03-01` or `2026-03-01 12:00:00`)

    _empty_maps = field_validator("columns", "pad", "mask", mode="before")(none_is_empty)
    _timestamp = field_validator("timestamp", mode="before")(_date_is_text)


class ModelSpec(Section):
    """`model:` what scores the rows."""

    path: Path
    signature: str = "serving_default"
    batch_size: PositiveInt = 1024
    distribution: Distribution = "broadcast"
    # worker: each Python worker loads its own copy; executor: one model host process per executor
    # (per assigned GPU) serves every worker of that executor
    sharing: Sharing = "worker"
    # replicate: the whole model on each task's device; split: consecutive layer groups over the
    # task's devices, run as a pipeline over micro-batches
    placement: Placement = "replicate"
    gpu_memory_mb: PositiveInt | None = None  # a per-process GPU memory limit; default: memory growth
    # sharing executor: after a request, how long the host waits for requests of other workers
    # to join into one model call (up to batch_size rows); 0: never wait
    host_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    # Start every task slot's Python worker and import TF while the driver plans. Off until the
    # cold benchmark shows it pays: in the one quiet run measured it did not overlap planning.
    warmup: bool = False


class OutputSpec(Section):
    """`output:` where predictions go and which input columns go with them."""

    path: Path
    format: OutputFormat = "parquet"
    mode: OutputMode = "error"
    partition_by: ColumnNames = []
    keep_columns: ColumnNames = []
    rename: Renames = {}

    _lists = field_validator("partition_by", "keep_columns", mode="before")(_one_name_is_a_list)
    _empty_maps = field_validator("rename", mode="before")(none_is_empty)


class QuarantineSpec(Section):
    """`quarantine:` where bad rows go, or whether they fail the run."""

    path: str | None = None
    on_bad_rows: OnBadRows = "quarantine"


class JobSpec(Section):
    """A whole scoring job config; `spark` is free-form Spark conf."""

    spark: dict[str, Any] = {}
    input: InputSpec
    model: ModelSpec
    output: OutputSpec
    quarantine: QuarantineSpec = QuarantineSpec()

    _empty_maps = field_validator("spark", mode="before")(none_is_empty)


_WORDING = Wording(
    required={key: "a path" for key in REQUIRED},
    expected={  # keys whose type alone would not say what is expected
        "input.columns": "must be a mapping (input -> column) or a list of columns",
        "output.partition_by": "must be a list of column names",
        "output.keep_columns": "must be a list of column names",
        "input.pad": "must be a mapping (input name -> padding value)",
        "input.mask": "must be a mapping (mask input -> the padded input it masks)",
        "input.version": "must be a Delta table version (an integer >= 0)",
        "input.timestamp": "must be a timestamp string such as '2026-03-01 12:00:00'",
        "model.gpu_memory_mb": "must be a positive integer (MB of GPU memory per process)",
        "model.host_wait_ms": "must be a number of milliseconds from 0 to 1000",
    },
    entry_expected={  # ... and one entry of a mapping key (`output.rename.<output>`)
        "input.pad": "must be a scalar padding value (a number or a string)",
        "input.mask": "must name the padded input it masks",
        "output.rename": "must be a string (a column name)",
    },
)


def parse_job_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a job config mapping (defaults filled in).

    Raises:
        ConfigError: one line naming the first wrong key and what it must be.
    """
    data = dict(data)
    for section in ("input", "model", "output"):  # a missing section reports its missing path
        data.setdefault(section, {})
    spec = validate(JobSpec, data, _WORDING)
    _check_time_travel(spec.input)
    return spec


def _check_time_travel(spec: InputSpec) -> None:
    """`input.version` / `input.timestamp`: one of them at most, and only for Delta input."""
    given = [k for k in ("version", "timestamp") if getattr(spec, k) is not None]
    if len(given) == 2:
        raise ConfigError("config keys 'input.version' and 'input.timestamp' are mutually exclusive; set one")
    if given and spec.format != "delta":
        raise ConfigError(f"config key 'input.{given[0]}' (time travel) needs input.format delta, "
                          f"got {spec.format!r}")
