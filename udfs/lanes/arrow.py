"""The Arrow lane: Spark schedules Parquet fragments, Python workers read them with pyarrow.

Spark never converts the input rows: the driver plans fragments (files, or row
groups of few large files) after partition pruning, each task opens its
fragments with a pyarrow filesystem, reads only the needed columns as Arrow
batches, keeps the rows Spark's filter keeps (a pyarrow expression compiled
from Spark's optimised plan on the driver, batchscore.udfs.batches.arrow_filter), scores them,
and hands back only keep columns and predictions, which Spark writes with its
own committers.
"""
from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from batchscore.core import compat
from batchscore.core.errors import ConfigError, InputError
from batchscore.core.storage import (
    HDFS_SCHEMES,
    list_input_files,
    parquet_footer_ok,
    pyarrow_fs,
    pyarrow_hdfs_problem,
    pyarrow_uri,
)
from batchscore.udfs.batches.arrow_filter import RowFilter
from batchscore.udfs.lanes.scoring import STATS_FIELD, score_batches, scored_schema, scored_with_stats


class UnsupportedInput(ValueError):
    """Input the Arrow lane cannot read exactly as Spark does (the job uses the DataFrame lane)."""


READ_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ArrowSource:
    """What every task needs to open its fragments: picklable, schema as IPC bytes."""

    root: str  # normalised URI or local path of the dataset root
    schema_ipc: bytes  # Spark-typed Arrow schema of data + partition columns
    partition_names: tuple[str, ...]
    columns: tuple[str, ...]  # columns a task returns, in order
    row_filter: RowFilter | None  # Spark's filter as pyarrow (batchscore.udfs.batches.arrow_filter), made on the driver
    ignore_corrupt_files: bool

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(self.schema_ipc))


@dataclass
class ArrowPlan:
    """Driver-side result: the source, the tasks, and what planning saw."""

    source: ArrowSource
    tasks: list[list[dict[str, Any]]]
    files: int
    corrupt_files: list[str] = field(default_factory=list)
    rebalance: str | None = None  # how files were split across tasks (None: whole files packed)


def _partitioning(schema: pa.Schema, names: tuple[str, ...]) -> ds.Partitioning:
    return ds.HivePartitioning(pa.schema([schema.field(n) for n in names]))


def _rel_dir(path: str, root: str) -> str:
    """`k=v/k2=v2/` of a file below root (the trailing slash makes pyarrow parse the last level)."""
    rel = posixpath.relpath(posixpath.dirname(path), root)
    return "" if rel == "." else rel + "/"


def plan_arrow_input(
    root: str,
    schema: pa.Schema,
    columns: list[str],
    *,
    row_filter: RowFilter | None = None,
    target_tasks: int,
    slots: int = 1,
    ignore_corrupt_files: bool = False,
    exclude: frozenset[str] = frozenset(),
) -> ArrowPlan:
    """Plan the fragments of a (hive-partitioned) Parquet dataset for `target_tasks` tasks.

    Fewer files than tasks: every file is split by row group (its footer read); else files
    larger than an even share (total bytes / target_tasks) are, so one large file among
    small ones does not make one long task. Fewer pieces than `slots` still (a file of one
    row group): the largest row groups are cut into row ranges, each read by its own task
    (every range decodes its row group's columns again: decoding costs far less than
    scoring the rows).

    Args:
        root: dataset path or URI.
        schema: the Spark-typed Arrow schema of the dataset (partition columns included).
        columns: the columns tasks must return.
        row_filter: the rows to keep (`arrow_filter.arrow_filter`); prunes partitions and row groups too.
        target_tasks: about how many tasks to make (batchscore.run.planning: 2 per task slot).
        slots: the executors' task slots: at least this many pieces when rows allow.
        exclude: files to leave out (corrupt files found beforehand).

    Raises:
        InputError: the path is missing, or a file is corrupt and not ignored.
        UnsupportedInput: the input is on HDFS and pyarrow's HDFS client cannot load here.
    """
    uri = pyarrow_uri(root)
    if uri.startswith(HDFS_SCHEMES) and (problem := pyarrow_hdfs_problem(uri)):
        raise UnsupportedInput(f"input.path '{root}' is on HDFS and {problem}")
    fs, base = pyarrow_fs(uri)
    infos = [i for i in list_input_files(fs, base) if i.path not in exclude]
    partition_names = _partition_names(infos, base, schema)
    stamps = [n for n in partition_names if pa.types.is_timestamp(schema.field(n).type)]
    if stamps:  # Spark reads `k=2026-03-29 01:00:00` in the session time zone, pyarrow as UTC
        raise UnsupportedInput(f"partition column '{stamps[0]}' holds timestamps, which pyarrow would not "
                               "read in the session time zone as Spark does")
    source = ArrowSource(uri, schema.serialize().to_pybytes(), partition_names, tuple(columns),
                         row_filter, ignore_corrupt_files)
    partitioning = _partitioning(schema, partition_names)
    fmt = ds.ParquetFileFormat()
    frags = [
        fmt.make_fragment(i.path, fs, partition_expression=partitioning.parse(_rel_dir(i.path, base)))
        for i in infos
    ]
    prune = row_filter.prune if row_filter is not None else None
    dataset = ds.FileSystemDataset(frags, schema, fmt, fs)
    kept = list(dataset.get_fragments(filter=prune)) if prune is not None else frags  # partition pruning
    corrupt: list[str] = []
    units, rebalance = _plan_units(kept, {i.path: i.size for i in infos}, schema, prune, ignore_corrupt_files,
                                   corrupt, target_tasks=target_tasks, slots=slots)
    return ArrowPlan(source, _bin_pack(units, target_tasks), files=len(infos),
                     corrupt_files=sorted(set(corrupt) | set(exclude)), rebalance=rebalance)


Unit = tuple[int, dict[str, Any]]  # (weight, {"path", "row_groups", and "rows" for a row range})


def _plan_units(kept: list[Any], sizes: dict[str, int], schema: pa.Schema, prune: Any, ignore_corrupt_files: bool,
                corrupt: list[str], *, target_tasks: int, slots: int) -> tuple[list[Unit], str | None]:
    """(weighed units to pack, how files were split or None) (`plan_arrow_input` says when files are split)."""
    share = sum(sizes.get(f.path, 1) for f in kept) / max(1, target_tasks)
    split = kept if len(kept) < target_tasks else [f for f in kept if sizes.get(f.path, 1) > share]
    split_paths = {f.path for f in split}
    units = [(sizes.get(f.path, 1), {"path": f.path, "row_groups": None}) for f in kept if f.path not in split_paths]
    whole = bool(units)  # whole files among the units: row groups are weighed by bytes too
    units += _row_group_units(split, schema, prune, ignore_corrupt_files, corrupt, sizes=sizes if whole else None)
    groups = len(units)
    if not whole:  # all units are row groups weighed by rows (with whole files, units >= target >= slots)
        units = _row_range_units(units, slots)
    if not split:
        return units, None
    ranges = f", {len(units) - groups} more piece(s) by row ranges" if len(units) > groups else ""
    return units, f"{len(split)} of {len(kept)} file(s) split into row groups{ranges} for {target_tasks} tasks"


def _partition_names(infos: list[Any], base: str, schema: pa.Schema) -> tuple[str, ...]:
    """The hive partition keys (`k=v` directory levels) of the files, in order, that the schema has."""
    names: list[str] = []
    for i in infos:
        for part in _rel_dir(i.path, base).strip("/").split("/"):
            if "=" in part and part.split("=", 1)[0] not in names:
                names.append(part.split("=", 1)[0])
    return tuple(n for n in names if n in schema.names)


def _row_group_units(kept: list[Any], schema: pa.Schema, prune: Any, ignore_corrupt_files: bool,
                     corrupt: list[str], *, sizes: dict[str, int] | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(rows, unit) for each row group the filter's statistics keep; unreadable files go to `corrupt`
    when ignored, else raise InputError. With `sizes` (file bytes), weights are the group's share of
    its file's bytes instead of rows, to pack beside whole files weighed by bytes."""
    units: list[tuple[int, dict[str, Any]]] = []
    for f in kept:
        try:
            f.physical_schema  # noqa: B018 - opens the file and reads its footer
        except (pa.ArrowInvalid, OSError) as e:
            if not ignore_corrupt_files:
                raise InputError(_corrupt_message(f.path, e)) from None
            corrupt.append(f.path)
            continue
        try:  # row-group statistics prune with the filter too
            pieces = f.split_by_row_group(filter=prune, schema=schema)
        except pa.ArrowInvalid as e:
            raise InputError(f"input.filter cannot be applied to {f.path}: {str(e).splitlines()[0]}") from None
        per_row = sizes[f.path] / max(1, f.metadata.num_rows) if sizes is not None else 1.0
        for p in pieces:
            rg = [r.id for r in p.row_groups]
            rows = sum(r.num_rows for r in p.row_groups)
            units.append((max(round(rows * per_row), 1), {"path": f.path, "row_groups": rg}))
    return units


def _row_range_units(units: list[tuple[int, dict[str, Any]]], slots: int) -> list[tuple[int, dict[str, Any]]]:
    """Cut the largest one-row-group units into halves by row range until there are `slots` units."""
    units = list(units)
    while len(units) < slots:
        ranged = [u for u in units if u[1]["row_groups"] is not None and len(u[1]["row_groups"]) == 1
                  and _rows_of(u) >= 2]
        if not ranged:
            break
        unit = max(ranged, key=_rows_of)
        units.remove(unit)
        start, stop = unit[1].get("rows") or (0, unit[0])
        mid = (start + stop) // 2
        units += [(b - a, {**unit[1], "rows": [a, b]}) for a, b in ((start, mid), (mid, stop))]
    return units


def _rows_of(unit: tuple[int, dict[str, Any]]) -> int:
    rows = unit[1].get("rows")
    return rows[1] - rows[0] if rows else unit[0]


def _bin_pack(units: list[tuple[int, dict[str, Any]]], n: int) -> list[list[dict[str, Any]]]:
    """Greedy largest-first packing of fragments into at most n tasks of similar weight."""
    if not units:
        return []
    n = max(1, min(n, len(units)))
    bins: list[tuple[int, list[dict[str, Any]]]] = [(0, []) for _ in range(n)]
    for w, u in sorted(units, key=lambda x: -x[0]):
        i = min(range(n), key=lambda k: bins[k][0])
        bins[i] = (bins[i][0] + w, bins[i][1] + [u])
    # merge row groups of the same file within a task, in file order (row ranges stay apart)
    tasks = []
    for _, us in bins:
        by_file: dict[str, list[int] | None] = {}
        ranges = sorted((u for u in us if u.get("rows")), key=lambda u: (u["path"], u["row_groups"], u["rows"]))
        for u in us:
            if u.get("rows"):
                continue
            if u["row_groups"] is None:
                by_file[u["path"]] = None
            else:
                prev = by_file.get(u["path"], [])
                by_file[u["path"]] = sorted((prev or []) + u["row_groups"])
        tasks.append([*({"path": p, "row_groups": rg} for p, rg in sorted(by_file.items())), *ranges])
    return [t for t in tasks if t]


def _corrupt_message(path: str, e: Exception) -> str:
    return (f"cannot read input file {path} (corrupt or not Parquet: {str(e).splitlines()[0][:120]}); "
            "set input.ignore_corrupt_files: true to skip such files")


class _UnitReader:
    """Opens a source's planned units (a file, or some of its row groups) as one-fragment datasets."""

    def __init__(self, source: ArrowSource) -> None:
        self.fs, self.base = pyarrow_fs(source.root)
        self.schema = source.schema
        self.partitioning = _partitioning(self.schema, source.partition_names)
        self.filter = source.row_filter
        self.fmt = ds.ParquetFileFormat()

    def open(self, unit: dict[str, Any]) -> ds.FileSystemDataset:
        """Raises pa.ArrowInvalid or OSError when the file cannot be read (its footer is read here)."""
        path = unit["path"]
        frag = self.fmt.make_fragment(path, self.fs, row_groups=unit["row_groups"],
                                      partition_expression=self.partitioning.parse(_rel_dir(path, self.base)))
        frag.physical_schema  # noqa: B018 - opens the file and reads its footer
        return ds.FileSystemDataset([frag], self.schema, self.fmt, self.fs)

    def batches(self, dataset: ds.FileSystemDataset, columns: list[str], *, rows: list[int] | None = None,
                **scan: Any) -> Iterator[pa.RecordBatch]:
        """The rows of `columns` the filter keeps: pruned by statistics where they can be trusted,
        then filtered exactly (reading the filter's own columns too); only rows `[start, stop)` of a
        one-row-group dataset when `rows` is given."""
        if rows is not None:
            yield from self._row_range(dataset, columns, rows, **scan)
            return
        f = self.filter
        if f is None or not f.after_read:
            yield from dataset.to_batches(columns=columns, filter=f.prune if f else None, **scan)
            return
        read = list(dict.fromkeys([*columns, *f.columns]))
        for batch in dataset.to_batches(columns=read, filter=f.prune, **scan):
            yield compat.filter_batch(batch, f.exact).select(columns)


    def _row_range(self, dataset: ds.FileSystemDataset, columns: list[str], rows: list[int],
                   **scan: Any) -> Iterator[pa.RecordBatch]:
        """Rows `[start, stop)` of the row group, counted before any filter, then filtered exactly."""
        f, (start, stop), seen = self.filter, rows, 0
        read = list(dict.fromkeys([*columns, *(f.columns if f else ())]))
        for batch in dataset.to_batches(columns=read, **scan):  # no filter: positions count every row
            a, b = max(start - seen, 0), min(stop - seen, batch.num_rows)
            seen += batch.num_rows
            if a < b:
                part = batch.slice(a, b - a)
                yield (compat.filter_batch(part, f.exact) if f is not None else part).select(columns)
            if seen >= stop:
                return


def read_task(task: list[dict[str, Any]], source: ArrowSource, counters: dict[str, Any]) -> Iterator[pa.RecordBatch]:
    """On an executor: the task's rows as Arrow batches of `source.columns`, Spark-typed."""
    reader = _UnitReader(source)
    out_schema = pa.schema([reader.schema.field(c) for c in source.columns])
    for unit in task:
        try:
            dataset = reader.open(unit)
        except (pa.ArrowInvalid, OSError) as e:
            if not source.ignore_corrupt_files:
                raise InputError(_corrupt_message(unit["path"], e)) from None
            counters["corrupt_files"] = counters.get("corrupt_files", 0) + 1
            continue
        for batch in reader.batches(dataset, list(source.columns), rows=unit.get("rows"), batch_size=READ_BATCH_ROWS,
                                    batch_readahead=2, fragment_readahead=1):
            if batch.num_rows:
                yield batch if batch.schema.equals(out_schema) else compat.cast_batch(batch, out_schema)


def sample_rows(plan: ArrowPlan, columns: list[str], rows: int) -> pa.Table:
    """The first `rows` rows of `columns` the tasks will read, on the driver (no Spark job)."""
    out = pa.schema([plan.source.schema.field(c) for c in columns])
    if not plan.tasks or not columns:
        return out.empty_table()
    reader = _UnitReader(plan.source)
    try:
        dataset = reader.open(plan.tasks[0][0])
        # batches of `rows`, no read-ahead: decode the first pages, not the whole row group
        got: list[pa.RecordBatch] = []
        for batch in reader.batches(dataset, columns, batch_size=rows, batch_readahead=0, fragment_readahead=0):
            got.append(batch)
            if sum(b.num_rows for b in got) >= rows:
                break
        table = pa.Table.from_batches(got, schema=got[0].schema if got else out).slice(0, rows)
    except (pa.ArrowInvalid, OSError):
        return out.empty_table()  # an unreadable file is reported by its task, with its name
    return table if table.schema.equals(out) else table.cast(out)


def with_predictions_from_files(spark: Any, plan_in: ArrowPlan, scoring_plan: Any) -> Any:
    """Arrow lane: a DataFrame of keep columns + predictions + reason + bs__stats, one task per
    planned group; each task ends with its stats row (`scored_with_stats`: its counters and the
    corrupt files it skipped), for a `TaskStats` (batchscore.udfs.lanes.stats) to observe and drop."""
    from pyspark.sql.pandas.types import from_arrow_schema  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

    source = plan_in.source
    arrow_in = pa.schema([source.schema.field(c) for c in source.columns])
    arrow_out = scored_schema(scoring_plan, arrow_in).append(STATS_FIELD)
    tasks = plan_in.tasks
    # One row per task, made by the JVM (spark.range): no Python worker runs just to
    # hand out task numbers; each task looks its fragments up in the closure.
    tasks_df = spark.range(0, len(tasks), 1, max(1, len(tasks)))

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            for i in b.column("id").to_pylist():
                stats: dict[str, Any] = {}  # read_task counts corrupt files into it, score_batches the rest
                scored = score_batches(scoring_plan, read_task(tasks[i], source, stats), stats)
                yield from scored_with_stats(scored, stats, arrow_out)

    return tasks_df.mapInArrow(run, from_arrow_schema(arrow_out))


def corrupt_parquet_files(spark: Any, root: str, *, tasks: int) -> list[str]:
    """Files below root whose Parquet footer cannot be read, checked in parallel on the executors.

    Raises:
        ConfigError: the input is on HDFS and pyarrow's HDFS client cannot load here.
    """
    uri = pyarrow_uri(root)
    if uri.startswith(HDFS_SCHEMES) and (problem := pyarrow_hdfs_problem(uri)):
        raise ConfigError(f"input.ignore_corrupt_files on HDFS checks footers with pyarrow, and {problem}")
    fs, base = pyarrow_fs(uri)
    paths = [i.path for i in list_input_files(fs, base)]
    if not paths:
        return []
    def bad_footers(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            bad = [p for p in batch.column(0).to_pylist() if not parquet_footer_ok(p, uri)]
            yield pa.RecordBatch.from_pydict({"path": pa.array(bad, pa.string())})

    # the footers are read by the executors (a DataFrame of paths: the same on classic and Connect sessions)
    listed = spark.createDataFrame([(p,) for p in paths], "path string").repartition(max(1, min(len(paths), tasks)))
    return sorted(r[0] for r in listed.mapInArrow(bad_footers, "path string").collect())
