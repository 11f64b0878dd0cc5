"""The scoring job's config as typed objects, validated once where the job starts.

`batchscore.config.loader` reads YAML and `--set` overrides into a plain mapping and calls
`parse_job_spec`; everything after that (the engine included) takes these
models. Unknown keys are refused, choices are Literals, and every validation
error becomes one `ConfigError` line naming the dotted key.
"""
from __future__ import annotations

import datetime as dt
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from batchscore.core.errors import ConfigError

PositiveInt = Annotated[int, Field(strict=True, gt=0)]  # strict: no bools, no "16"
Path = Annotated[str, Field(min_length=1)]
ColumnNames = list[str]

REQUIRED = ("input.path", "model.path", "output.path")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _none_is_empty(v: Any) -> Any:
    return {} if v is None else v


def _date_is_text(v: Any) -> Any:
    """YAML reads `2026-03-01` as a date and `2026-03-01 12:00:00` as a datetime: Spark takes the text."""
    return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat() if isinstance(v, dt.date) else v


def _one_name_is_a_list(v: Any) -> Any:
    return [v] if isinstance(v, str) else v  # `--set output.partition_by=as_of_date`


class InputSpec(_Section):
    """`input:` where the rows come from and how columns feed the model."""

    path: Path
    format: Literal["parquet", "delta", "orc", "table"] = "parquet"
    filter: str | None = None
    columns: dict[str, str | list[str]] | list[str] = {}
    lane: Literal["auto", "dataframe", "arrow"] = "auto"
    ignore_corrupt_files: StrictBool = False
    pad: dict[str, int | float | str] = {}
    pad_multiple: PositiveInt = 1
    mask: dict[str, str] = {}
    version: Annotated[int, Field(strict=True, ge=0)] | None = None  # Delta time travel: a table version
    timestamp: str | None = None  # ... or a timestamp (`2026-03-01` or `2026-03-01 12:00:00`)

    _empty_maps = field_validator("columns", "pad", "mask", mode="before")(_none_is_empty)
    _timestamp = field_validator("timestamp", mode="before")(_date_is_text)


class ModelSpec(_Section):
    """`model:` what scores the rows."""

    path: Path
    signature: str = "serving_default"
    batch_size: PositiveInt = 1024
    distribution: Literal["broadcast", "files", "direct"] = "broadcast"
    # worker: each Python worker loads its own copy; executor: one model host process per executor
    # (per assigned GPU) serves every worker of that executor (issue 13)
    sharing: Literal["worker", "executor"] = "worker"
    # replicate: the whole model on each task's device; split: consecutive layer groups over the
    # task's devices, run as a pipeline over micro-batches (issue 13)
    placement: Literal["replicate", "split"] = "replicate"
    gpu_memory_mb: PositiveInt | None = None  # a per-process GPU memory limit; default: memory growth
    # sharing executor: after a request, how long the host waits for requests of other workers
    # to join into one model call (up to batch_size rows); 0: never wait
    host_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0
    # Start every task slot's Python worker and import TF while the driver plans. Off until the
    # cold benchmark shows it pays: in the one quiet run measured it did not overlap planning.
    warmup: bool = False


class OutputSpec(_Section):
    """`output:` where predictions go and which input columns go with them."""

    path: Path
    format: Literal["parquet", "delta"] = "parquet"
    mode: Literal["error", "overwrite", "append", "overwrite_partitions"] = "error"
    partition_by: ColumnNames = []
    keep_columns: ColumnNames = []
    rename: dict[str, str] = {}

    _lists = field_validator("partition_by", "keep_columns", mode="before")(_one_name_is_a_list)
    _empty_maps = field_validator("rename", mode="before")(_none_is_empty)


class QuarantineSpec(_Section):
    """`quarantine:` where bad rows go, or whether they fail the run."""

    path: str | None = None
    on_bad_rows: Literal["quarantine", "fail"] = "quarantine"


class JobSpec(_Section):
    """A whole scoring job config; `spark` is free-form Spark conf."""

    spark: dict[str, Any] = {}
    input: InputSpec
    model: ModelSpec
    output: OutputSpec
    quarantine: QuarantineSpec = QuarantineSpec()

    _empty_maps = field_validator("spark", mode="before")(_none_is_empty)


# Messages for keys whose pydantic wording would not say what is expected.
_EXPECTED = {
    "input.columns": "must be a mapping (input -> column) or a list of columns",
    "input.ignore_corrupt_files": "must be true or false",
    "output.partition_by": "must be a list of column names",
    "output.keep_columns": "must be a list of column names",
    "input.pad": "must be a mapping (input name -> padding value)",
    "input.mask": "must be a mapping (mask input -> the padded input it masks)",
    "input.version": "must be a Delta table version (an integer >= 0)",
    "input.timestamp": "must be a timestamp string such as '2026-03-01 12:00:00'",
    "model.gpu_memory_mb": "must be a positive integer (MB of GPU memory per process)",
    "model.host_wait_ms": "must be a number of milliseconds from 0 to 1000",
}
# ... and for one entry of a mapping key (`output.rename.<output>`).
_ENTRY_EXPECTED = {
    "input.pad": "must be a scalar padding value (a number or a string)",
    "input.mask": "must name the padded input it masks",
    "output.rename": "must be a string (a column name)",
}


def parse_job_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a job config mapping (defaults filled in).

    Raises:
        ConfigError: one line naming the first wrong key and what it must be.
    """
    data = dict(data)
    for section in ("input", "model", "output"):  # a missing section reports its missing path
        data.setdefault(section, {})
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")  # unknown keys first
        raise ConfigError(_message(errors[0])) from None
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


def _message(err: Any) -> str:
    """One `ConfigError` line for one pydantic error."""
    holder, loc = _field_of(err["loc"])
    key = ".".join(str(p) for p in loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"unknown config key '{key}' (known here: {', '.join(sorted(holder.model_fields))})"
    if key in REQUIRED:
        return f"config key '{key}' is required (a path)"
    annotation = holder.model_fields[loc[-1]].annotation
    if typing.get_origin(annotation) is Literal:
        return f"config key '{key}' must be one of {', '.join(typing.get_args(annotation))}, got {value!r}"
    if annotation is int:
        return f"config key '{key}' must be a positive integer, got {value!r}"
    deeper = err["loc"][len(loc):]
    if key in _ENTRY_EXPECTED and deeper and isinstance(deeper[0], str):
        return f"config key '{key}.{deeper[0]}' {_ENTRY_EXPECTED[key]}, got {value!r}"
    if key in _EXPECTED:
        return f"config key '{key}' {_EXPECTED[key]}"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"config key '{key}' must be a mapping"
    return f"config key '{key}': {err['msg'][:1].lower()}{err['msg'][1:]}, got {value!r}"


def _field_of(loc: tuple[Any, ...]) -> tuple[type[BaseModel], tuple[str, ...]]:
    """(the model that holds the field, the dotted path down to the field) of an error's loc.

    A loc into a free-form mapping or list (`output.rename.x`, `output.keep_columns.0`)
    stops at that field; an unknown key ends the path.
    """
    holder: type[BaseModel] = JobSpec
    path: list[str] = []
    for part in loc:
        model = _section_type(holder, path[-1]) if path else JobSpec
        if model is None:
            break
        holder = model
        path.append(str(part))
        if part not in model.model_fields:
            break
    return holder, tuple(path)


def _section_type(holder: type[BaseModel], name: str) -> type[BaseModel] | None:
    inner = holder.model_fields[name].annotation if name in holder.model_fields else None
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None
