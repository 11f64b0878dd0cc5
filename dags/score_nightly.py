"""Airflow 3 DAG `batchscore_nightly`: score each day's partition on Spark, then check the run's manifest.

Every night (02:00 UTC) the run for logical date `ds`:

1. `score`: the Apache Spark provider's SparkSubmitOperator (connection `spark_default`)
   submits `jobs/score.py --config <config> --set "input.filter=<date column> = '<ds>'"`
   through this repository's `./spark-submit.sh` (it ships the package and conf/, puts the
   connector jars of `make jars` on the classpath, and runs the job in the project's
   `.venv`). Output: `<output root>/ds=<ds>/`, overwritten on a re-run, so re-runs and
   backfills are idempotent and never touch other dates; quarantine under
   `<quarantine root>/ds=<ds>/`.
2. `check_manifest`: `python -m jobs.check_manifest <output>/_manifest.json --min-rows 1`
   in the project's `.venv`: the run succeeded, `rows_in == rows_scored + rows_quarantined`,
   and the day had rows.

Where the day's labels are known, a third task could stop a bad model: `python -m
jobs.evaluate --predictions <output> --labels <labels> --key id --label ... --score ...
--gate auc_roc>=0.75` exits 3 when a gate fails (metrics and plots are written first to
`<output>/_evaluation/`); treat 3 like 2 below (AirflowFailException, no retry). Not wired in
here: the nightly input has no labels yet.

Retries: failures are retried with exponential backoff, except exit 2, a user error (bad
config, missing input or column, unreadable model, signature mismatch; for the check: a bad
manifest): running it again cannot help, so the task fails at once (AirflowFailException).
The exit code reaches Airflow in client deploy mode (the driver runs under the Airflow
worker); in YARN/Kubernetes cluster mode spark-submit reports every failure as exit 1.

The connection `spark_default` (type `spark`): host = the master (`yarn`, `local[*]`,
`spark://host:7077`, `k8s://https://...`), extras `deploy-mode`, `queue`. The provider runs
`spark-submit` from PATH; the DAG puts `$BATCHSCORE_HOME/dags/bin` first on the PATH of that
process (client mode), where `spark-submit` is a two-line wrapper of `./spark-submit.sh`.
On YARN/Kubernetes the provider passes env_vars to the application instead: put that folder
first on the Airflow worker's own PATH there.

Settings come from the Airflow worker's environment when the DAG file is parsed:

| variable | default | |
|---|---|---|
| BATCHSCORE_HOME | the checkout holding this file, else /opt/batchscore | `make venv` (and `make jars`) done |
| BATCHSCORE_VENV | $BATCHSCORE_HOME/.venv | the job's Python (drivers and workers) |
| BATCHSCORE_CONFIG | conf/demo.yaml | job config (relative to BATCHSCORE_HOME, or absolute) |
| BATCHSCORE_PROPERTIES | conf/spark-cluster-cpu.conf | spark-submit --properties-file ("" for none) |
| BATCHSCORE_OUTPUT_ROOT | /data/batchscore/predictions | a `ds=<date>` directory per run |
| BATCHSCORE_QUARANTINE_ROOT | /data/batchscore/quarantine | same layout |
| BATCHSCORE_DATE_COLUMN | as_of_date | the input's date column for the filter |

Thin on purpose: Airflow and the provider only at the top level; no Spark, TensorFlow or
package import (the job runs in its own virtualenv).
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
HOME = os.environ.get("BATCHSCORE_HOME") or (
    str(_CHECKOUT) if (_CHECKOUT / "jobs" / "score.py").is_file() else "/opt/batchscore")
VENV = os.environ.get("BATCHSCORE_VENV") or os.path.join(HOME, ".venv")
CONFIG = os.path.join(HOME, os.environ.get("BATCHSCORE_CONFIG", "conf/demo.yaml"))
PROPERTIES = os.environ.get("BATCHSCORE_PROPERTIES", "conf/spark-cluster-cpu.conf")
OUTPUT_ROOT = os.environ.get("BATCHSCORE_OUTPUT_ROOT", "/data/batchscore/predictions").rstrip("/")
QUARANTINE_ROOT = os.environ.get("BATCHSCORE_QUARANTINE_ROOT", "/data/batchscore/quarantine").rstrip("/")
DATE_COLUMN = os.environ.get("BATCHSCORE_DATE_COLUMN", "as_of_date")
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
    """SparkSubmitOperator that fails without retrying when the job exits 2 (a user error)."""

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
