"""Progress of the scoring write, read from Spark's status tracker by a driver thread.

On a terminal: one line rewritten in place (rows done of total, rows/s, ETA). Elsewhere
(Airflow task logs, files): a log line every `BATCHSCORE_PROGRESS_SECONDS` seconds (30 by
default) and one when the step ends. Off when the `batchscore.progress` logger is not
enabled for INFO (the score job's `--quiet`).

While the step runs a line counts finished tasks (Spark's status tracker; the ETA from
them); the last line adds the rows scored, which the block reports once it knows them.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

from batchscore.core.session_kind import is_connect

log = logging.getLogger("batchscore.progress")

INTERVAL_ENV = "BATCHSCORE_PROGRESS_SECONDS"
DEFAULT_LOG_SECONDS = 30.0
TERMINAL_SECONDS = 0.5


@dataclass(frozen=True)
class Progress:
    """One reading of the scoring stage."""

    tasks_done: int
    tasks: int
    rows_done: int | None  # rows of finished tasks; None until the block reports them
    rows_total: int | None  # from the plan; None when unknown
    seconds: float

    def line(self) -> str:
        """`scoring: 12,000 of ~20,000 rows (6/10 tasks), 3,400 rows/s, ETA 0:00:03`."""
        tasks = f"{self.tasks_done}/{self.tasks} tasks" if self.tasks else "waiting for tasks"
        if self.rows_done is None:
            return f"scoring: {tasks}, {self.seconds:.0f}s, ETA {_eta(self._seconds_left())}"
        total = self.rows_total
        estimated = total is None and 0 < self.tasks_done
        if estimated:
            total = round(self.rows_done * self.tasks / self.tasks_done)
        of = f" of {'~' if estimated else ''}{total:,}" if total is not None else ""
        rate = self.rows_done / self.seconds if self.seconds > 0 else 0.0
        return f"scoring: {self.rows_done:,}{of} rows ({tasks}), {rate:,.0f} rows/s, ETA {_eta(self._seconds_left())}"

    def _seconds_left(self) -> float | None:
        if self.rows_total and self.rows_done:
            return self.seconds * (self.rows_total - self.rows_done) / self.rows_done
        if self.tasks and self.tasks_done:
            return self.seconds * (self.tasks - self.tasks_done) / self.tasks_done
        return None


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def known_rows(df: Any) -> int | None:
    """The row count Spark's optimized plan states (tables with statistics), else None."""
    try:
        count = df._jdf.queryExecution().optimizedPlan().stats().rowCount()
        return int(str(count.get())) if count.isDefined() else None  # a Scala BigInt, or an int via py4j
    except Exception:  # noqa: BLE001 - Spark Connect, or a plan without statistics
        return None


@dataclass
class Done:
    """What the block tells its progress once it knows: the rows its tasks scored (the last line)."""

    rows: int | None = None


class _Tracker:
    """Reads the stages that start while the scoring write runs; the largest is the scoring stage.

    A classic session's status tracker is polled; a Spark Connect client gets the same figures
    pushed by its progress handler (`registerProgressHandler`, Spark 4.0+) while it waits on the
    write, and `close` unregisters it.
    """

    def __init__(self, spark: Any, done: Done, df: Any) -> None:
        self._spark = spark
        self._status = None if is_connect(spark) else spark.sparkContext.statusTracker()
        if self._status is None:
            spark.registerProgressHandler(self._on_progress)
        self._done = done
        self._df = df
        self._rows_total: int | None = None
        self._stages: dict[int, tuple[int, int]] = {}  # stage id -> (completed tasks, tasks)
        self._t0 = time.monotonic()

    def read(self) -> Progress:
        if self._df is not None:  # once, in this thread: stats may list files
            self._rows_total, self._df = known_rows(self._df), None
        if self._status is not None:
            for sid in {*self._status.getActiveStageIds(), *self._stages}:
                info = self._status.getStageInfo(sid)
                if info is not None:
                    self._stages[sid] = (info.numCompletedTasks, info.numTasks)
        done, tasks = max(dict(self._stages).values(), key=lambda s: s[1], default=(0, 0))
        return Progress(done, tasks, self._done.rows, self._rows_total, time.monotonic() - self._t0)

    def _on_progress(self, stages: Any, inflight_tasks: int, operation_id: Any, done: bool) -> None:
        """Spark Connect's progress handler: the stages of the running operation."""
        for s in stages or ():
            self._stages[s.stage_id] = (s.num_completed_tasks, s.num_tasks)

    def close(self) -> None:
        if self._status is None:
            self._spark.removeProgressHandler(self._on_progress)


@contextmanager
def scoring_progress(spark: Any, df: Any = None, *, stream: TextIO | None = None) -> Iterator[Done]:
    """Report the progress of what runs inside the block (the scoring write); the block sets
    the `Done` it is given (`rows`: what its tasks scored) for the last line.

    Args:
        spark: the session whose status tracker is read.
        df: the input DataFrame, for the plan's row count when Spark knows it.
        stream: where the terminal line goes (default: sys.stderr).
    """
    done = Done()
    if not log.isEnabledFor(logging.INFO):
        yield done
        return
    stream = stream or sys.stderr
    terminal = _isatty(stream)
    every = TERMINAL_SECONDS if terminal else _log_seconds()
    tracker = _Tracker(spark, done, df)
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every):
            try:
                _show(tracker.read(), stream, terminal)
            except Exception:
                log.debug("progress unavailable", exc_info=True)

    thread = threading.Thread(target=report, name="batchscore-progress", daemon=True)
    thread.start()
    ok = False
    try:
        yield done
        ok = True
    finally:
        stop.set()
        thread.join(timeout=5)
        tracker.close()
        if ok:
            try:
                last = tracker.read()
                _show(last, stream, terminal, final=True)
            except Exception:
                log.debug("progress unavailable", exc_info=True)
        elif terminal:
            stream.write("\n")


def _show(p: Progress, stream: TextIO, terminal: bool, *, final: bool = False) -> None:
    text = p.line()
    if final:
        rows = f"{p.rows_done:,} rows, " if p.rows_done is not None else ""
        text = f"scoring: done, {rows}{p.tasks} tasks in {p.seconds:.1f}s"
    if terminal:
        stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        stream.flush()
    else:
        log.info("%s", text)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _log_seconds() -> float:
    raw = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_LOG_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", INTERVAL_ENV, raw, DEFAULT_LOG_SECONDS)
        return DEFAULT_LOG_SECONDS
    return max(value, 0.1)
