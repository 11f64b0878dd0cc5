"""Train a model and export it for scoring: `python -m jobs.train --config FILE [--set k=v ...]`.

Only wiring: arguments -> config -> session (when the run needs Spark: multi_worker,
petastorm, a filter) -> the trainer (`batchscore.training.run.run_training`) -> summary. Exit
codes: 0 success; 2 a user error (config, data, schema), one line `error: ...` on
stderr; 1 anything else (a failed training worker: one line naming it).
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from typing import Any

from batchscore.config.loader import load_train_config
from batchscore.core.errors import BatchscoreError
from batchscore.core.spark_errors import one_line, translate_spark_error
from batchscore.session.builder import build_session, session_is_shared
from batchscore.session.tf_logs import tensorflow_logs

log = logging.getLogger("batchscore")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="jobs.train", description="Train a Keras model on Parquet data and export "
                                "a SavedModel that `batchscore score` reads.")
    p.add_argument("--config", required=True, help="YAML training config (see conf/train.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--verbose", action="store_true", help="keep TensorFlow's start-up and C++ logs")
    return p.parse_args(argv)


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


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run the training job; returns the exit code.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
        spark: a session to use (and leave running); by default one is built from the
            config's `spark:` section when the run needs Spark, and stopped at the end.
    """
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tf_conf = tensorflow_logs(verbose=args.verbose)  # before anything imports TensorFlow
    own_session = False
    try:
        spec = load_train_config(args.config, args.overrides)
        from batchscore.training.run import needs_spark, run_training  # noqa: PLC0415 - after the log level is set

        if spark is None and needs_spark(spec):
            own_session = not session_is_shared()
            conf = {**spec.spark, **tf_conf} if args.verbose else {**tf_conf, **spec.spark}
            spark = build_session(conf, app_name="batchscore-train")
            spark.sparkContext.setLogLevel("ERROR")  # a failed worker's stage failure is reported once, below
        print(summary(run_training(spark, spec)))
        return 0
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the job's last word: one line and exit 1 (logged with its traceback)
        return _failure(e)
    finally:
        if own_session and spark is not None:
            t = time.time()
            spark.stop()
            log.info("session stopped in %.2f s", time.time() - t)


def _failure(e: Exception) -> int:
    """Exit code and one line for a run that failed other than by a user error."""
    from batchscore.training.multiworker import worker_failure  # noqa: PLC0415 - only when a run failed

    user_error = translate_spark_error(e)
    if isinstance(user_error, BatchscoreError):
        print(f"error: {user_error}", file=sys.stderr)
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


if __name__ == "__main__":
    sys.exit(main())
