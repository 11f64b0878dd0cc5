"""Data-parallel planning: how many scoring tasks a run makes, and whether its input is rebalanced.

Both lanes aim at `TASKS_PER_SLOT` tasks per task slot (`task_slots`): two waves, so a slow
task does not leave the other slots idle for the whole tail. The Arrow lane plans its tasks
itself (udfs/lanes/arrow.py: files, row groups or row ranges packed into tasks, no shuffle;
`arrow_planning` records that plan). The DataFrame lane scores Spark's own partitions and
rebalances them with a shuffle only when that pays (`plan_dataframe_tasks`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from batchscore.core.session_kind import is_connect
from batchscore.core.storage import HDFS_SCHEMES, pyarrow_fs, pyarrow_uri
from batchscore.run.cluster import default_parallelism, live_task_slots, master, spark_conf
from batchscore.udfs.lanes.arrow import ArrowPlan

log = logging.getLogger("batchscore")

TASKS_PER_SLOT = 2
SKEW_FACTOR = 1.5
MAX_FOOTERS = 64


@dataclass(frozen=True)
class Slots:
    """How many tasks the executors run at once, and how that was found out."""

    count: int
    source: str  # executors | conf | default_parallelism


@dataclass(frozen=True)
class TaskPlanning:
    """The run's data-parallel plan (the manifest's `planning`)."""

    slots: int
    slots_source: str
    input_partitions: int  # DataFrame lane: Spark's partitions of the input (0: not known); Arrow lane: input files
    tasks: int  # scoring tasks (0: Spark's own split, not known to a Spark Connect client)
    rebalanced: bool
    reason: str

    def log_line(self, lane: str) -> str:
        verdict = f"rebalanced ({self.reason})" if self.rebalanced else f"not rebalanced ({self.reason})"
        if not self.tasks:
            return f"planning: {self.slots} task slot(s) ({self.slots_source}), the {lane} lane, {verdict}"
        return (f"planning: {self.slots} task slot(s) ({self.slots_source}), {self.input_partitions} input "
                f"partition(s) -> {self.tasks} scoring task(s) in the {lane} lane, {verdict}")


# --- slots ---


def task_slots(spark: Any) -> Slots:
    """The executors' task slots.

    Spark's own count for the live executors (`maxNumConcurrentTasks` of the default
    resource profile: executors x cores / `spark.task.cpus`, and with GPUs no more than
    GPUs / `spark.task.resource.gpu.amount` per executor); before any executor has
    registered, the same formula over the conf (`spark.executor.instances`,
    `spark.executor.cores`, the GPU amounts); else the default parallelism.
    """
    live = live_task_slots(spark)
    if live > 0:
        return Slots(live, "executors")
    conf = spark_conf(spark)
    executors = _int(conf.get("spark.executor.instances")) or _int(conf.get("spark.dynamicAllocation.initialExecutors"))
    if executors and not master(spark).startswith("local"):
        return Slots(max(1, executors * slots_per_executor(conf)), "conf")
    cpus = max(1, _int(conf.get("spark.task.cpus")) or 1)
    return Slots(max(1, default_parallelism(spark) // cpus), "default_parallelism")


def slots_per_executor(conf: Mapping[str, str]) -> int:
    """cores / spark.task.cpus, and with GPUs no more than GPUs / spark.task.resource.gpu.amount."""
    slots = max(1, (_int(conf.get("spark.executor.cores")) or 1) // max(1, _int(conf.get("spark.task.cpus")) or 1))
    task_gpu = float(conf.get("spark.task.resource.gpu.amount", 0) or 0)
    executor_gpu = float(conf.get("spark.executor.resource.gpu.amount", 0) or 0)
    if task_gpu > 0 and executor_gpu > 0:
        slots = min(slots, max(1, int(executor_gpu / task_gpu + 1e-9)))
    return slots


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


# --- the DataFrame lane ---


def plan_dataframe_tasks(df: Any, slots: Slots, *, batch_size: int) -> TaskPlanning:
    """Whether the DataFrame lane repartitions `df`, and into how many tasks.

    A round-robin `repartition(tasks)` of the selected columns (a shuffle) is planned when
    there are fewer partitions than slots (slots would sit idle), or one partition holds more
    than `SKEW_FACTOR` times an even share of the input (total / slots): the scoring stage
    would wait on it.

    What is measured: for a file scan, each partition's share of the files Spark planned for
    it (`partition_weights`). Other inputs (tables of joins, Spark Connect) are counted only.

    It pays when the scoring saved on the idle slots outweighs the shuffle, whose fixed cost
    (a stage boundary, about 0.1-0.3 s locally) is of the order of a few model calls: an input
    known to hold fewer rows than one model call (`batch_size`) per slot is not rebalanced.
    """
    splits = file_splits(df)
    weights, unit = (partition_weights(splits) if splits is not None else (None, ""))
    parts = len(splits) if splits is not None else _partitions(df)
    target = TASKS_PER_SLOT * slots.count
    if parts is None:
        return TaskPlanning(slots.count, slots.source, 0, 0, False,
                            "input partitions not known to a Spark Connect client: Spark's own split kept")
    keep = TaskPlanning(slots.count, slots.source, parts, parts, False, "")
    if weights is not None and unit == "rows" and sum(weights) < batch_size * slots.count:
        return _with(keep, f"{int(sum(weights))} rows: fewer than one model call per slot")
    if parts < slots.count:
        return _with(keep, f"{parts} input partition(s) for {slots.count} slots", tasks=target)
    if weights:
        share = sum(weights) / slots.count
        if max(weights) > SKEW_FACTOR * share:
            return _with(keep, f"the largest input partition holds {max(weights) / share:.1f}x an even share "
                               f"of the {unit} (total / slots)", tasks=max(target, parts))
        return _with(keep, f"input partitions even enough (largest {max(weights) / share:.1f}x an even share "
                           f"of the {unit})")
    return _with(keep, "input partitions at least the slots (their sizes are not known)")


def _with(p: TaskPlanning, reason: str, *, tasks: int | None = None) -> TaskPlanning:
    return TaskPlanning(p.slots, p.slots_source, p.input_partitions, tasks or p.tasks, tasks is not None, reason)


def _partitions(df: Any) -> int | None:
    """The DataFrame's partitions; None under Spark Connect (no JVM plan, no RDD API)."""
    if is_connect(df.sparkSession):
        return None
    try:
        return int(df._jdf.queryExecution().toRdd().getNumPartitions())
    except Exception:  # noqa: BLE001 - Spark internals changed: ask the RDD API
        return int(df.rdd.getNumPartitions())


@dataclass(frozen=True)
class FileSplit:
    path: str
    start: int
    length: int


@dataclass(frozen=True)
class ScanSplits:
    """The input partitions of a DataFrame that scans files: each a list of file byte ranges."""

    format: str  # parquet, orc, ...
    partitions: list[list[FileSplit]]

    def __len__(self) -> int:
        return len(self.partitions)


def file_splits(df: Any) -> ScanSplits | None:
    """The byte ranges of files each input partition reads, when `df` is one file scan (else None)."""
    try:
        leaves = df._jdf.queryExecution().executedPlan().collectLeaves()
        scans = [leaves.apply(i) for i in range(leaves.size())]
        if len(scans) != 1 or scans[0].getClass().getSimpleName() != "FileSourceScanExec":
            return None
        scan = scans[0]
        fmt = str(scan.relation().fileFormat().shortName())
        partitions = [[FileSplit(str(f.toPath().toString()), int(f.start()), int(f.length())) for f in p.files()]
                      for p in scan.inputRDD().partitions()]
    except Exception:  # noqa: BLE001 - Spark internals (Spark Connect, another Spark): sizes unknown, counts decide
        return None
    return ScanSplits(fmt, partitions)


def partition_weights(splits: ScanSplits) -> tuple[list[float] | None, str]:
    """Each partition's rows (Parquet, from footers) or bytes (other files), and which of the two.

    For Parquet, rows from the footers of the files (at most `MAX_FOOTERS` files): a split
    reads the row groups whose midpoint falls in it (as Parquet's readers do), so a file of
    one large row group cut into byte ranges gives one partition every row and the others
    none, which bytes would not show. For other files, the bytes of the splits.
    """
    files = {s.path for p in splits.partitions for s in p}
    if splits.format == "parquet" and len(files) <= MAX_FOOTERS:
        groups = _row_group_midpoints(files)
        if groups is not None:
            return [float(sum(rows for s in p for mid, rows in groups[s.path] if s.start <= mid < s.start + s.length))
                    for p in splits.partitions], "rows"
    return [float(sum(s.length for s in p)) for p in splits.partitions], "bytes"


def _row_group_midpoints(paths: set[str]) -> dict[str, list[tuple[int, int]]] | None:
    """(midpoint offset, rows) of every row group of each Parquet file, as Parquet's split filter sees them."""
    out: dict[str, list[tuple[int, int]]] = {}
    if any(pyarrow_uri(p).startswith(HDFS_SCHEMES) for p in paths):  # libhdfs may not load here: bytes decide
        return None
    try:
        for path in paths:
            fs, local = pyarrow_fs(pyarrow_uri(path))
            with fs.open_input_file(local) as fh:
                md = pq.ParquetFile(fh).metadata
            groups = []
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                first = rg.column(0)
                dictionary = first.dictionary_page_offset
                start = dictionary if dictionary and dictionary < first.data_page_offset else first.data_page_offset
                size = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
                groups.append((start + size // 2, rg.num_rows))
            out[path] = groups
    except (OSError, ValueError) as e:  # a file pyarrow cannot open here: bytes decide
        log.debug("planning: cannot read Parquet footers (%s); weighing partitions by bytes", e)
        return None
    return out


# --- the Arrow lane ---


def arrow_planning(slots: Slots, plan: ArrowPlan) -> TaskPlanning:
    """The Arrow lane's plan as the manifest records it (`plan.rebalance`: how files were split, if they were)."""
    reason = plan.rebalance or f"whole files packed into about {TASKS_PER_SLOT} tasks per slot"
    return TaskPlanning(slots.count, slots.source, plan.files, len(plan.tasks), plan.rebalance is not None, reason)


def plan_tasks(df: Any, slots: Slots, *, arrow_plan: ArrowPlan | None, batch_size: int) -> TaskPlanning:
    """The run's data-parallel plan for its lane (None: the DataFrame lane), logged in one INFO line."""
    if arrow_plan is not None:
        planning = arrow_planning(slots, arrow_plan)
    else:
        planning = plan_dataframe_tasks(df, slots, batch_size=batch_size)
    log.info(planning.log_line("arrow" if arrow_plan is not None else "dataframe"))
    return planning
