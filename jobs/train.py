"""Train a model and export it for scoring: `python -m jobs.train --config FILE [--set k=v ...]`.

Only wiring (the skeleton is jobs/runner.py): arguments -> config -> session (when the run
needs Spark: multi_worker, petastorm, a filter) -> the trainer
(`batchscore.training.run.run_training`) -> summary. Exit codes: 0 success; 2 a user error
(config, data, schema), one line `error: ...` on stderr; 1 anything else (a failed training
worker: one line naming it).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from batchscore.config.loader import load_train_config
from batchscore.core.spark_errors import one_line
from batchscore.jobs.runner import Job, Run, add_verbosity, run_job, user_error

log = logging.getLogger("batchscore")


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML training config (see conf/train.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    add_verbosity(p, quiet="print only the summary", verbose="keep TensorFlow's start-up and C++ logs")


def _spark_conf(run: Run) -> dict[str, Any] | None:
    """The config's `spark:` section when the run needs Spark, else no session."""
    from batchscore.training.run import needs_spark  # noqa: PLC0415 - after the log level is set

    return run.config.spark if needs_spark(run.config) else None


def _train(run: Run) -> dict[str, Any]:
    from batchscore.training.run import run_training  # noqa: PLC0415 - after the log level is set

    return run_training(run.spark, run.config)


def summary(manifest: dict[str, Any]) -> str:
    """The few lines printed after a run."""
    final = ", ".join(f"{k} {v:.4f}" for k, v in manifest.get("final", {}).items() if isinstance(v, float))
    resumed = f", resumed after epoch {manifest['resumed_from_epoch']}" if manifest.get("resumed_from_epoch") else ""
    last = manifest["history"][-1] if manifest.get("history") else {}
    rows = f"{last.get('rows', 0):,} rows" + (f" (+{last['val_rows']:,} validation)" if last.get("val_rows") else "")
    return (
        f"batchscore train: {manifest['epochs_run']} epoch(s) on {rows} "
        f"({manifest['strategy']}, {manifest['workers']} worker(s), {manifest['replicas']} replica(s){resumed}); "
        f"{manifest.get('rows_per_second') or 0:,.0f} rows/s\n"
        f"  {final}\n"
        f"  model: {manifest['model']['path']}\n"
        f"  manifest: {manifest['model']['path']}/_train_manifest.json"
    )


def _failure(e: Exception) -> int:
    """Exit code and one line for a run that failed other than by a user error."""
    from batchscore.training.multiworker import worker_failure  # noqa: PLC0415 - only when a run failed

    found = user_error(e)
    if found is not None:
        print(f"error: {found}", file=sys.stderr)
        return 2
    reason = worker_failure(e)
    if reason is None:
        log.exception("training failed")
    user = re.match(r"training worker \d+ failed \(exit 2\): (.+)", reason or "")
    if user:  # a user error found by a worker (its data, the model function): exit 2 as on the driver
        print(f"error: {user.group(1)}", file=sys.stderr)
        return 2
    print(f"error: {reason or one_line(e)}", file=sys.stderr)
    return 1


def _load(run: Run) -> Any:
    return load_train_config(run.args.config, run.args.overrides)


JOB = Job(prog="jobs.train",
          description="Train a Keras model on Parquet data and export a SavedModel that `batchscore score` reads.",
          options=_options, load=_load, spark_conf=_spark_conf, run=_train, summary=summary,
          app_name="batchscore-train", failure=_failure, remote=True,
          spark_log_level="ERROR")  # a failed worker's stage failure is reported once, by _failure


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run the training job; returns the exit code.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
        spark: a session to use (and leave running); by default one is built from the
            config's `spark:` section when the run needs Spark, and stopped at the end.
    """
    return run_job(JOB, argv, spark=spark)


if __name__ == "__main__":
    sys.exit(main())
