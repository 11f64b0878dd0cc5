"""The Databricks notebooks in notebooks/, executed top to bottom on local Spark, cell by cell.

Each notebook is split on its `# COMMAND ----------` separators and every code cell is
exec'd in one namespace holding `spark`, as Databricks runs them: the working directory is
the notebook's folder, `__file__` is unset and there is no `dbutils`, so the widgets'
stand-in reads `BATCHSCORE_WIDGET_<NAME>`. `spark` is the tests' classic session, or a
Spark Connect session on the local server (what Databricks serverless and standard access
mode hand a notebook; the process marked as a Connect client while the notebook runs).
"""
from __future__ import annotations

import contextlib
import json
import py_compile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core.session_kind import is_connect
from tests import support

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SEPARATOR = "# COMMAND ----------"
DAY = "2026-06-30"
TOLERANCE = 1e-5  # float32 model outputs, Spark vs bare TF on the same rows


def cells(path: Path) -> list[str]:
    """The notebook's code cells (markdown and other `# MAGIC` cells left out)."""
    text = path.read_text()
    assert text.startswith("# Databricks notebook source\n"), path
    out = []
    for cell in text.split(SEPARATOR):
        body = [line for line in cell.strip().splitlines() if line != "# Databricks notebook source"]
        if body and not all(line.startswith("# MAGIC") for line in body):
            out.append("\n".join(body))
    return out


def run_notebook(path: Path, spark: Any, widgets: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Exec every code cell of `path` in one namespace; returns the namespace."""
    for name, value in widgets.items():
        monkeypatch.setenv(f"BATCHSCORE_WIDGET_{name.upper()}", value)
    monkeypatch.chdir(path.parent)
    sql_before = {k: spark.conf.get(k, None) for k in _SQL_KEYS}
    namespace: dict[str, Any] = {"__name__": "__main__", "spark": spark}
    try:
        for i, cell in enumerate(cells(path)):
            exec(compile(cell, f"{path.name}[cell {i}]", "exec"), namespace)
    finally:  # the notebook sets session SQL confs on a shared session: give the tests theirs back
        for key, value in sql_before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)
    assert namespace["own_session"] is False
    if not is_connect(spark):
        assert not spark.sparkContext._jsc.sc().isStopped()
    return namespace


@contextlib.contextmanager
def notebook_session(kind: str, spark: Any, request: pytest.FixtureRequest) -> Iterator[tuple[Any, pytest.MonkeyPatch]]:
    """The session a notebook gets: the tests' classic one, or a new Spark Connect client session
    (the process marked as pyspark's builder marks a Connect client, until the block ends)."""
    with pytest.MonkeyPatch.context() as mp:
        if kind == "classic":
            yield spark, mp
            return
        url = request.getfixturevalue("connect_server")  # skips on a stack without Spark Connect
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        mp.setenv("SPARK_CONNECT_MODE_ENABLED", "1")
        session = ConnectSession.builder.remote(url).create()
        try:
            yield session, mp
        finally:
            session.stop()


_SQL_KEYS = ("spark.sql.shuffle.partitions", "spark.sql.execution.arrow.maxRecordsPerBatch",
             "spark.sql.sources.partitionOverwriteMode")


@pytest.mark.parametrize("name", ["score.py", "evaluate.py"])
def test_notebooks_are_databricks_source(name: str, tmp_path: Path) -> None:
    path = NOTEBOOKS / name
    lines = path.read_text().splitlines()
    assert lines[0] == "# Databricks notebook source"
    assert lines.count(SEPARATOR) >= 5
    assert any(line.startswith("# MAGIC %md") for line in lines)
    assert any(line.startswith("from batchscore.") for line in lines)  # the package, not copies of it
    py_compile.compile(str(path), cfile=str(tmp_path / "nb.pyc"), doraise=True)


@pytest.fixture(scope="module", params=["classic", "connect"])
def scored(request: pytest.FixtureRequest, spark: Any, demo_input: str, demo_model: str,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The score notebook run once for one day of the demo input, on each kind of session."""
    out = str(tmp_path_factory.mktemp("nb") / "predictions")
    with notebook_session(request.param, spark, request) as (session, mp):
        ns = run_notebook(NOTEBOOKS / "score.py", session, {
            "config": str(ROOT / "conf" / "demo.yaml"),
            "input_path": demo_input, "model_path": demo_model, "output_path": out,
            "filter": f"as_of_date = '{DAY}'",
        }, mp)
    return {"output": out, "namespace": ns, "kind": request.param}


def test_score_notebook_writes_the_days_predictions(scored: dict[str, Any], demo_table: pa.Table,
                                                    demo_reference: np.ndarray) -> None:
    dates = np.asarray(demo_table.column("as_of_date").to_pylist())
    expected_ids = np.flatnonzero(dates == DAY)
    out = support.read_output(scored["output"])
    assert set(out.column_names) == {"id", "as_of_date", "defaulted", "default_probability"}
    ids = out.column("id").to_numpy()
    assert ids.tolist() == expected_ids.tolist()  # exactly that day's rows, once each
    assert {str(d) for d in out.column("as_of_date").to_pylist()} == {DAY}  # a partition column, read as a date
    assert out.column("defaulted").to_pylist() == demo_table.column("defaulted").take(ids).to_pylist()
    assert support.max_abs_diff(out.column("default_probability").to_numpy(), demo_reference[ids]) < TOLERANCE
    manifest = json.loads((Path(scored["output"]) / "_manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert (manifest["rows_in"], manifest["rows_scored"], manifest["rows_quarantined"]) == (len(ids), len(ids), 0)
    assert scored["namespace"]["manifest"].run_id == manifest["run_id"]


def _auc_pairwise(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC from its definition: P(score of a positive > score of a negative), ties half."""
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def test_evaluate_notebook_metrics(spark: Any, scored: dict[str, Any], demo_table: pa.Table,
                                   demo_reference: np.ndarray, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    metrics_path = str(tmp_path / "metrics")
    with notebook_session(scored["kind"], spark, request) as (session, mp):
        ns = run_notebook(NOTEBOOKS / "evaluate.py", session, {
            "predictions_path": scored["output"], "label": "defaulted", "score": "default_probability",
            "threshold": "0.3", "metrics_path": metrics_path,
        }, mp)
    # Expected, from the demo rows and bare TF, not from the notebook's output.
    ids = np.flatnonzero(np.asarray(demo_table.column("as_of_date").to_pylist()) == DAY)
    labels = demo_table.column("defaulted").to_numpy()[ids].astype(bool)
    scores = demo_reference[ids].astype(np.float64)
    predicted = scores >= 0.3
    expected = {
        "rows": len(ids), "positives": int(labels.sum()), "threshold": 0.3,
        "positive_rate": labels.mean(), "mean_score": scores.mean(),
        "auc_roc": _auc_pairwise(labels, scores),
        "log_loss": -np.mean(labels * np.log(scores) + (~labels) * np.log(1 - scores)),
        "precision": (predicted & labels).sum() / predicted.sum(),
        "recall": (predicted & labels).sum() / labels.sum(),
        "accuracy": (predicted == labels).mean(),
    }
    written = spark.read.json(metrics_path).collect()
    assert len(written) == 1
    for source in (ns["metrics"], written[0].asDict()):
        assert set(expected) <= set(source)
        for key, value in expected.items():
            assert source[key] == pytest.approx(value, abs=1e-4), key
    assert written[0]["predictions_path"] == scored["output"]
