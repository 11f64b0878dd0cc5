"""Start the scoring job with a fault injected into its scoring tasks (reliability tests only).

    python -m tests.support.fault_launcher FAULT [jobs.score arguments ...]

FAULT, on the first attempt of partition P: `exit:P` (its Python worker dies after its first
output batch), `exit-after-stats:P` (it dies after its stats row reached Spark), `sleep:P:S`
(it sleeps S seconds after its first batch: a straggler), `kill-host:P` (it SIGKILLs the
executor's model host once that served HOST_KILL_AFTER_ROWS rows); or `die-at:STEP` (the
driver dies at the publish step `batchscore.output.publish.STEP`). The launcher wraps
`batchscore.udfs.lanes.scoring.score_batches` (or `scored_with_stats`, or the step) on the
driver, then runs `jobs.score.main`; both lanes' task functions are closures Spark pickles by
value with the wrapper inside, so production code reads no test switch.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from batchscore.jobs import score
from batchscore.output import publish
from batchscore.udfs.host import client as host_client
from batchscore.udfs.lanes import scoring

KINDS = ("exit", "exit-after-stats", "sleep", "kill-host", "die-at")
DIED = 17  # the exit status of a process the launcher killed
HOST_KILL_AFTER_ROWS = 128  # kill-host: rows the host has been handed (two model calls of 64) before it dies
SLICE_ROWS = 32  # kill-host: the task's input in slices this small, so the kill falls between model calls
PAD_ROWS = 1000  # exit-after-stats: copies of the stats row sent after it, past the worker's 64 KiB output buffer


def die_at(step: str) -> None:
    """Replace the publish step `batchscore.output.publish.<step>` in this (driver) process by one that kills it.

    The run calls publish steps through the module (`publish.<step>(...)`), so the
    replacement is what it calls; nothing after the kill runs (no `finally`, no cleanup).
    """
    if not callable(getattr(publish, step, None)):
        raise SystemExit(f"die-at: batchscore.output.publish has no step {step!r}")

    def killed(*_args: Any, **_kwargs: Any) -> None:
        sys.stderr.write(f"fault_launcher: killed at publish.{step}\n")
        sys.stderr.flush()
        os._exit(DIED)

    setattr(publish, step, killed)


def kill_host(plan: Any) -> None:
    """SIGKILL this executor's model host for `plan` (in a scoring task) and wait until it is gone."""
    _, gpus = scoring.task_resources()
    files = host_client.host_files(fingerprint=plan.source.fingerprint, signature=plan.signature.signature,
                                   gpus=gpus)
    with open(files.path("pid")) as fh:
        pid = int(fh.read().strip())
    os.kill(pid, signal.SIGKILL)
    sys.stderr.write(f"fault_launcher: killed model host pid {pid}\n")
    sys.stderr.flush()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def killing_host_midway(plan: Any, batches: Iterable[Any]) -> Iterator[Any]:
    """The task's batches in slices of SLICE_ROWS rows; pulling the slice after HOST_KILL_AFTER_ROWS
    rows kills the host. The engine scores every full model batch as soon as it has the rows, so
    the host has served the rows before the kill and the rows pulled after it need a request."""
    pulled, killed = 0, False
    for batch in batches:
        for start in range(0, batch.num_rows, SLICE_ROWS):
            if pulled >= HOST_KILL_AFTER_ROWS and not killed:
                kill_host(plan)
                killed = True
            part = batch.slice(start, SLICE_ROWS)
            pulled += part.num_rows
            yield part


def exit_after_stats(partition: int) -> None:
    """Replace `scoring.scored_with_stats` by a wrapper that kills the Python worker of the first
    attempt of `partition` once the task's stats row is out: it sends PAD_ROWS copies of that row
    after it (a batch larger than the worker's output buffer, so the row before it reaches Spark),
    then exits. Had Spark kept that attempt's observed rows, the run's counters would be inflated
    more than a thousandfold."""
    engine = scoring.scored_with_stats

    def scored_with_stats_then_exit(scored: Iterable[Any], stats: dict[str, Any], schema: Any) -> Iterator[Any]:
        import pyarrow as pa
        from pyspark import TaskContext

        ctx = TaskContext.get()
        armed = ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() == partition
        last = None
        for last in engine(scored, stats, schema):
            yield last
        if armed and last is not None:
            yield pa.concat_batches([last] * PAD_ROWS)
            sys.stderr.write(f"fault_launcher: exit after the stats row of partition {partition}\n")
            sys.stderr.flush()
            os._exit(DIED)

    scoring.scored_with_stats = scored_with_stats_then_exit


def inject(fault: str) -> None:
    """Replace `scoring.score_batches` (or a publish step) in this (driver) process by a wrapper that fires `fault`."""
    kind, *args = fault.split(":")
    if kind == "die-at" and len(args) == 1:
        die_at(args[0])
        return
    if kind == "exit-after-stats" and len(args) == 1:
        exit_after_stats(int(args[0]))
        return
    if kind not in KINDS or len(args) != (2 if kind == "sleep" else 1):
        raise SystemExit(f"fault must be exit:P, exit-after-stats:P, sleep:P:S, kill-host:P or die-at:STEP, "
                         f"got {fault!r}")
    partition, seconds = int(args[0]), float(args[1]) if kind == "sleep" else 0.0
    engine = scoring.score_batches

    def score_batches_with_fault(plan: Any, batches: Iterable[Any], stats: dict[str, Any] | None = None
                                 ) -> Iterator[Any]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        armed = ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() == partition
        if armed and kind == "kill-host":
            batches, armed = killing_host_midway(plan, batches), False
        for i, out in enumerate(engine(plan, batches, stats)):
            yield out
            if armed and i == 0:
                if kind == "exit":
                    os._exit(17)
                time.sleep(seconds)

    scoring.score_batches = score_batches_with_fault


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    inject(argv[0])
    return score.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
