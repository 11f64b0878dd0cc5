"""Airflow 3 DAG `batchscore_nightly`: score each day's partition on Spark, then check the run's manifest.

Daily at 02:00 UTC, for the logical date `ds`: `score` submits `jobs/score.py` through
`./spark-submit.sh` on the connection `spark_default` (SparkSubmitOperator), the input
filtered to `<date column> = '<ds>'` and `<output root>/ds=<ds>/` overwritten, so re-runs and
backfills are idempotent; then `check_manifest` checks that run's `_manifest.json`
(`rows_in == rows_scored + rows_quarantined`, and the day had rows). Exit 2, a user error,
fails a task at once; other failures are retried with backoff.

Settings: the BATCHSCORE_* environment variables below, read when the file is parsed.
Thin on purpose: Airflow and its Spark provider only; the job runs in its own virtualenv.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from airflow.sdk import Context

USER_ERROR_EXIT = 2  # jobs.score and jobs.check_manifest: a user error, never retried

_CHECKOUT = Path(__file__).resolve().parent.parent
# The checkout the job runs from, with `make venv` (and `make jars`) done.
HOME = os.environ.get("BATCHSCORE_HOME") or (
    str(_CHECKOUT) if (_CHECKOUT / "jobs" / "score.py").is_file() else "/opt/batchscore")
VENV = os.environ.get("BATCHSCORE_VENV") or os.path.join(HOME, ".venv")  # the job's Python (driver and workers)
# The job config, relative to HOME or absolute.
CONFIG = os.path.join(HOME, os.environ.get("BATCHSCORE_CONFIG", "conf/demo.yaml"))
# spark-submit --properties-file, relative to HOME ("" for none).
PROPERTIES = os.environ.get("BATCHSCORE_PROPERTIES", "conf/spark-cluster-cpu.conf")
# A `ds=<date>` directory per run below each root.
OUTPUT_ROOT = os.environ.get("BATCHSCORE_OUTPUT_ROOT", "/data/batchscore/predictions").rstrip("/")
QUARANTINE_ROOT = os.environ.get("BATCHSCORE_QUARANTINE_ROOT", "/data/batchscore/quarantine").rstrip("/")
DATE_COLUMN = os.environ.get("BATCHSCORE_DATE_COLUMN", "as_of_date")  # the input's date column, for the filter
DS = "{{ ds }}"  # the run's logical date, rendered by Airflow

DEFAULT_ARGS = {
    "owner": "batchscore",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,  # 5 min, then ~10 min (with jitter), capped below
    "max_retry_delay": timedelta(hours=1),
    # A run normally takes minutes; hours means a stuck cluster. On timeout Airflow kills
    # spark-submit, which stops the application; the try is then retried.
    "execution_timeout": timedelta(hours=3),
}


def output_path(ds: str = DS) -> str:
    """Where the run for `ds` writes its predictions (and `_manifest.json`)."""
    return f"{OUTPUT_ROOT}/ds={ds}"


def score_args(ds: str = DS) -> list[str]:
    """The job's arguments for the day `ds`; `--set` values as JSON (= YAML) strings, so dates stay strings."""
    sets = {
        "input.filter": f"{DATE_COLUMN} = '{ds}'",
        "output.path": output_path(ds),
        "output.mode": "overwrite",
        "quarantine.path": f"{QUARANTINE_ROOT}/ds={ds}",
    }
    args = ["--config", CONFIG]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return [*args, "--quiet"]


def exit_code_of(message: str) -> int | None:
    """The exit code in SparkSubmitHook's failure ("... Error code is: N.") or a bash failure, or None."""
    m = re.search(r"Error code is: (\d+)|non-zero exit code (\d+)", message)
    return int(m.group(1) or m.group(2)) if m else None


class BatchscoreSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator that fails without retrying when the job exits 2 (a user error).

    Exit 2 is a bad config, a missing input or column, an unreadable model, a signature
    mismatch: running it again cannot help. The exit code reaches Airflow in client deploy
    mode (the driver runs under the Airflow worker); in YARN/Kubernetes cluster mode
    spark-submit reports every failure as exit 1, so those are retried.
    """

    def execute(self, context: Context) -> Any:
        try:
            return super().execute(context)
        except AirflowFailException:
            raise
        except Exception as e:  # the provider raises AirflowException for every non-zero exit
            if exit_code_of(str(e)) == USER_ERROR_EXIT:
                raise AirflowFailException(
                    f"{self.task_id}: exit {USER_ERROR_EXIT}, a user error (see the 'error:' line in the log); "
                    "not retried: fix the config or the input, then clear the task") from e
            raise


@dag(
    dag_id="batchscore_nightly",
    description="Score the day's partition with the TensorFlow model on Spark, then check the manifest",
    schedule="0 2 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # one Spark application at a time on the cluster
    default_args=DEFAULT_ARGS,
    tags=["batchscore", "spark", "tensorflow"],
)
def batchscore_nightly() -> None:
    python = os.path.join(VENV, "bin", "python")
    score = BatchscoreSparkSubmitOperator(
        task_id="score",
        conn_id="spark_default",
        application=os.path.join(HOME, "jobs", "score.py"),
        application_args=score_args(),
        properties_file=os.path.join(HOME, PROPERTIES) if PROPERTIES else None,
        name=f"batchscore-{DS}",
        # The provider runs `spark-submit` from PATH: `dags/bin/spark-submit` wraps ./spark-submit.sh
        # (client mode). On YARN/Kubernetes the provider passes env_vars to the application
        # instead: put that folder first on the Airflow worker's own PATH there.
        env_vars={
            "PATH": os.pathsep.join([os.path.join(HOME, "dags", "bin"), os.path.join(VENV, "bin"),
                                     os.environ.get("PATH", "/usr/bin:/bin")]),
            "PYTHON": python,  # ./spark-submit.sh's interpreter when HOME has no .venv of its own
            "PYSPARK_PYTHON": python,
        },
    )

    @task(retries=1, retry_delay=timedelta(minutes=1), execution_timeout=timedelta(minutes=10))
    def check_manifest(ds: str | None = None) -> None:
        """The run's manifest is complete and consistent (jobs.check_manifest: exit 0, or 2)."""
        cmd = [python, "-m", "jobs.check_manifest", f"{output_path(str(ds))}/_manifest.json", "--min-rows", "1"]
        rc = subprocess.run(cmd, cwd=HOME, check=False).returncode
        if rc == USER_ERROR_EXIT:
            raise AirflowFailException(f"check_manifest: exit {rc}, the manifest is bad; not retried")
        if rc:
            raise RuntimeError(f"check_manifest: exit {rc}")

    score >> check_manifest()


batchscore_nightly()
