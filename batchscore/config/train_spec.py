"""The training job's config (`batchscore train`) as typed objects, validated once where the job starts.

`batchscore.config.loader.load_train_config` reads YAML and `--set` overrides into a
plain mapping and calls `parse_train_spec`; the trainer takes these models. As for
scoring (`job_spec`): unknown keys are refused, choices are the Literals of
`batchscore.core.choices`, and every validation error becomes one `ConfigError` line
naming the dotted key (`batchscore.config.fields`).
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from batchscore.config.fields import KeyProblem, Path, PositiveInt, Section, Wording, none_is_empty, validate
from batchscore.core.choices import BUILT_IN_MODELS, Reader, Strategy, Task

REQUIRED = ("train.data", "train.label", "train.output", "train.features")


class TrainSection(Section):
    """`train:` the data, the model, how to train it and where the export goes (docs/training.md, "Training config")."""

    data: Path
    filter: str | None = None  # a Spark SQL predicate over the training set
    # a fraction of the rows held out by a seeded hash of `key`, or the path of a validation set
    validation: Annotated[float, Field(ge=0.0, lt=1.0)] | Path = 0.1
    key: str = "id"
    features: list[str] | str  # scalar columns stacked in order, or one array column
    label: Path
    task: Task = "binary"
    classes: PositiveInt | None = None  # multiclass: default max(label) + 1
    model: Path = "mlp"  # mlp | cnn | "package.module:function"
    hidden: list[PositiveInt] = [64, 32]  # mlp: the hidden layers' widths
    input_shape: list[PositiveInt] | None = None  # e.g. [8, 8, 1]: reshape a flat array feature for a cnn
    normalize: bool = True  # standardise the features inside the model (mean/variance of a seeded sample)
    epochs: PositiveInt = 2
    batch_size: PositiveInt = 1024  # the global batch: split over the replicas of all workers
    learning_rate: Annotated[float, Field(gt=0.0)] = 0.001
    strategy: Strategy = "default"
    devices: PositiveInt | None = None  # mirrored: replicas (the GPUs, else this many logical CPUs; default 2)
    workers: PositiveInt = 1  # Spark barrier tasks for multi_worker
    reader: Reader = "arrow"
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
            raise KeyProblem("config key 'train.input_shape' is required for model cnn (e.g. [8, 8, 1])")
        if self.model not in BUILT_IN_MODELS and ":" not in self.model:
            raise KeyProblem(f"config key 'train.model' must be {', '.join(BUILT_IN_MODELS)} or "
                             f"'package.module:function' (a function returning a Keras model), got {self.model!r}")
        return self


class TrainSpec(Section):
    """A whole training job config; `spark` is free-form Spark conf (used by multi_worker and petastorm)."""

    spark: dict[str, Any] = {}
    train: TrainSection

    _empty_maps = field_validator("spark", mode="before")(none_is_empty)

    @property
    def checkpoint_dir(self) -> str:
        """Where checkpoints go: `train.checkpoint_dir`, else `<output>_checkpoints` beside the export."""
        return self.train.checkpoint_dir or self.train.output.rstrip("/") + "_checkpoints"


_WORDING = Wording(
    required={"train.data": "the training data's path", "train.label": "the label column",
              "train.output": "where the SavedModel goes", "train.features": "the feature columns"},
    expected={
        "train.validation": "must be a fraction in [0, 1) or the path of a validation set",
        "train.features": "must be a list of scalar columns or the name of one array column",
        "train.hidden": "must be a list of positive layer widths",
        "train.input_shape": "must be a list of positive dimensions, e.g. [8, 8, 1]",
        "train.learning_rate": "must be a positive number",
        "train.seed": "must be an integer",
    },
)


def parse_train_spec(data: dict[str, Any]) -> TrainSpec:
    """Validate a training config mapping (defaults filled in).

    Raises:
        ConfigError: one line naming the first wrong key and what it must be.
    """
    data = dict(data)
    data.setdefault("train", {})
    return validate(TrainSpec, data, _WORDING)
