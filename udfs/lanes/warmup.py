"""Start the Python workers and import TensorFlow while the driver still plans.

A cold run otherwise pays for these in its scoring job: seconds of Python worker start
and TensorFlow import before the first row is scored. The warm-up is a Spark job of one
task per task slot, submitted from a thread (its own job group) right after the
signature is read; each task imports TensorFlow and sizes its thread pools for the
task's cores, and the scoring tasks reuse those workers (`spark.python.worker.reuse`).
A warm-up that fails (a worker dies, the job is cancelled) only did not warm: it is
logged, and the scoring tasks import TensorFlow themselves as without it.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from batchscore.core.columns import STATS_COLUMN
from batchscore.core.session_kind import is_connect
from batchscore.udfs.lanes.scoring import task_resources, worker_stats
from batchscore.udfs.lanes.stats import stats_json, stats_of_rows
from batchscore.udfs.model import cache as model_cache

log = logging.getLogger("batchscore")


def warm_worker() -> dict[str, Any]:
    """In a Python worker: import TensorFlow with its pools sized for the task; returns the
    worker's stats with the seconds it took (`warmup_tf_import_s`). Devices are left alone: the first scoring task
    configures them (udfs/model/devices.py), knowing `model.gpu_memory_mb`.

    The model itself is not touched: its load (a fraction of a second per worker, against
    seconds for the TF import) stays in each worker's first scoring task, so a user error
    the driver finds while planning (a missing column, a wrong array length in the sample)
    still fails before any executor unpacks or loads the model, and `model_loads` still
    counts scoring workers only (one each).
    """
    spent_before = model_cache.seconds_spent()
    cores, _ = task_resources()
    model_cache.configure_threads(cores)
    model_cache.import_tensorflow()  # outside Spark (no task cores) the pools keep TF's sizes
    return worker_stats(None, spent_before, prefix="warmup_")


@dataclass
class Warmup:
    """A warm-up job running in a thread; `wait()` joins it, `cancel()` stops it."""

    spark: Any
    group: str
    thread: threading.Thread | None = None
    outcome: dict[str, Any] = field(default_factory=dict)  # "ok": bool, "seconds", "error", "stats"

    @property
    def stats(self) -> dict[str, Any]:
        """The warmed workers' stats (merged), once the warm-up job completed; else {}."""
        return self.outcome.get("stats", {})

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the warm-up to end; True when it warmed every task slot."""
        if self.thread is not None:
            self.thread.join(timeout)
        return bool(self.outcome.get("ok"))

    def cancel(self) -> None:
        """Cancel the warm-up's tasks (a run that fails before scoring leaves nothing behind)."""
        if self.thread is not None and self.thread.is_alive():
            if is_connect(self.spark):
                self.spark.interruptTag(self.group)
            else:
                self.spark.sparkContext.cancelJobGroup(self.group)
            self.thread.join(10)


def start_warmup(spark: Any, *, tasks: int) -> Warmup:
    """Submit the warm-up job (`tasks` tasks, one per task slot) from a thread; returns at once.

    The job is a `mapInArrow`, as both lanes' scoring jobs: Spark keeps one pool of idle
    Python workers per kind of runner (its environment differs between RDD and SQL
    jobs), and only workers of the same pool are reused. Each task returns one row, its
    worker's stats as JSON; the job's `collect()` holds the accepted attempt of each task
    only, so every task counts once (`Warmup.stats`).
    """
    warm = warm_worker  # read here: the closure ships whatever this module holds now (tests wrap it)
    warmup = Warmup(spark, f"batchscore-warmup-{uuid.uuid4().hex[:8]}")

    def task(batches: Iterator[Any]) -> Iterator[Any]:
        for _ in batches:
            pass
        try:
            stats = warm()
        except Exception as e:  # noqa: BLE001 - a warm-up never fails a task: scoring imports TF itself
            logging.getLogger("batchscore").warning("warm-up did not import TensorFlow: %s", e)
            return
        yield pa.RecordBatch.from_arrays([pa.array([stats_json(stats)], pa.string())], names=[STATS_COLUMN])

    def run() -> None:
        t = time.time()
        try:
            _tag_jobs(spark, warmup.group)
            rows = spark.range(0, tasks, 1, tasks).mapInArrow(task, f"{STATS_COLUMN} string").collect()
            warmup.outcome.update(ok=True, stats=stats_of_rows(r[0] for r in rows))
        except Exception as e:  # noqa: BLE001 - a warm-up that fails only did not warm
            warmup.outcome.update(ok=False, error=str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            log.info("the warm-up job did not complete (scoring tasks import TensorFlow themselves): %s",
                     warmup.outcome["error"])
        finally:
            warmup.outcome["seconds"] = round(time.time() - t, 3)

    from pyspark import InheritableThread  # noqa: PLC0415 - pyspark is the job's optional extra

    warmup.thread = InheritableThread(target=run, name=warmup.group, daemon=True)
    warmup.thread.start()
    return warmup


def _tag_jobs(spark: Any, group: str) -> None:
    """Name this thread's jobs `group`, so `Warmup.cancel` can stop them (a job group on a classic
    session, a tag under Spark Connect)."""
    if is_connect(spark):
        spark.addTag(group)
    else:
        spark.sparkContext.setJobGroup(group, "batchscore: warm up the Python workers", interruptOnCancel=False)
