# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluate scored output against labels (batchscore)
# MAGIC
# MAGIC Reads the predictions a scoring run wrote (`notebooks/score.py`, `batchscore score`),
# MAGIC with the label kept beside the score (`output.keep_columns`), and computes ROC AUC,
# MAGIC log loss, the positive rate and, at a threshold, precision, recall and accuracy. The
# MAGIC metrics are shown and, when `metrics_path` is set, written there as one JSON row.
# MAGIC
# MAGIC * **On Databricks**: as `notebooks/score.py` (a Git folder or the wheel); set the widgets.
# MAGIC * **Anywhere else**: `python notebooks/evaluate.py` from the repository root after
# MAGIC   `make demo`; widgets from `BATCHSCORE_WIDGET_<NAME>` environment variables.

# COMMAND ----------

import json
import os
import sys
from pathlib import Path

try:
    NOTEBOOK_DIR = Path(__file__).resolve().parent  # plain Python
except NameError:
    NOTEBOOK_DIR = Path(os.getcwd())  # Databricks: the working directory is the notebook's folder
REPO_ROOT = NOTEBOOK_DIR.parent if (NOTEBOOK_DIR.parent / "jobs").is_dir() else NOTEBOOK_DIR
if (REPO_ROOT / "jobs").is_dir() and str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from batchscore.jobs.widgets import notebook_params  # noqa: E402
from batchscore.jobs.evaluate import roc_auc  # noqa: E402
from batchscore.jobs.session import build_session  # noqa: E402
from batchscore.udfs.compat import to_arrow  # noqa: E402

# COMMAND ----------

# MAGIC %md
# MAGIC ## Parameters

# COMMAND ----------

WIDGETS = {  # name: (default, label)
    "predictions_path": (str(REPO_ROOT / "data" / "demo" / "predictions_notebook"), "Predictions (Parquet)"),
    "label": ("defaulted", "Label column (0/1)"),
    "score": ("default_probability", "Score column (probability)"),
    "threshold": ("0.5", "Decision threshold"),
    "filter": ("", "Row filter (Spark SQL), empty for all rows"),
    "metrics_path": ("", "Write the metrics here (JSON), empty: do not write"),
}


try:
    _dbutils = dbutils  # noqa: F821 - defined in Databricks notebooks
except NameError:
    _dbutils = None
params = notebook_params(WIDGETS, _dbutils)
threshold = float(params["threshold"])
print(json.dumps(params, indent=2))

# COMMAND ----------

try:
    spark  # noqa: B018, F821 - the notebook's session on Databricks
    own_session = False
except NameError:
    spark = build_session({"spark.master": "local[*]", "spark.ui.enabled": False}, app_name="batchscore-evaluate")
    spark.sparkContext.setLogLevel("WARN")
    own_session = True

# COMMAND ----------

# MAGIC %md
# MAGIC ## Read the label and the score
# MAGIC Only the two columns leave Spark (as Arrow): a few bytes a row, fine for many millions of rows.

# COMMAND ----------

predictions = spark.read.parquet(params["predictions_path"])
if params["filter"]:
    predictions = predictions.where(params["filter"])
pairs = to_arrow(predictions.select(params["label"], params["score"]).dropna())  # toArrow is Spark 4.0+
labels = pairs.column(0).to_numpy().astype(bool)
scores = pairs.column(1).to_numpy().astype(np.float64)
print(f"{len(labels):,} labelled rows ({predictions.count() - len(labels):,} with a null label or score left out)")

# COMMAND ----------

# MAGIC %md
# MAGIC ## Metrics

# COMMAND ----------


def binary_metrics(labels: np.ndarray, scores: np.ndarray, *, threshold: float) -> dict[str, float | int]:
    """ROC AUC, log loss and the confusion-matrix rates at `threshold` of 0/1 labels and probabilities."""
    eps = 1e-7  # log loss of a probability of exactly 0 or 1
    p = np.clip(scores, eps, 1 - eps)
    predicted = scores >= threshold
    tp = int(np.sum(predicted & labels))
    fp = int(np.sum(predicted & ~labels))
    fn = int(np.sum(~predicted & labels))
    return {
        "rows": len(labels),
        "positives": int(labels.sum()),
        "positive_rate": float(labels.mean()),
        "mean_score": float(scores.mean()),
        "roc_auc": roc_auc(labels, scores),
        "log_loss": float(-np.mean(np.where(labels, np.log(p), np.log(1 - p)))),
        "threshold": threshold,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "accuracy": float(np.mean(predicted == labels)),
    }


metrics = binary_metrics(labels, scores, threshold=threshold)
print(json.dumps(metrics, indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Save
# MAGIC One JSON row written by Spark, so `metrics_path` may be any path Spark writes (a volume, DBFS,
# MAGIC S3, HDFS, a local folder).

# COMMAND ----------

if params["metrics_path"]:
    row = {**metrics, "predictions_path": params["predictions_path"], "filter": params["filter"]}
    spark.createDataFrame([row]).coalesce(1).write.mode("overwrite").json(params["metrics_path"])
    print(f"metrics written to {params['metrics_path']}")

# COMMAND ----------

if own_session:
    spark.stop()
