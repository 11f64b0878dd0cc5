"""The arrow reader (`train.reader: arrow`): Parquet row groups -> shuffled numpy chunks -> `tf.data`.

A `DatasetPlan` lists the training set's units (one Parquet row group each) in a fixed
order, the same on every worker; worker `i` of `n` reads units `i, i + n, ...`
(`shard_units`), shuffled through a bounded buffer (`iter_shard`); `tf_dataset` wraps the
chunks in a `tf.data.Dataset`. The validation split is a seeded hash of the key column
(`in_validation`), so a row is in the same split on every worker, epoch and rerun.

Only pyarrow and numpy are needed to plan and read (testable without TensorFlow);
TensorFlow is imported by `tf_dataset` alone.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from batchscore.core.errors import InputError, SchemaError

Subset = Literal["train", "validation", "all"]
LabelKind = Literal["float", "int"]
PIECE_ROWS = 4096  # rows read from a row group at a time


@dataclass(frozen=True)
class Unit:
    """One Parquet row group: the reader's unit of sharding."""

    path: str
    row_group: int
    rows: int
    partition: tuple[tuple[str, Any], ...] = ()  # the file's hive partition values


@dataclass(frozen=True)
class DatasetPlan:
    """What every worker reads, in one fixed order (picklable; made the same on every worker)."""

    path: str
    units: tuple[Unit, ...]
    features: tuple[str, ...]  # scalar columns stacked in order, or one array column
    array_feature: bool
    dim: int  # features per row, D
    label: str
    label_kind: LabelKind
    key: str | None  # the split's hash key (None: no split)
    fingerprint: str
    filesystem: Any = field(default=None, compare=False)
    row_filter: Any = None  # a pyarrow Expression of the rows kept (train.filter), or None
    filter_columns: tuple[str, ...] = ()
    partition_types: tuple[tuple[str, Any], ...] = ()  # type of each partition column the filter reads

    @property
    def rows(self) -> int:
        """Rows in the units (before any filter or split)."""
        return sum(u.rows for u in self.units)


def plan_dataset(path: str, *, features: list[str] | str, label: str, key: str | None,
                 label_kind: LabelKind = "float", row_filter: Any = None,
                 filter_columns: tuple[str, ...] = (), partition_types: dict[str, Any] | None = None) -> DatasetPlan:
    """List the row groups of the Parquet dataset at `path` and check its columns.

    Raises:
        InputError: the path holds no readable Parquet.
        SchemaError: a feature, label or key column is missing or not numeric.
    """
    try:
        dataset = ds.dataset(path, format="parquet", partitioning="hive")
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    except Exception as e:  # noqa: BLE001 - any unreadable input is the user's path: one line naming it
        raise InputError(f"cannot read training data '{path}': {str(e).splitlines()[0]}") from None
    if not fragments:
        raise InputError(f"training data '{path}' holds no Parquet files")
    names = [features] if isinstance(features, str) else list(features)
    schema = dataset.schema
    for column in [*names, label, *([key] if key else [])]:
        if schema.get_field_index(column) < 0:
            raise SchemaError(f"column '{column}' not found in '{path}' (columns: {', '.join(schema.names)})")
    array_feature = isinstance(features, str)
    dim = _array_dim(dataset, features) if isinstance(features, str) else len(names)
    if not array_feature:
        for column in names:
            if not _numeric(schema.field(column).type):
                raise SchemaError(f"feature column '{column}' must be numeric, got {schema.field(column).type}")
    units, sizes = [], []
    for frag in fragments:
        keys = ds.get_partition_keys(frag.partition_expression) or {}
        metadata = frag.metadata
        sizes.append([frag.path, metadata.serialized_size, metadata.num_rows])
        for rg in range(metadata.num_row_groups):
            units.append(Unit(frag.path, rg, metadata.row_group(rg).num_rows, tuple(sorted(keys.items()))))
    fingerprint = hashlib.sha256(json.dumps({"files": sizes, "features": names, "label": label,
                                             "key": key}).encode()).hexdigest()[:16]
    return DatasetPlan(path, tuple(units), tuple(names), array_feature, dim, label, label_kind, key, fingerprint,
                       dataset.filesystem, row_filter, tuple(filter_columns),
                       tuple(sorted((partition_types or {}).items())))


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _array_dim(dataset: ds.Dataset, column: str) -> int:
    t = dataset.schema.field(column).type
    if pa.types.is_fixed_size_list(t):
        return int(t.list_size)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise SchemaError(f"feature column '{column}' must be an array column (or list scalar columns), got {t}")
    for batch in dataset.to_batches(columns=[column], batch_size=16):
        if batch.num_rows:
            return int(pc.list_value_length(batch.column(0))[0].as_py())
    raise InputError(f"training data '{dataset.files[0]}' has no rows")


def shard_units(units: tuple[Unit, ...], shard: int, num_shards: int) -> list[Unit]:
    """Worker `shard`'s units: every `num_shards`-th, so the shards never overlap and miss nothing."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in [0, {num_shards})")
    return list(units[shard::num_shards])


def in_validation(keys: pa.Array | pa.ChunkedArray, *, fraction: float, seed: int) -> np.ndarray:
    """Which rows the seeded hash of their key puts in the validation split (a bool per row)."""
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    if pa.types.is_integer(keys.type):
        h = keys.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
    else:
        h = np.fromiter((zlib.crc32(str(k).encode()) for k in keys.to_pylist()), dtype=np.uint64, count=len(keys))
    return _unit_interval(_splitmix64(h ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))) < fraction


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _unit_interval(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass
class ReaderStats:
    """What a read held and produced (tests read it: the memory bound and the row count)."""

    rows: int = 0
    peak_buffer_rows: int = 0
    units_read: list[tuple[str, int]] = field(default_factory=list)


def iter_shard(plan: DatasetPlan, *, shard: int = 0, num_shards: int = 1, subset: Subset = "all",
               validation: float = 0.0, seed: int = 0, epoch: int = 0, shuffle: bool = True,
               buffer_rows: int = 10_000, piece_rows: int = PIECE_ROWS,
               stats: ReaderStats | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (features [n, D] float32, label [n]) chunks of one worker's shard.

    With `shuffle`, the shard's units are read in an order drawn from (seed, epoch, shard)
    and their rows leave through a shuffle buffer of at most `buffer_rows` rows (plus one
    piece of `piece_rows` being added); without it, rows come in plan order. The order is
    new each epoch; the reader never holds more than the buffer plus one piece of a row group.
    """
    stats = stats if stats is not None else ReaderStats()
    units = shard_units(plan.units, shard, num_shards)
    rng = np.random.default_rng([seed, epoch, shard])
    if shuffle:
        units = [units[i] for i in rng.permutation(len(units))]
    chunks = _read_units(plan, units, subset=subset, validation=validation, seed=seed,
                         piece_rows=min(piece_rows, buffer_rows), stats=stats)
    if not shuffle:
        for x, y in chunks:
            stats.rows += len(y)
            yield x, y
        return
    held: list[tuple[np.ndarray, np.ndarray]] = []
    n_held = 0
    for x, y in chunks:
        held.append((x, y))
        n_held += len(y)
        stats.peak_buffer_rows = max(stats.peak_buffer_rows, n_held)
        if n_held >= buffer_rows:
            # x: [n_held, D] -> emit a random half-and-more, keep buffer_rows // 2 rows for mixing
            bx, by = _shuffled(held, rng)
            keep = buffer_rows // 2
            stats.rows += n_held - keep
            yield bx[keep:], by[keep:]
            held, n_held = [(bx[:keep], by[:keep])], keep
    if n_held:
        bx, by = _shuffled(held, rng)
        stats.rows += n_held
        yield bx, by


def _shuffled(held: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([h[0] for h in held])
    y = np.concatenate([h[1] for h in held])
    order = rng.permutation(len(y))
    return x[order], y[order]


def _read_units(plan: DatasetPlan, units: list[Unit], *, subset: Subset, validation: float, seed: int,
                piece_rows: int, stats: ReaderStats) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, y) pieces of the units' rows in the subset, read `piece_rows` at a time."""
    wanted = [*plan.features, plan.label, *([plan.key] if plan.key else []), *plan.filter_columns]
    file_columns = [c for c in dict.fromkeys(wanted) if c not in dict(units[0].partition if units else ())]
    types = dict(plan.partition_types)
    for unit in units:
        stats.units_read.append((unit.path, unit.row_group))
        try:
            source = plan.filesystem.open_input_file(unit.path) if plan.filesystem is not None else unit.path
            pieces = pq.ParquetFile(source).iter_batches(batch_size=piece_rows, row_groups=[unit.row_group],
                                                         columns=file_columns)
            for batch in pieces:
                table = pa.Table.from_batches([batch])
                if plan.row_filter is not None:
                    table = _with_partition_columns(table, unit, plan.filter_columns, types).filter(plan.row_filter)
                if subset != "all" and plan.key:
                    held_out = in_validation(table.column(plan.key), fraction=validation, seed=seed)
                    table = table.filter(pa.array(held_out if subset == "validation" else ~held_out))
                if table.num_rows:
                    yield _features(table, plan, unit), _label(table, plan, unit)
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"cannot read training file {unit.path} (row group {unit.row_group}): "
                             f"{str(e).splitlines()[0]}") from None


def _with_partition_columns(table: pa.Table, unit: Unit, columns: tuple[str, ...], types: dict[str, Any]) -> pa.Table:
    """`table` with the filter's partition columns as constant columns (typed as Spark typed them)."""
    values = dict(unit.partition)
    for name in columns:
        if name in values and name not in table.column_names:
            scalar = pa.scalar(values[name])
            if name in types:
                scalar = scalar.cast(types[name])
            table = table.append_column(name, pa.array([scalar.as_py()] * table.num_rows, type=scalar.type))
    return table


def _features(table: pa.Table, plan: DatasetPlan, unit: Unit) -> np.ndarray:
    """x: [n, D] float32, from D scalar columns or one array column of D values per row."""
    for name in plan.features:
        if table.column(name).null_count:
            raise InputError(f"feature column '{name}' has nulls in {unit.path}")
    if not plan.array_feature:
        return np.stack([table.column(c).to_numpy().astype(np.float32) for c in plan.features], axis=1)
    col = table.column(plan.features[0]).combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if (lengths != plan.dim).any():
        raise InputError(f"feature column '{plan.features[0]}' has rows of {int(lengths[lengths != plan.dim][0])} "
                         f"values in {unit.path}; every row needs {plan.dim}")
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(len(col), plan.dim)


def _label(table: pa.Table, plan: DatasetPlan, unit: Unit) -> np.ndarray:
    """y: [n] float32 (binary, regression) or int32 (multiclass)."""
    col = table.column(plan.label)
    if col.null_count:
        raise InputError(f"label column '{plan.label}' has nulls in {unit.path}")
    y = col.to_numpy()
    return y.astype(np.int32) if plan.label_kind == "int" else y.astype(np.float32)


def label_max(plan: DatasetPlan) -> int:
    """The largest label in the dataset (multiclass: classes = this + 1), from the label column alone."""
    dataset = ds.dataset(plan.path, format="parquet", partitioning="hive")
    value = pc.max(dataset.to_table(columns=[plan.label]).column(0)).as_py()
    if value is None:
        raise InputError(f"label column '{plan.label}' has no values in '{plan.path}'")
    return int(value)


def sample_rows(plan: DatasetPlan, *, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of up to `rows` rows from units drawn in a seeded order: the same sample on
    every worker."""
    rng = np.random.default_rng([seed, 1])
    units = [plan.units[i] for i in rng.permutation(len(plan.units))]
    taken: list[tuple[np.ndarray, np.ndarray]] = []
    n = 0
    for x, y in _read_units(plan, units, subset="all", validation=0.0, seed=seed,
                            piece_rows=PIECE_ROWS, stats=ReaderStats()):
        taken.append((x, y))
        n += len(y)
        if n >= rows:
            break
    if not taken:
        raise InputError(f"training data '{plan.path}' has no rows")
    return np.concatenate([x for x, _ in taken])[:rows], np.concatenate([y for _, y in taken])[:rows]


def tf_dataset(plan: DatasetPlan, *, batch_size: int, shard: int = 0, num_shards: int = 1,
               subset: Subset = "all", validation: float = 0.0, seed: int = 0, epoch: int = 0,
               shuffle: bool = True, buffer_rows: int = 10_000) -> Any:
    """A `tf.data.Dataset` of (features [batch, D] float32, label [batch]) from one worker's shard.

    The output signature is fixed (`[None, D]`, `[None]`), the last batch may be short, and
    the next batches are prefetched while the model trains.
    """
    import tensorflow as tf  # noqa: PLC0415 - seconds of import: only where a dataset feeds TensorFlow

    label_dtype = tf.int32 if plan.label_kind == "int" else tf.float32
    signature = (tf.TensorSpec([None, plan.dim], tf.float32), tf.TensorSpec([None], label_dtype))
    dataset = tf.data.Dataset.from_generator(
        lambda: iter_shard(plan, shard=shard, num_shards=num_shards, subset=subset, validation=validation,
                           seed=seed, epoch=epoch, shuffle=shuffle, buffer_rows=buffer_rows),
        output_signature=signature,
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded here
    return dataset.rebatch(batch_size).prefetch(2).with_options(options)
