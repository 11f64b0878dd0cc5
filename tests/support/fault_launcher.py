"""Start the scoring job with a fault injected into its scoring tasks (reliability tests only).

    python -m tests.support.fault_launcher FAULT [jobs.score arguments ...]

FAULT is `exit:P` (the Python worker dies with os._exit mid-task, after its first
output batch, on the first attempt of partition P), `sleep:P:S` (that attempt
sleeps S seconds after its first output batch: a straggler for speculation) or
`die-at:STEP` (the driver process dies with os._exit when the run calls the publish
step `batchscore.output.publish.STEP`, e.g. `commit_run`: a run killed while publishing).

The launcher wraps the engine's `batchscore.udfs.lanes.scoring.score_batches` on the driver, then
runs `jobs.score.main`. Both lanes' partition functions are closures Spark pickles
when the job starts; they carry the wrapper (and the engine's own function inside
it) to the executors by value, so production code reads no test switch and the
scoring path is the real one.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from batchscore.jobs import score
from batchscore.output import publish
from batchscore.udfs.lanes import scoring

KINDS = ("exit", "sleep", "die-at")
DIED = 17  # the exit status of a process the launcher killed


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


def inject(fault: str) -> None:
    """Replace `scoring.score_batches` (or a publish step) in this (driver) process by a wrapper that fires `fault`."""
    kind, *args = fault.split(":")
    if kind == "die-at" and len(args) == 1:
        die_at(args[0])
        return
    if kind not in KINDS or len(args) != (1 if kind == "exit" else 2):
        raise SystemExit(f"fault must be exit:P, sleep:P:S or die-at:STEP, got {fault!r}")
    partition, seconds = int(args[0]), float(args[1]) if kind == "sleep" else 0.0
    engine = scoring.score_batches

    def score_batches_with_fault(plan: Any, batches: Iterable[Any], stats: dict[str, Any] | None = None
                                 ) -> Iterator[Any]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        armed = ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() == partition
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
