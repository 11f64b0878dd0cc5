# Databricks notebook source
# MAGIC %md
# MAGIC # Evaluate scored output against labels (batchscore)
# MAGIC
# MAGIC Reads the predictions a scoring run wrote (`notebooks/score.py`, `batchscore score`; through
# MAGIC the run's `_manifest.json`), with the label kept beside the score (`output.keep_columns`),
# MAGIC and computes on Spark ROC AUC, PR AUC, log loss, the positive rate, calibration bins and, at
# MAGIC a threshold, precision, recall and accuracy (`batchscore.evaluation.metrics.evaluate`, the code of
# MAGIC `batchscore evaluate`), for all rows and per slice of a column. The metrics are shown and,
# MAGIC when `metrics_path` is set, written there as one JSON row.
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

from batchscore.session.widgets import notebook_params  # noqa: E402
from batchscore.session.builder import build_session  # noqa: E402
from batchscore.evaluation.run import read_predictions, summary  # noqa: E402
from batchscore.evaluation.metrics import evaluate  # noqa: E402
from batchscore.core.session_kind import is_connect  # noqa: E402

# COMMAND ----------

# MAGIC %md
# MAGIC ## Parameters

# COMMAND ----------

WIDGETS = {  # name: (default, label)
    "predictions_path": (str(REPO_ROOT / "data" / "demo" / "predictions_notebook"), "Predictions (a scoring run's output)"),
    "label": ("defaulted", "Label column (0/1)"),
    "score": ("default_probability", "Score column (probability)"),
    "threshold": ("0.5", "Decision threshold"),
    "filter": ("", "Row filter (Spark SQL), empty for all rows"),
    "slice": ("", "Also per value of this column (its 10 most frequent), empty: none"),
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
    if not is_connect(spark):  # SPARK_REMOTE: a Spark Connect session
        spark.sparkContext.setLogLevel("WARN")
    own_session = True

# COMMAND ----------

# MAGIC %md
# MAGIC ## Read the predictions and compute the metrics
# MAGIC Everything is computed on Spark (exact AUCs from counts per distinct score): no table of
# MAGIC rows comes to the driver. Rows with a null label or score are counted and left out.

# COMMAND ----------

predictions = read_predictions(spark, params["predictions_path"]).df
if params["filter"]:
    predictions = predictions.where(params["filter"])
evaluation = evaluate(predictions, label=params["label"], score=params["score"], threshold=threshold,
                      slice_column=params["slice"] or None)
print(summary(evaluation))
metrics = {**evaluation.metrics, "threshold": threshold}
print(json.dumps(metrics, indent=2))
print(json.dumps(evaluation.overall.calibration, indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Save
# MAGIC One JSON row written by Spark, so `metrics_path` may be any path Spark writes (a volume, DBFS,
# MAGIC S3, HDFS, a local folder).

# COMMAND ----------

if params["metrics_path"]:
    row = {**metrics, "predictions_path": params["predictions_path"], "filter": params["filter"]}
    # one JSON line as text: a metric that is undefined (None) leaves no column type to infer
    spark.createDataFrame([(json.dumps(row),)], "value string").coalesce(1).write.mode("overwrite").text(
        params["metrics_path"])
    print(f"metrics written to {params['metrics_path']}")

# COMMAND ----------

if own_session:
    spark.stop()
