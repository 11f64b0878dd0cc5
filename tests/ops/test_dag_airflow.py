"""The Airflow 3 DAG end to end: `make test-airflow` runs this file in .venv-airflow (`--noconftest`).

A standalone Airflow home in a temp dir (SQLite, `airflow db migrate`), the connection
`spark_default` on `local[2]`, and `airflow dags test` running the real DAG: spark-submit
through ./spark-submit.sh with the project's .venv, then the manifest check. Skipped where
Airflow is not installed (the main .venv).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("airflow") is None:  # not imported here: AIRFLOW_HOME must be set first
    pytest.skip("Airflow is not installed in this interpreter (run `make test-airflow`)", allow_module_level=True)

import yaml

ROOT = Path(__file__).resolve().parents[2]
JOB_VENV = Path(os.environ.get("BATCHSCORE_VENV") or ROOT / ".venv")
JOB_PYTHON = JOB_VENV / "bin" / "python"
AIRFLOW = Path(sys.executable).parent / "airflow"
DAG_ID = "batchscore_nightly"
DAY_A, DAY_B, DAY_BAD = "2026-06-30", "2026-07-31", "2026-08-31"
TOLERANCE = 1e-5  # float32 model outputs, Spark vs bare TF


def _run(cmd: list[str], *, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _job_python(code: str, *args: str) -> Any:
    """Run `code` in the job's .venv (pyarrow, TensorFlow, the package); returns the JSON it prints last."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = _run([str(JOB_PYTHON), "-c", textwrap.dedent(code), *args], env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A migrated Airflow home, demo data and a job config; the environment `airflow` runs with."""
    if not JOB_PYTHON.is_file():
        pytest.skip(f"no job virtualenv at {JOB_VENV} (run `make venv`, or set BATCHSCORE_VENV)")
    tmp = tmp_path_factory.mktemp("airflow")
    _job_python("""
        import json, sys
        from batchscore.demo_data import main
        print(json.dumps(main(["--out", sys.argv[1], "--rows", "600", "--epochs", "1"])))
    """, str(tmp / "demo"))
    config = yaml.safe_load((ROOT / "conf" / "demo.yaml").read_text())
    config["input"]["path"] = str(tmp / "demo" / "features")
    config["model"]["path"] = str(tmp / "demo" / "model")
    (tmp / "job.yaml").write_text(yaml.safe_dump(config))
    (tmp / "bad.yaml").write_text(yaml.safe_dump({**config, "model": {**config["model"], "batch_sise": 8}}))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "BATCHSCORE_"))},
        "AIRFLOW_HOME": str(tmp / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "BATCHSCORE_VENV": str(JOB_VENV),
        "BATCHSCORE_CONFIG": str(tmp / "job.yaml"),
        "BATCHSCORE_PROPERTIES": "conf/spark-local.conf",
        "BATCHSCORE_OUTPUT_ROOT": str(tmp / "predictions"),
        "BATCHSCORE_QUARANTINE_ROOT": str(tmp / "quarantine"),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "_TMP": str(tmp),
    }
    migrate = _run([str(AIRFLOW), "db", "migrate"], env=env, timeout=600)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    return env


def _dags_test(env: dict[str, str], day: str) -> subprocess.CompletedProcess[str]:
    return _run([str(AIRFLOW), "dags", "test", DAG_ID, day], env=env)


def _task_states(env: dict[str, str], day: str) -> dict[str, tuple[str, int, int]]:
    """task_id -> (state, try_number, earlier tries kept in the history) of the newest run for `day`."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ? AND logical_date LIKE ? "
                               "ORDER BY id DESC LIMIT 1", (DAG_ID, f"{day}%")).fetchone()
        rows = db.execute("SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
                          (DAG_ID, run_id)).fetchall()
        history = dict(db.execute("SELECT task_id, count(*) FROM task_instance_history WHERE dag_id = ? "
                                  "AND run_id = ? GROUP BY task_id", (DAG_ID, run_id)).fetchall())
    return {task: (state, tries, history.get(task, 0)) for task, state, tries in rows}


READ_DAY = """
    import json, sys
    import pyarrow.dataset as ds
    from tests import support
    out, features, model, day = sys.argv[1:]
    got = support.read_output(out)
    rows = ds.dataset(features, format="parquet", partitioning="hive").to_table(
        filter=ds.field("as_of_date") == day).sort_by("id")
    ref = support.tf_predict(model, support.demo_inputs(rows))["output_0"].reshape(-1)
    same_rows = got.column("id").to_pylist() == rows.column("id").to_pylist()
    print(json.dumps({"ids": got.column("id").to_pylist(), "expected_ids": rows.column("id").to_pylist(),
                      "scores": got.column("default_probability").to_pylist(),
                      "max_diff": support.max_abs_diff(got.column("default_probability").to_numpy(), ref)
                      if same_rows else None}))
"""


def _read_day(env: dict[str, str], day: str) -> dict[str, Any]:
    tmp = Path(env["_TMP"])
    return _job_python(READ_DAY, f"{env['BATCHSCORE_OUTPUT_ROOT']}/ds={day}", str(tmp / "demo" / "features"),
                       str(tmp / "demo" / "model"), day)


def _files(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()}


def test_dag_folder_imports_with_no_errors(airflow_env: dict[str, str]) -> None:
    probe = """
        import json, sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder=sys.argv[1])
        dag = bag.dags.get(sys.argv[2])
        score = dag.task_dict["score"] if dag else None
        print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dags),
                          "tasks": sorted(dag.task_dict) if dag else [],
                          "downstream": sorted(score.downstream_task_ids) if score else [],
                          "operator": type(score).__mro__[1].__name__ if score else None,
                          "conn_id": score._conn_id if score else None,  # the provider keeps it private
                          "retries": score.retries if score else None,
                          "backoff": bool(score.retry_exponential_backoff) if score else None,
                          "args": score.application_args if score else None}))
    """
    run = _run([sys.executable, "-c", textwrap.dedent(probe), str(ROOT / "dags"), DAG_ID], env=airflow_env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["errors"] == {} and info["dags"] == [DAG_ID]
    assert info["tasks"] == ["check_manifest", "score"] and info["downstream"] == ["check_manifest"]
    assert (info["operator"], info["conn_id"]) == ("SparkSubmitOperator", "spark_default")
    assert info["retries"] >= 1 and info["backoff"] is True
    assert "input.filter=\"as_of_date = '{{ ds }}'\"" in info["args"]


def test_dags_test_scores_the_day_and_backfill_is_idempotent(airflow_env: dict[str, str]) -> None:
    out_root = Path(airflow_env["BATCHSCORE_OUTPUT_ROOT"])
    first = _dags_test(airflow_env, DAY_A)
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-3000:]
    assert _task_states(airflow_env, DAY_A) == {"score": ("success", 1, 0), "check_manifest": ("success", 1, 0)}
    day_a = _read_day(airflow_env, DAY_A)
    assert day_a["ids"] == day_a["expected_ids"] and day_a["ids"]  # exactly that day's rows
    assert day_a["max_diff"] < TOLERANCE  # predictions equal bare TF on the same rows
    manifest_a = json.loads((out_root / f"ds={DAY_A}" / "_manifest.json").read_text())
    assert manifest_a["rows_in"] == manifest_a["rows_scored"] == len(day_a["ids"])

    second = _dags_test(airflow_env, DAY_B)
    assert second.returncode == 0, second.stdout[-5000:] + second.stderr[-3000:]
    day_b = _read_day(airflow_env, DAY_B)
    assert day_b["ids"] == day_b["expected_ids"] and not set(day_b["ids"]) & set(day_a["ids"])
    files_b = _files(out_root / f"ds={DAY_B}")

    again = _dags_test(airflow_env, DAY_A)  # a re-run (backfill) of the first date
    assert again.returncode == 0, again.stdout[-5000:] + again.stderr[-3000:]
    rerun_a = _read_day(airflow_env, DAY_A)
    assert (rerun_a["ids"], rerun_a["scores"]) == (day_a["ids"], day_a["scores"])  # same output
    assert json.loads((out_root / f"ds={DAY_A}" / "_manifest.json").read_text())["run_id"] != manifest_a["run_id"]
    assert _files(out_root / f"ds={DAY_B}") == files_b  # the other date untouched
    assert sorted(p.name for p in out_root.iterdir()) == [f"ds={DAY_A}", f"ds={DAY_B}"]


def test_user_error_fails_the_task_without_retry(airflow_env: dict[str, str]) -> None:
    env = {**airflow_env, "BATCHSCORE_CONFIG": str(Path(airflow_env["_TMP"]) / "bad.yaml")}
    run = _dags_test(env, DAY_BAD)
    log = run.stdout + run.stderr
    assert "batch_sise" in log  # the job's one-line error names the key
    assert "exit 2, a user error" in log
    states = _task_states(env, DAY_BAD)
    # Failed on its first try, no retry scheduled (retries=2 otherwise); the check never ran.
    assert states["score"] == ("failed", 1, 0)
    assert states["check_manifest"][0] == "upstream_failed"
    assert not (Path(env["BATCHSCORE_OUTPUT_ROOT"]) / f"ds={DAY_BAD}").exists()
