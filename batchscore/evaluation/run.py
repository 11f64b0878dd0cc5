"""Evaluate a scoring run: read its predictions, join labels, compute metrics, write them beside it.

`read_predictions` follows the run's `_manifest.json` where there is one: on object stores
the rows are under the run's own prefix (`output.data_path`, batchscore/output/publish.py), and Delta
output is read as Delta. `evaluate_run` joins labels from another table when asked
(`metrics.join_labels`) and computes the metrics on Spark (`metrics.evaluate`);
`write_evaluation` writes `metrics.json` and the PNG plots to `<predictions>/_evaluation/`
(a `_` name: Spark and pyarrow readers of the predictions skip it) or elsewhere, through
the session's filesystem (batchscore/output/filesystem.py), so any path Spark writes works.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchscore.core.errors import ConfigError, InputError
from batchscore.core.spark_errors import one_line
from batchscore.core.storage import absolute, pyarrow_uri
from batchscore.evaluation.gates import Gate, check_gate_metrics
from batchscore.evaluation.metrics import duplicate_key, evaluate, join_labels, resolve_task
from batchscore.evaluation.plots import render_plots
from batchscore.evaluation.results import Evaluation
from batchscore.output.filesystem import filesystem_for
from batchscore.output.manifest import MANIFEST_NAME, RunManifest

if TYPE_CHECKING:  # pyspark is the optional [spark] extra
    from pyspark.sql import DataFrame, SparkSession

EVALUATION_DIR = "_evaluation"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Predictions:
    """A scoring run's output as read: the rows, where they came from, the run's manifest if any."""

    df: DataFrame
    path: str  # as given
    data_path: str  # where the rows were read (the manifest's output.data_path on object stores)
    format: str  # parquet | delta
    manifest: RunManifest | None


def read_predictions(spark: SparkSession, path: str) -> Predictions:
    """The predictions at `path`, through its `_manifest.json` when there is one (else plain Parquet).

    Raises:
        InputError: naming the path, when the manifest or the data cannot be read.
    """
    base = absolute(path).rstrip("/")
    raw = filesystem_for(spark).read_bytes(f"{base}/{MANIFEST_NAME}")
    manifest = None
    if raw is not None:
        try:
            manifest = RunManifest.from_json(raw)
        except ValueError as e:
            raise InputError(f"manifest '{base}/{MANIFEST_NAME}' cannot be read: {e}") from None
    fmt = (manifest.output.format if manifest else None) or "parquet"
    data = base if fmt == "delta" or manifest is None else (manifest.output.data_path or base)
    return Predictions(_read(spark, data, fmt, what="predictions"), path, data, fmt, manifest)


def read_labels(spark: SparkSession, path: str) -> DataFrame:
    """The labels table at `path` (Parquet). Raises InputError naming the path when it cannot be read."""
    return _read(spark, absolute(path), "parquet", what="labels")


def _read(spark: SparkSession, path: str, fmt: str, *, what: str) -> DataFrame:
    try:
        return spark.read.format(fmt).load(path)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable path is the user's: one line naming it
        raise InputError(f"cannot read the {what} at '{path}': {one_line(e)}") from None


def evaluate_run(spark: SparkSession, *, predictions: str, label: str, score: str, labels: str | None = None,
                 key: str | None = None, task: str | None = None, threshold: float = 0.5, bins: int = 10,
                 slice_column: str | None = None, top_slices: int = 10,
                 gates: Sequence[Gate] = ()) -> tuple[Evaluation, dict[str, Any]]:
    """Read a run's predictions (and `labels`, joined on `key`), compute every metric on Spark.

    Args:
        labels: a Parquet table of `key` and `label`; None: the label is a column of the predictions.
        gates: checked against the task's metric names before anything is computed.

    Returns:
        The evaluation, and where it came from (paths, the run's id and counts) for the JSON.

    Raises:
        ConfigError: `labels` without `key`, a bad task or an unknown gate metric.
        SchemaError, InputError: as `metrics.evaluate`; labels whose key is not unique.
    """
    pred = read_predictions(spark, predictions)
    df, label_df = pred.df, None
    source: dict[str, Any] = {"predictions": predictions, "data_path": pred.data_path, "format": pred.format}
    if pred.manifest is not None:
        m = pred.manifest
        source["run"] = {"run_id": m.run_id, "rows_in": m.rows_in, "rows_scored": m.rows_scored,
                         "rows_quarantined": m.rows_quarantined}
    if labels:
        if not key:
            raise ConfigError("--labels needs --key, the column that joins predictions and labels")
        label_df = read_labels(spark, labels)
        df = join_labels(df, label_df, key=key, label=label, columns=[score, *([slice_column] if slice_column else [])])
        source.update(labels=labels, key=key)
    resolved = resolve_task(df, score=score, task=task)
    check_gate_metrics(gates, resolved)  # before any Spark job
    if label_df is not None and key:
        dup = duplicate_key(label_df, key)
        if dup is not None:
            raise InputError(f"labels '{labels}': key '{key}' is not unique ({dup[0]!r} appears {dup[1]} times)")
    result = evaluate(df, label=label, score=score, task=resolved, threshold=threshold, bins=bins,
                      slice_column=slice_column, top_slices=top_slices)
    return result, source


def default_out(predictions: str) -> str:
    """`<predictions>/_evaluation`."""
    return f"{absolute(predictions).rstrip('/')}/{EVALUATION_DIR}"


def write_evaluation(spark: SparkSession, evaluation: Evaluation, out: str, *,
                     source: dict[str, Any] | None = None) -> list[str]:
    """Write `metrics.json` and the plots (`plots.render_plots`) into the directory `out`; returns the files."""
    files = {METRICS_FILE: (json.dumps({**evaluation.to_dict(), "source": source or {}}, indent=2,
                                       default=str) + "\n").encode()}
    files.update(render_plots(evaluation))
    base = absolute(out).rstrip("/")
    local = pyarrow_uri(base)
    if local.startswith("/"):  # local disk (and dbfs:/ through /dbfs): no Hadoop .crc files beside the plots
        os.makedirs(local, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(local, name), "wb") as fh:
                fh.write(data)
    else:
        fs = filesystem_for(spark)
        fs.mkdirs(base)
        for name, data in files.items():
            fs.write_bytes(f"{base}/{name}", data)
    return [f"{base}/{name}" for name in files]


def summary(evaluation: Evaluation) -> str:
    """A few lines: the headline of all rows (for binary the line `make demo` has always printed),
    the other metrics, rows left out, one line per slice."""
    ev, m = evaluation, evaluation.metrics
    if ev.task == "binary":
        lines = [f"evaluate: {m['rows']:,} rows, positive rate {_f(m['positive_rate'], 3)}, mean {ev.score} "
                 f"{_f(m['mean_score'], 3)}, ROC AUC {_f(m['auc_roc'], 4)}",
                 f"  PR AUC {_f(m['auc_pr'], 4)}, log loss {_f(m['log_loss'], 4)}, "
                 f"accuracy {_f(m['accuracy'], 4)} at threshold {ev.threshold:g}"]
    else:
        lines = [f"evaluate: {_brief(ev, m)}"]
    rows = ev.overall.rows
    if rows["without_label"] or rows["without_prediction"]:
        lines.append(f"  left out: {rows['without_label']:,} rows without a label, "
                     f"{rows['without_prediction']:,} without a prediction")
    lines += [f"  {ev.slice_column}={g.name}: {_brief(ev, g.metrics)}" for g in ev.slices]
    return "\n".join(lines)


def _brief(ev: Evaluation, m: dict[str, Any]) -> str:
    if ev.task == "binary":
        return (f"{m['rows']:,} rows, positive rate {_f(m['positive_rate'], 3)}, ROC AUC {_f(m['auc_roc'], 4)}, "
                f"PR AUC {_f(m['auc_pr'], 4)}, log loss {_f(m['log_loss'], 4)}")
    if ev.task == "multiclass":
        return (f"{m['rows']:,} rows, {m['classes']} classes, accuracy {_f(m['accuracy'], 4)}, "
                f"log loss {_f(m['log_loss'], 4)}, macro one-vs-rest ROC AUC {_f(m['auc_roc_macro'], 4)}")
    return f"{m['rows']:,} rows, RMSE {_f(m['rmse'], 4)}, MAE {_f(m['mae'], 4)}, R² {_f(m['r2'], 4)}"


def _f(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
