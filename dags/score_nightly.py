"""Airflow DAG `batchscore_nightly`: score each day's partition, then check the run's manifest.

Every night (02:00) the run for logical date `ds` (yesterday, for a daily schedule):

1. `score`: `./spark-submit.sh jobs/score.py --config ... --set "input.filter=<date column> = '<ds>'"`
   from a checkout of this repository on the Airflow worker, writing
   `<output root>/ds=<ds>/` (overwritten on a re-run, so re-runs and backfills are
   idempotent) and its quarantine under `<quarantine root>/ds=<ds>/`.
2. `check_manifest`: `python -m jobs.check_manifest <output>/_manifest.json --min-rows 1`:
   the run succeeded, `rows_in == rows_scored + rows_quarantined`, and the day had rows.

Retries: a failure is retried (`retries`, `retry_delay`) unless the job exited 2, a user
error (bad config, missing input, missing column, unreadable model, signature mismatch):
running it again cannot help, so that task fails at once (AirflowFailException). The
manifest check is treated the same way (exit 2: the manifest is bad; re-reading it will not
fix it). The exit code only reaches Airflow when the Spark driver runs in the Airflow
worker's process tree: use client deploy mode (the default here). In YARN/Kubernetes
cluster mode spark-submit reports every failed application as exit 1, which is retried.

Settings come from the Airflow worker's environment, read when the DAG file is parsed:

| variable | default | |
|---|---|---|
| BATCHSCORE_HOME | /opt/batchscore | this repository, with `make venv` done |
| BATCHSCORE_CONFIG | conf/demo.yaml | job config (relative to BATCHSCORE_HOME) |
| BATCHSCORE_MASTER | yarn | spark-submit --master |
| BATCHSCORE_PROPERTIES | conf/spark-cluster-cpu.conf | spark-submit --properties-file |
| BATCHSCORE_OUTPUT_ROOT | /data/batchscore/predictions | a `ds=<date>` directory per run |
| BATCHSCORE_QUARANTINE_ROOT | /data/batchscore/quarantine | same layout |
| BATCHSCORE_DATE_COLUMN | as_of_date | the input's date column for the filter |

The module imports without Airflow (tests do): then `dag` is None and only the pure
helpers below are defined. Written for Airflow 2.4+ (`schedule=`); the imports also
follow Airflow 3's locations.
"""
from __future__ import annotations

import json
import os
import re
import shlex
from datetime import datetime, timedelta

USER_ERROR_EXIT = 2  # jobs.score and jobs.check_manifest: a user error, never retried

HOME = os.environ.get("BATCHSCORE_HOME", "/opt/batchscore")
CONFIG = os.environ.get("BATCHSCORE_CONFIG", "conf/demo.yaml")
MASTER = os.environ.get("BATCHSCORE_MASTER", "yarn")
PROPERTIES = os.environ.get("BATCHSCORE_PROPERTIES", "conf/spark-cluster-cpu.conf")
OUTPUT_ROOT = os.environ.get("BATCHSCORE_OUTPUT_ROOT", "/data/batchscore/predictions")
QUARANTINE_ROOT = os.environ.get("BATCHSCORE_QUARANTINE_ROOT", "/data/batchscore/quarantine")
DATE_COLUMN = os.environ.get("BATCHSCORE_DATE_COLUMN", "as_of_date")

DEFAULT_ARGS = {
    "owner": "batchscore",
    "retries": 2,
    "retry_delay": timedelta(minutes=15),
    # A run normally takes minutes; hours means a stuck cluster. On timeout Airflow sends
    # SIGTERM to spark-submit, which stops the application; the try is then retried.
    "execution_timeout": timedelta(hours=3),
}


def output_path(ds: str, *, output_root: str = OUTPUT_ROOT) -> str:
    """Where the run for `ds` writes its predictions (and `_manifest.json`)."""
    return f"{output_root.rstrip('/')}/ds={ds}"


def score_command(
    ds: str = "{{ ds }}",
    *,
    home: str = HOME,
    config: str = CONFIG,
    master: str = MASTER,
    properties_file: str | None = PROPERTIES,
    output_root: str = OUTPUT_ROOT,
    quarantine_root: str = QUARANTINE_ROOT,
    date_column: str = DATE_COLUMN,
) -> str:
    """The bash command that scores the partition of `ds` (a Jinja `{{ ds }}` in the DAG).

    `--set` values are read as YAML, so each is passed as a JSON (= YAML) quoted string:
    a date-like or odd path stays a string. Each word is shell-quoted.
    """
    args = ["./spark-submit.sh", "--master", master]
    if properties_file:
        args += ["--properties-file", properties_file]
    args += [
        "jobs/score.py", "--config", config,
        "--set", _set("input.filter", f"{date_column} = '{ds}'"),
        "--set", _set("output.path", output_path(ds, output_root=output_root)),
        "--set", "output.mode=overwrite",
        "--set", _set("quarantine.path", f"{quarantine_root.rstrip('/')}/ds={ds}"),
        "--quiet",
    ]
    return f"cd {shlex.quote(home)} && " + " ".join(shlex.quote(a) for a in args)


def _set(key: str, value: str) -> str:
    return f"{key}={json.dumps(value)}"


def check_command(
    ds: str = "{{ ds }}", *, home: str = HOME, output_root: str = OUTPUT_ROOT, min_rows: int = 1
) -> str:
    """The bash command that checks the manifest of the run for `ds` (exit 0, or 2)."""
    python = os.path.join(home, ".venv", "bin", "python")
    args = [python, "-m", "jobs.check_manifest", f"{output_path(ds, output_root=output_root)}/_manifest.json",
            "--min-rows", str(min_rows)]
    return f"cd {shlex.quote(home)} && " + " ".join(shlex.quote(a) for a in args)


def exit_code_of(message: str) -> int | None:
    """The exit code in BashOperator's failure message (Airflow 2.x and 3.x), or None."""
    m = re.search(r"non-zero exit code (\d+)", message)
    return int(m.group(1)) if m else None


try:
    try:
        from airflow.sdk import DAG  # Airflow 3
    except ImportError:
        from airflow import DAG
    from airflow.exceptions import AirflowFailException

    try:  # Airflow 3, or Airflow 2 with the standard provider
        from airflow.providers.standard.operators.bash import BashOperator
    except ImportError:
        from airflow.operators.bash import BashOperator
except ImportError:  # no Airflow here: the helpers above stay importable
    DAG = None

dag = None

if DAG is not None:

    class BatchscoreBashOperator(BashOperator):
        """BashOperator that fails without retrying when the command exits 2 (a user error)."""

        def execute(self, context):  # type: ignore[no-untyped-def]
            try:
                return super().execute(context)
            except AirflowFailException:
                raise
            except Exception as e:  # AirflowException; its module moved between versions
                if exit_code_of(str(e)) == USER_ERROR_EXIT:
                    raise AirflowFailException(
                        f"{self.task_id}: exit {USER_ERROR_EXIT}, a user error (see the 'error:' line "
                        "in the log); not retried, fix the config or the input and clear the task") from e
                raise

    with DAG(
        dag_id="batchscore_nightly",
        description="Score the day's partition with the TensorFlow model, then check the manifest",
        schedule="0 2 * * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one Spark application at a time on the cluster
        default_args=DEFAULT_ARGS,
        tags=["batchscore", "spark", "tensorflow"],
    ) as dag:
        score = BatchscoreBashOperator(
            task_id="score",
            bash_command=score_command(),
            skip_on_exit_code=None,  # no exit code means "skipped" (the default would be 99)
        )
        check = BatchscoreBashOperator(
            task_id="check_manifest",
            bash_command=check_command(),
            skip_on_exit_code=None,
            retries=1,
            retry_delay=timedelta(minutes=1),
            execution_timeout=timedelta(minutes=10),
        )
        score >> check

        # The same run with the Spark provider's SparkSubmitOperator (apache-airflow-providers-
        # apache-spark) instead of ./spark-submit.sh. The zips under build/spark-submit/ are
        # made by ./spark-submit.sh on its first run: make them when building the image.
        # It raises one AirflowException for every non-zero exit ("... Error code is: N"), so
        # exit 2 is retried like any failure unless a subclass maps it, as BatchscoreBashOperator
        # does for its own message. spark-submit runs in the Airflow worker's directory: use
        # absolute paths.
        #
        # from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
        # score = SparkSubmitOperator(
        #     task_id="score",
        #     conn_id="spark_default",                    # host = the master, e.g. yarn
        #     application=f"{HOME}/jobs/score.py",
        #     py_files=f"{HOME}/build/spark-submit/batchscore.zip",
        #     archives=f"{HOME}/build/spark-submit/conf.zip#conf",
        #     properties_file=f"{HOME}/{PROPERTIES}",
        #     application_args=[
        #         "--config", f"{HOME}/{CONFIG}",
        #         "--set", _set("input.filter", f"{DATE_COLUMN} = '{{{{ ds }}}}'"),
        #         "--set", _set("output.path", output_path("{{ ds }}")),
        #         "--set", "output.mode=overwrite",
        #         "--set", _set("quarantine.path", f"{QUARANTINE_ROOT}/ds={{{{ ds }}}}"),
        #         "--quiet",
        #     ],
        #     env_vars={"PYSPARK_PYTHON": f"{HOME}/.venv/bin/python"},
        # )
