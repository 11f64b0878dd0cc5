"""The one skeleton every entry point runs: arguments -> logging -> TensorFlow's logs -> config
-> session -> run -> summary -> exit code.

A job is a `Job`: its options, how it loads its config, the Spark conf of its session (when
it needs one), its run and its summary. Exit codes: 0 success; 2 a user error (a
`BatchscoreError`, or a Spark failure `translate_spark_error` maps to one), one line
`error: ...` on stderr; a job's own code from `exit_code` (evaluate: 3 a failed gate); 1
anything else, logged with its traceback, then one `error: ...` line. A session passed in
(`spark=`) or shared (Databricks, a notebook's) is left running; one the job built is stopped
(a Spark Connect client's stop closes its session only: the server keeps running).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchscore.core.clock import Clock
from batchscore.core.errors import BatchscoreError, ConfigError
from batchscore.core.spark_errors import one_line, translate_spark_error
from batchscore.session.tf_logs import tensorflow_logs

log = logging.getLogger("batchscore")


@dataclass
class Run:
    """One run of a job: what its hooks get."""

    args: argparse.Namespace
    clock: Clock  # from the process start when the job owns its process, else from now
    config: Any = None  # what `Job.load` returned
    spark: Any = None  # the session (None for a job, or a run, without one)
    tf_conf: dict[str, str] = field(default_factory=dict)  # TF's log level for the executors
    result: Any = None  # what `Job.run` returned


def _no_config(run: Run) -> Any:
    return None


def _ok(run: Run) -> int:
    return 0


@dataclass(frozen=True)
class Job:
    """An entry point, as hooks around the shared skeleton.

    Attributes:
        prog, description: the argument parser's.
        options: adds the job's arguments (`add_verbosity` adds `--quiet` / `--verbose`).
        run: does the work; its return value is `Run.result`.
        load: reads the job's config (after logging and TensorFlow's log level are set).
        spark_conf: the conf of the session the run needs, or None when it needs none; without
            this hook the job never starts Spark.
        app_name, spark_log_level, prestart_daemon: how its session is built.
        remote: the job runs on a Spark Connect session too: `--remote sc://host:port` (else the
            config's `spark.remote`, else $SPARK_REMOTE) makes its session a Connect client.
        summary: the lines printed after a run, from its result (default: `str`; None: nothing).
        exit_code: the exit code of a run that did not fail (default 0; evaluate: 3 a failed gate).
        what: names the job in the log of an unexpected failure ("scoring failed").
        failure: the exit code and one line for an unexpected failure (default: 1).
    """

    prog: str
    description: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Run], Any]
    load: Callable[[Run], Any] = _no_config
    spark_conf: Callable[[Run], dict[str, Any] | None] | None = None
    app_name: str = "batchscore"
    spark_log_level: str = "WARN"
    prestart_daemon: bool = False
    remote: bool = False
    summary: Callable[[Any], str | None] = str
    exit_code: Callable[[Run], int] = _ok
    what: str = "the job"
    failure: Callable[[Exception], int] | None = None


def add_verbosity(p: argparse.ArgumentParser, *, quiet: str, verbose: str) -> None:
    """`--quiet` (warnings and the summary only) and `--verbose` (TensorFlow's own logs too)."""
    p.add_argument("--quiet", action="store_true", help=quiet)
    p.add_argument("--verbose", action="store_true", help=verbose)


def run_job(job: Job, argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run `job` with `argv` (default: sys.argv[1:]); returns the exit code.

    Args:
        spark: a session to use and leave running; by default the job builds one from
            `Job.spark_conf` when it needs one, and stops it at the end unless it is shared.
    """
    parser = argparse.ArgumentParser(prog=job.prog, description=job.description)
    job.options(parser)
    if job.remote:
        parser.add_argument("--remote", default=None, metavar="sc://HOST:PORT",
                            help="run on this Spark Connect server (default: the config's spark.remote, "
                                 "else $SPARK_REMOTE, else a classic session)")
    args = parser.parse_args(argv)
    owns = spark is None and job.spark_conf is not None and not _session_is_shared()
    # A job that owns its process accounts for all of it (the manifest's seconds_by_phase);
    # called in a notebook or pipeline, the accounting starts here.
    run = Run(args, Clock.from_process_start() if owns else Clock(), spark=spark)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run.tf_conf = tensorflow_logs(verbose=getattr(args, "verbose", False))  # before anything imports TensorFlow
    built = False
    try:
        run.config = job.load(run)
        if run.spark is None and job.spark_conf is not None:
            conf = job.spark_conf(run)
            if conf is not None:
                run.spark, built = _start_session(job, run, conf), True
        run.result = job.run(run)
        text = job.summary(run.result)
        if text is not None:
            print(text)
        code = job.exit_code(run)
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the job's last word: one line and its exit code
        return (job.failure or _failure(job.what))(e)
    finally:
        if built and (owns or _is_connect(run.spark)):  # a Connect session built here is this job's alone
            _stop_session(run)
    return code


def conf_pairs(items: list[str]) -> dict[str, str]:
    """`--conf KEY=VALUE` options as a mapping; a malformed one is a one-line ConfigError."""
    conf: dict[str, str] = {}
    for pair in items:
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--conf {pair!r}: expected KEY=VALUE")
        conf[k.strip()] = v
    return conf


def user_error(e: Exception) -> BatchscoreError | None:
    """The user error behind a failure (a Spark error caused by the input or config), if any."""
    translated = translate_spark_error(e)
    return translated if isinstance(translated, BatchscoreError) else None


def _failure(what: str) -> Callable[[Exception], int]:
    def failed(e: Exception) -> int:
        found = user_error(e)
        if found is not None:
            print(f"error: {found}", file=sys.stderr)
            return 2
        log.exception("%s failed", what)
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1

    return failed


def _is_connect(spark: Any) -> bool:
    from batchscore.core.session_kind import is_connect  # noqa: PLC0415 - only jobs that use Spark

    return is_connect(spark)


def _session_is_shared() -> bool:
    from batchscore.session.builder import session_is_shared  # noqa: PLC0415 - only jobs that use Spark

    return session_is_shared()


def _start_session(job: Job, run: Run, conf: dict[str, Any]) -> Any:
    """The job's session from its conf, TensorFlow's log level for the executors merged in
    (`--verbose` wins over the conf's; quiet, the conf's wins)."""
    from batchscore.core.session_kind import is_connect  # noqa: PLC0415 - only jobs that use Spark
    from batchscore.session.builder import build_session, remote_url  # noqa: PLC0415 - only jobs that use Spark

    remote = remote_url(getattr(run.args, "remote", None), conf, os.environ) if job.remote else None
    merged = {**conf, **run.tf_conf} if getattr(run.args, "verbose", False) else {**run.tf_conf, **conf}
    spark = build_session(merged, app_name=job.app_name, prestart_daemon=job.prestart_daemon, remote=remote)
    if not is_connect(spark):  # a Connect server's log level is its own
        spark.sparkContext.setLogLevel(job.spark_log_level)
    return spark


def _stop_session(run: Run) -> None:
    t = time.time()
    run.spark.stop()  # after the job's outputs were written: its time is logged here instead
    log.info("session stopped in %.2f s; process ran %.2f s", time.time() - t, time.time() - run.clock.origin)
