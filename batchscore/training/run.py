"""A training run, start to finish: the filter, the reader, the strategy, then `batchscore.training.loop`.

`run_training(spark, spec)` is what `jobs.train` calls. `multi_worker` goes to Spark
barrier tasks (batchscore/training/multiworker.py); `default` and `mirrored` train in this process.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from batchscore.config.train_spec import TrainSpec
from batchscore.core.errors import ConfigError

LTS_HINT = "petastorm needs the lts stack (pyspark 3.5, pyarrow 14, numpy 1.26; `make test-lts` builds it)"


def needs_spark(spec: TrainSpec) -> bool:
    """Whether the run needs a SparkSession (barrier tasks, petastorm's converter, Spark's filter)."""
    t = spec.train
    return t.strategy == "multi_worker" or t.reader == "petastorm" or bool(t.filter)


def run_training(spark: Any, spec: TrainSpec) -> dict[str, Any]:
    """Train as `spec` says; the training manifest.

    Args:
        spark: a session when `needs_spark(spec)`, else unused (None is fine).

    Raises:
        ConfigError, SchemaError, InputError: a user error, one line naming the key, column or file.
    """
    started = time.time()
    t = spec.train
    reader = petastorm_reader(spark, spec) if t.reader == "petastorm" else None
    row_filter = spark_row_filter(spark, spec) if t.filter else None
    if t.strategy == "multi_worker":
        from batchscore.training.multiworker import run_multi_worker  # noqa: PLC0415 - pyspark: only for barrier tasks

        return run_multi_worker(spark, spec, row_filter=row_filter)
    from batchscore.training import loop as training  # noqa: PLC0415 - TensorFlow: seconds of import, only where a model trains

    strategy = training.make_local_strategy(spec)  # first: logical CPUs are set before TF's runtime starts
    data = training.prepare(spec, row_filter=row_filter)
    with contextlib.ExitStack() as stack:
        dataset_fn = reader(stack) if reader is not None else None
        manifest = training.train(spec, strategy, data=data, dataset_fn=dataset_fn, started_at=started)
    if manifest is None:
        raise RuntimeError("the only worker is the chief, yet it wrote no manifest")
    return manifest


def petastorm_reader(spark: Any, spec: TrainSpec) -> Callable[[contextlib.ExitStack], Callable[..., Any]]:
    """`train.reader: petastorm`: a factory of the training loop's dataset function.

    Raises:
        ConfigError: petastorm cannot be imported on this stack, or the config asks for
            what its reader does not do (multi_worker; a validation fraction: it has no key split).
    """
    t = spec.train
    try:
        from batchscore.training.petastorm_reader import (  # noqa: PLC0415 - petastorm: the lts stack only
            petastorm_dataset,
            require_petastorm,
        )
    except ImportError as e:
        raise ConfigError(f"config key 'train.reader' petastorm: {LTS_HINT}; here: {e}") from None
    require_petastorm()  # ConfigError, one line, where petastorm cannot be imported (the current stack)
    if t.strategy == "multi_worker":
        raise ConfigError("config key 'train.reader' petastorm works with train.strategy default or mirrored; "
                          "multi_worker reads with the arrow reader")
    if isinstance(t.validation, float) and t.validation > 0:
        raise ConfigError("config key 'train.validation' must be a path (or 0) with train.reader petastorm: "
                          "it reads whole datasets, without the key's split")
    features = [t.features] if isinstance(t.features, str) else list(t.features)

    def factory(stack: contextlib.ExitStack) -> Callable[..., Any]:
        def read(subset: str, shard: int, num_shards: int, batch_size: int, epoch: int, shuffle: bool) -> Any:
            path = t.validation if subset == "validation" and isinstance(t.validation, str) else t.data
            return stack.enter_context(petastorm_dataset(spark, path=path, features=features, label=t.label,
                                                         batch_size=batch_size, shard=shard, num_shards=num_shards,
                                                         seed=t.seed + epoch))

        return read

    return factory


def spark_row_filter(spark: Any, spec: TrainSpec) -> tuple[Any, tuple[str, ...], dict[str, Any]] | None:
    """`train.filter` as Spark reads it, translated for the arrow reader: (expression, columns, column types).

    Raises:
        ConfigError: Spark rejects the filter, or it uses SQL the arrow reader cannot evaluate exactly.
    """
    from pyspark.sql.pandas.types import to_arrow_schema  # noqa: PLC0415 - pyspark is the optional [spark] extra

    from batchscore.udfs.batches.arrow_filter import UnsupportedFilter, apply_filter, arrow_filter  # noqa: PLC0415 - pyspark

    t = spec.train
    try:
        df = apply_filter(spark.read.parquet(t.data), t.filter)
        schema = to_arrow_schema(df.schema)
        found = arrow_filter(df, schema)
    except ConfigError as e:
        raise ConfigError(str(e).replace("input.filter", "train.filter")) from None
    except UnsupportedFilter as e:
        raise ConfigError(f"{str(e).replace('input.filter', 'train.filter')} (the arrow reader evaluates "
                          "comparisons, IN, IS NULL, AND/OR/NOT)") from None
    if found is None:
        return None
    return found.exact, found.columns, {c: schema.field(c).type for c in found.columns}
