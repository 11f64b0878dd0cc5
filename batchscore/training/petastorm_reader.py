"""`train.reader: petastorm`: a Parquet training set fed to TensorFlow through petastorm.

petastorm's Spark converter (`make_spark_converter`) writes the selected columns, floats as
float32, to a cache folder as Parquet; `make_tf_dataset` reads that back with petastorm's
reader, shard `cur_shard` of `shard_count` by row group. petastorm 0.13.1 runs only on the
lts stack (requirements-lts.txt, `make test-lts`): it imports pyarrow APIs removed in
pyarrow 15 and numpy APIs removed in numpy 2, so on the current stack this module raises
ConfigError. The project's own `train.reader: arrow` works on every stack.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from batchscore.core.errors import ConfigError, InputError, SchemaError

PARENT_CACHE_CONF = "petastorm.spark.converter.parentCacheDirUrl"  # petastorm's SparkDatasetConverter setting
_NUMERIC = ("byte", "short", "integer", "long", "float", "double", "boolean")  # Spark typeName()s


def require_petastorm() -> Any:
    """petastorm's Spark converter module; ConfigError (one line) where it cannot be imported."""
    try:
        from petastorm import spark as petastorm_spark  # noqa: PLC0415 - only the lts stack has it
    except Exception as e:  # noqa: BLE001 - ImportError, or an AttributeError from the pyarrow/numpy it expects
        raise ConfigError(
            "train.reader 'petastorm' runs only on the lts stack (requirements-lts.txt, `make test-lts`): "
            "petastorm 0.13.1 needs the pyarrow < 15 and numpy < 2 APIs this stack lacks "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); use train.reader 'arrow'"
        ) from None
    return petastorm_spark


def _training_frame(spark: Any, path: str, features: list[str], label: str, num_shards: int) -> tuple[Any, bool]:
    """The Parquet at `path` as a DataFrame of `features` then `label`, with at least `num_shards`
    partitions (petastorm shards by row group: each file written is one or more); and whether the
    features are one array column (used as is) rather than scalar columns (stacked).

    Raises:
        InputError: `path` does not exist or is not Parquet.
        SchemaError: a column is missing, not numeric, or arrays and scalars are mixed.
    """
    from pyspark.errors import AnalysisException  # noqa: PLC0415 - pyspark is the optional [spark] extra

    try:
        df = spark.read.parquet(path)
    except AnalysisException as e:
        raise InputError(f"train.data '{path}' cannot be read as Parquet: {str(e).splitlines()[0]}") from None
    types = {f.name: f.dataType for f in df.schema.fields}
    for name, key in [*((f, "train.features") for f in features), (label, "train.label")]:
        if name not in types:
            raise SchemaError(f"{key}: column '{name}' is not in {path} (columns: {', '.join(types)})")
    arrays = [f for f in features if types[f].typeName() == "array"]
    if arrays and len(features) > 1:
        raise SchemaError(f"train.features: '{arrays[0]}' is an array column; give it alone, or only scalar columns")
    for name in features:
        kind = types[name].elementType.typeName() if name in arrays else types[name].typeName()
        if kind not in _NUMERIC:
            raise SchemaError(f"train.features: column '{name}' is {types[name].simpleString()}, not numeric")
    df = df.select(*features, label)
    if df.rdd.getNumPartitions() < num_shards:
        df = df.repartition(num_shards)
    return df, bool(arrays)


def _check_args(features: list[str], label: str, batch_size: int, shard: int, num_shards: int) -> None:
    if not features or not all(isinstance(f, str) and f for f in features):
        raise ConfigError(f"train.features must be a non-empty list of column names, got {features!r}")
    if label in features:
        raise ConfigError(f"train.label '{label}' is also in train.features")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"train.batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(num_shards, int) and num_shards >= 1 and isinstance(shard, int) and 0 <= shard < num_shards):
        raise ConfigError(f"shard must be in [0, num_shards), got shard={shard!r} of num_shards={num_shards!r}")


@contextlib.contextmanager
def _cache_url(spark: Any, cache_dir: str | None) -> Iterator[str]:
    """Point petastorm's converter at `cache_dir` (a URL, or a local path; default: a temporary
    folder, removed at exit) for the duration; the previous setting is restored after."""
    own = None if cache_dir else tempfile.mkdtemp(prefix="batchscore-petastorm-")
    folder = cache_dir or own or ""
    url = folder if "://" in folder or folder.startswith("dbfs:") else "file://" + os.path.abspath(folder)
    before = spark.conf.get(PARENT_CACHE_CONF, None)
    spark.conf.set(PARENT_CACHE_CONF, url)
    try:
        yield url
    finally:
        if before is None:
            spark.conf.unset(PARENT_CACHE_CONF)
        else:
            spark.conf.set(PARENT_CACHE_CONF, before)
        if own:
            shutil.rmtree(own, ignore_errors=True)


@contextlib.contextmanager
def petastorm_dataset(
    spark: Any,
    *,
    path: str,
    features: list[str],
    label: str,
    batch_size: int,
    shard: int = 0,
    num_shards: int = 1,
    seed: int = 0,
    cache_dir: str | None = None,
    num_epochs: int | None = 1,
) -> Iterator[Any]:
    """A `tf.data.Dataset` of `(features [batch, D] float32, label [batch])` from the Parquet at `path`.

    Scalar feature columns are stacked in the given order into one `[batch, D]` tensor; one
    array column is used as is (`[batch, D]`). Floats become float32 (petastorm's converter);
    the label keeps its type. Shard `shard` of `num_shards` gets its row groups only, so the
    shards together hold every row once; the row groups' order is shuffled with `seed`.
    The dataset is valid inside the `with` block; the converter's cache is deleted after it:

        with petastorm_dataset(spark, path="data/train", features=["f0", "f1"], label="y",
                               batch_size=256, shard=0, num_shards=2) as ds:
            model.fit(ds, epochs=1)

    Args:
        cache_dir: where the converter writes its Parquet copy (a URL every executor and this
            process can reach, or a local path; default a temporary folder).
        num_epochs: passes over the data (None: repeat without end).

    Raises:
        ConfigError: petastorm cannot be imported here (the current stack), or a bad argument.
        InputError, SchemaError: the Parquet or its columns cannot feed the dataset.
    """
    _check_args(features, label, batch_size, shard, num_shards)
    df, one_array = _training_frame(spark, path, list(features), label, num_shards)
    petastorm_spark = require_petastorm()
    import tensorflow as tf  # noqa: PLC0415 - heavy: imported where a dataset is built

    with _cache_url(spark, cache_dir):
        converter = petastorm_spark.make_spark_converter(df, dtype="float32")
        # Shards are picked by row-group index over the files in this list's order, which comes
        # from Spark's file listing (a hash set): sorted, every converter of the same data (one per
        # worker) numbers the row groups alike, so the shards are disjoint and cover every row.
        converter.file_urls = sorted(converter.file_urls)
        try:
            with converter.make_tf_dataset(batch_size=batch_size, num_epochs=num_epochs, cur_shard=shard,
                                           shard_count=num_shards, seed=seed, shuffle_row_groups=True) as batches:

                def pair(batch: Any) -> tuple[Any, Any]:  # batch: a namedtuple of [batch] / [batch, D] columns
                    if one_array:
                        x = tf.cast(getattr(batch, features[0]), tf.float32)  # x: [batch, D]
                    else:
                        x = tf.stack([tf.cast(getattr(batch, f), tf.float32) for f in features], axis=1)
                    return x, getattr(batch, label)

                yield batches.map(pair)
        finally:
            converter.delete()
