"""Score a dataset with a TensorFlow model: `python -m jobs.score --config FILE [--set k=v ...]`.

Only wiring: arguments -> config -> session -> the engine (`batchscore.run.steps.run_scoring`)
-> summary. Exit codes: 0 success; 2 a user error (config, input, model, schema,
bad rows with on_bad_rows=fail), one line `error: ...` on stderr; 1 anything else.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import threading
import time
from typing import Any

from batchscore.config.loader import load_config
from batchscore.core.clock import Clock
from batchscore.core.errors import BatchscoreError
from batchscore.core.spark_errors import one_line, translate_spark_error
from batchscore.output.manifest import RunManifest
from batchscore.session.builder import build_session, session_is_shared
from batchscore.session.tf_logs import tensorflow_logs

log = logging.getLogger("batchscore")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs.score", description="Score a dataset with a TensorFlow model on Spark.")
    p.add_argument("--config", required=True, help="YAML job config (see conf/demo.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.batch_size=2048 (repeatable)")
    p.add_argument("--run-id", default=None, metavar="ID",
                   help="the run's id (default: a new one); a rerun with the same id commits nothing twice "
                        "to Delta output (txnAppId)")
    p.add_argument("--quiet", action="store_true", help="print only the summary (no progress, no info logs)")
    p.add_argument("--verbose", action="store_true",
                   help="keep TensorFlow's start-up and C++ logs in the driver's and the workers' output")
    return p.parse_args(argv)


def summary(manifest: RunManifest) -> str:
    """The few lines printed after a run."""
    return (
        f"batchscore: {manifest.rows_in:,} rows in, {manifest.rows_scored:,} scored, "
        f"{manifest.rows_quarantined:,} quarantined; {manifest.rows_per_second or 0:,.0f} rows/s "
        f"({manifest.lane} lane, {manifest.model_loads} model loads)\n"
        f"  output: {manifest.output.path}\n"
        f"  manifest: {manifest.output.path}/_manifest.json"
    )


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run the scoring job; returns the exit code.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
        spark: a session to use (and leave running); by default one is built from the
            config's `spark:` section and stopped at the end, unless it is shared
            (Databricks, or a session already running in this process).
    """
    own_session = spark is None and not session_is_shared()
    # A job that owns its process accounts for all of it (the manifest's seconds_by_phase);
    # called in a notebook or pipeline, the accounting starts here.
    clock = Clock.from_process_start() if own_session else Clock()
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tf_conf = tensorflow_logs(verbose=args.verbose)  # before anything imports TensorFlow
    try:
        spec = load_config(args.config, args.overrides)
        # The engine's imports (pyarrow.dataset, pandas: ~1 s) run while the JVM starts; PySpark's
        # own first, here, so the two threads never import the same package at once.
        importlib.import_module("pyspark.sql")
        engine = threading.Thread(target=importlib.import_module, args=("batchscore.run.steps",), daemon=True)
        engine.start()
        if spark is None:
            conf = {**spec.spark, **tf_conf} if args.verbose else {**tf_conf, **spec.spark}
            spark = build_session(conf, app_name="batchscore-score", prestart_daemon=True)
            spark.sparkContext.setLogLevel("WARN")
        clock.phase("session_start")
        engine.join()
        from batchscore.run.steps import run_scoring  # noqa: PLC0415 - imported by the thread above

        print(summary(run_scoring(spark, spec, run_id=args.run_id, clock=clock)))
        return 0
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        user_error = translate_spark_error(e)
        if isinstance(user_error, BatchscoreError):
            print(f"error: {user_error}", file=sys.stderr)
            return 2
        log.exception("scoring failed")
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if own_session and spark is not None:
            t = time.time()
            spark.stop()  # after the manifest was written: its time is logged here instead
            log.info("session stopped in %.2f s; process ran %.2f s", time.time() - t, time.time() - clock.origin)


if __name__ == "__main__":
    sys.exit(main())
