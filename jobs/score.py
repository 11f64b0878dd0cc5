"""Score a dataset with a TensorFlow model: `python -m jobs.score --config FILE [--set k=v ...]`.

Only wiring (the skeleton is jobs/runner.py): arguments -> config -> session -> the engine
(`batchscore.run.steps.run_scoring`) -> summary. Exit codes: 0 success; 2 a user error
(config, input, model, schema, bad rows with on_bad_rows=fail), one line `error: ...` on
stderr; 1 anything else.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import threading
from typing import Any

from batchscore.config.loader import load_config
from batchscore.jobs.runner import Job, Run, add_verbosity, run_job
from batchscore.output.manifest import RunManifest


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML job config (see conf/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.batch_size=2048 (repeatable)")
    p.add_argument("--run-id", default=None, metavar="ID",
                   help="the run's id (default: a new one); a rerun with the same id commits nothing twice "
                        "to Delta output (txnAppId)")
    add_verbosity(p, quiet="print only the summary (no progress, no info logs)",
                  verbose="keep TensorFlow's start-up and C++ logs in the driver's and the workers' output")


def _load(run: Run) -> tuple[Any, threading.Thread]:
    """The config, and the engine's imports (pyarrow.dataset, pandas: ~1 s) started while the JVM starts."""
    spec = load_config(run.args.config, run.args.overrides)
    # PySpark's own imports first, here, so the two threads never import the same package at once.
    importlib.import_module("pyspark.sql")
    engine = threading.Thread(target=importlib.import_module, args=("batchscore.run.steps",), daemon=True)
    engine.start()
    return spec, engine


def _score(run: Run) -> RunManifest:
    spec, engine = run.config
    run.clock.phase("session_start")
    engine.join()
    from batchscore.run.steps import run_scoring  # noqa: PLC0415 - imported by the thread started in _load

    return run_scoring(run.spark, spec, run_id=run.args.run_id, clock=run.clock)


def summary(manifest: RunManifest) -> str:
    """The few lines printed after a run."""
    return (
        f"batchscore: {manifest.rows_in:,} rows in, {manifest.rows_scored:,} scored, "
        f"{manifest.rows_quarantined:,} quarantined; {manifest.rows_per_second or 0:,.0f} rows/s "
        f"({manifest.lane} lane, {manifest.model_loads} model loads)\n"
        f"  output: {manifest.output.path}\n"
        f"  manifest: {manifest.output.path}/_manifest.json"
    )


JOB = Job(prog="jobs.score", description="Score a dataset with a TensorFlow model on Spark.",
          options=_options, load=_load, spark_conf=lambda run: run.config[0].spark, run=_score,
          summary=summary, app_name="batchscore-score", prestart_daemon=True, remote=True, what="scoring")


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run the scoring job; returns the exit code.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
        spark: a session to use (and leave running); by default one is built from the
            config's `spark:` section and stopped at the end, unless it is shared
            (Databricks, or a session already running in this process).
    """
    return run_job(JOB, argv, spark=spark)


if __name__ == "__main__":
    sys.exit(main())
