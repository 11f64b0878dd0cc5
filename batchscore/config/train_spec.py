"""The training job's config (`batchscore train`) as typed objects, validated once where the job starts.

`batchscore.config.loader.load_train_config` reads YAML and `--set` overrides into a plain mapping
and calls `parse_train_spec`; the trainer takes these models. As for scoring
(`batchscore.config.job_spec`): unknown keys are refused, choices are Literals, and every
validation error becomes one `ConfigError` line naming the dotted key.
"""
from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchscore.core.errors import ConfigError

PositiveInt = Annotated[int, Field(strict=True, gt=0)]  # strict: no bools, no "16"
Path = Annotated[str, Field(min_length=1)]

REQUIRED = ("train.data", "train.label", "train.output", "train.features")
TASKS = ("binary", "multiclass", "regression")
BUILT_IN_MODELS = ("mlp", "cnn")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainSection(_Section):
    """`train:` the data, the model, how to train it and where the export goes (DESIGN.md, "Training config")."""

    data: Path
    filter: str | None = None  # a Spark SQL predicate over the training set
    # a fraction of the rows held out by a seeded hash of `key`, or the path of a validation set
    validation: Annotated[float, Field(ge=0.0, lt=1.0)] | Path = 0.1
    key: str = "id"
    features: list[str] | str  # scalar columns stacked in order, or one array column
    label: Path
    task: Literal["binary", "multiclass", "regression"] = "binary"
    classes: PositiveInt | None = None  # multiclass: default max(label) + 1
    model: Path = "mlp"  # mlp | cnn | "package.module:function"
    hidden: list[PositiveInt] = [64, 32]  # mlp: the hidden layers' widths
    input_shape: list[PositiveInt] | None = None  # e.g. [8, 8, 1]: reshape a flat array feature for a cnn
    normalize: bool = True  # standardise the features inside the model (mean/variance of a seeded sample)
    epochs: PositiveInt = 2
    batch_size: PositiveInt = 1024  # the global batch: split over the replicas of all workers
    learning_rate: Annotated[float, Field(gt=0.0)] = 0.001
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    devices: PositiveInt | None = None  # mirrored: replicas (the GPUs, else this many logical CPUs; default 2)
    workers: PositiveInt = 1  # Spark barrier tasks for multi_worker
    reader: Literal["arrow", "petastorm"] = "arrow"
    shuffle_buffer: PositiveInt = 10_000  # rows held for shuffling (the reader's memory bound)
    seed: Annotated[int, Field(strict=True)] = 7
    output: Path  # the exported SavedModel directory
    checkpoint_dir: str | None = None  # default: <output>_checkpoints

    @field_validator("features", mode="before")
    @classmethod
    def _features_given(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainSection:
        if self.model == "cnn" and self.input_shape is None:
            raise ValueError("cnn needs train.input_shape")
        if self.model not in BUILT_IN_MODELS and ":" not in self.model:
            raise ValueError("model")
        return self


class TrainSpec(_Section):
    """A whole training job config; `spark` is free-form Spark conf (used by multi_worker and petastorm)."""

    spark: dict[str, Any] = {}
    train: TrainSection

    @field_validator("spark", mode="before")
    @classmethod
    def _none_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints go: `train.checkpoint_dir`, else `<output>_checkpoints` beside the export."""
        return self.train.checkpoint_dir or self.train.output.rstrip("/") + "_checkpoints"


_EXPECTED = {
    "train.validation": "must be a fraction in [0, 1) or the path of a validation set",
    "train.features": "must be a list of scalar columns or the name of one array column",
    "train.hidden": "must be a list of positive layer widths",
    "train.input_shape": "must be a list of positive dimensions, e.g. [8, 8, 1]",
    "train.learning_rate": "must be a positive number",
    "train.seed": "must be an integer",
}


def parse_train_spec(data: dict[str, Any]) -> TrainSpec:
    """Validate a training config mapping (defaults filled in).

    Raises:
        ConfigError: one line naming the first wrong key and what it must be.
    """
    data = dict(data)
    data.setdefault("train", {})
    try:
        spec = TrainSpec.model_validate(data)
    except ValidationError as e:
        errors = sorted(e.errors(), key=lambda err: err["type"] != "extra_forbidden")  # unknown keys first
        raise ConfigError(_message(errors[0], data)) from None
    return spec


def _message(err: Any, data: dict[str, Any]) -> str:
    """One `ConfigError` line for one pydantic error."""
    loc = [str(p) for p in err["loc"]]
    if len(loc) >= 2 and loc[0] == "train" and loc[1] in TrainSection.model_fields:
        loc = loc[:2]  # `train.validation.float` -> `train.validation`
    key = ".".join(loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        holder = TrainSection if loc[0] == "train" and len(loc) > 1 else TrainSpec
        return f"unknown config key '{key}' (known here: {', '.join(sorted(holder.model_fields))})"
    if key == "train" and err["type"] == "value_error":  # a model_validator: which key is inconsistent
        return _consistency_message(data.get("train") or {})
    if err["type"] == "missing":
        return f"config key '{key}' is required"
    if key == "train" or key == "spark":
        return f"config key '{key}' must be a mapping"
    field = TrainSection.model_fields.get(loc[1]) if len(loc) > 1 else None
    annotation = field.annotation if field is not None else None
    choices = _literal_choices(annotation)
    if choices:
        return f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}"
    if key in _EXPECTED:
        return f"config key '{key}' {_EXPECTED[key]}, got {value!r}"
    if "int" in err["type"] or "greater_than" in err["type"]:
        return f"config key '{key}' must be a positive integer, got {value!r}"
    return f"config key '{key}': {err['msg'][:1].lower()}{err['msg'][1:]}, got {value!r}"


def _consistency_message(train: dict[str, Any]) -> str:
    model = train.get("model", "mlp")
    if model == "cnn" and train.get("input_shape") is None:
        return "config key 'train.input_shape' is required for model cnn (e.g. [8, 8, 1])"
    return (f"config key 'train.model' must be mlp, cnn or 'package.module:function' "
            f"(a function returning a Keras model), got {model!r}")


def _literal_choices(annotation: Any) -> tuple[str, ...]:
    if typing.get_origin(annotation) is Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    return ()
