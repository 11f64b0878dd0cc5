# Databricks notebook source
# MAGIC %md
# MAGIC # Score a dataset with a TensorFlow model (batchscore)
# MAGIC
# MAGIC Runs the same scoring job as `batchscore score` through the package: reads the job
# MAGIC config, applies the widgets as `--set`-style overrides, scores, and shows the run
# MAGIC manifest and a sample of the predictions. `notebooks/evaluate.py` then measures them.
# MAGIC
# MAGIC * **On Databricks**: open this file from a Git folder holding the repository (or install
# MAGIC   the `batchscore` wheel on the cluster). Any access mode works (Dedicated, Standard or
# MAGIC   serverless: the last two hand the notebook a Spark Connect session); see
# MAGIC   `conf/databricks.yaml` for the paths and the cluster's Spark config. Set the widgets, then *Run all*.
# MAGIC * **Anywhere else**: `python notebooks/score.py` from the repository root after
# MAGIC   `make demo`. The widgets keep their defaults, or take environment variables
# MAGIC   `BATCHSCORE_WIDGET_<NAME>` (e.g. `BATCHSCORE_WIDGET_OUTPUT_PATH`).

# COMMAND ----------

# Make the package importable: the repository root is the notebook folder's parent.
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
from batchscore.config.loader import load_config  # noqa: E402
from batchscore.jobs.score import summary  # noqa: E402
from batchscore.session.builder import ENGINE_DEFAULTS, build_session  # noqa: E402
from batchscore.run.steps import run_scoring  # noqa: E402
from batchscore.run.cluster import master, spark_conf  # noqa: E402
from batchscore.core.session_kind import is_connect  # noqa: E402

# COMMAND ----------

# MAGIC %md
# MAGIC ## Parameters
# MAGIC Empty `input_path`, `model_path` or `output_path` keeps the config's value; `filter` is a
# MAGIC Spark SQL predicate on the input (e.g. `as_of_date = '2026-06-30'`), empty for all rows.

# COMMAND ----------

WIDGETS = {  # name: (default, label)
    "config": (str(REPO_ROOT / "conf" / "demo.yaml"), "Job config (YAML)"),
    "input_path": (str(REPO_ROOT / "data" / "demo" / "features"), "Input path"),
    "model_path": (str(REPO_ROOT / "data" / "demo" / "model"), "Model path (SavedModel)"),
    "output_path": (str(REPO_ROOT / "data" / "demo" / "predictions_notebook"), "Output path"),
    "filter": ("", "Input filter (Spark SQL)"),
}


try:
    _dbutils = dbutils  # noqa: F821 - defined in Databricks notebooks
except NameError:
    _dbutils = None
params = notebook_params(WIDGETS, _dbutils)
print(json.dumps(params, indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Config
# MAGIC The widgets become overrides exactly like `--set input.path=...` on the command line. Values
# MAGIC are passed as quoted YAML strings, so a path that looks like a date or a number stays a path.

# COMMAND ----------

OVERRIDE_KEYS = {"input_path": "input.path", "model_path": "model.path", "output_path": "output.path",
                 "filter": "input.filter"}
overrides = [f"{key}={json.dumps(params[name])}" for name, key in OVERRIDE_KEYS.items() if params[name]]
cfg = load_config(params["config"], overrides)
print(json.dumps(cfg.model_dump(include={"input", "model", "output", "quarantine"}), indent=2))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Session
# MAGIC On Databricks the cluster's session is used: executor settings come from the cluster's Spark
# MAGIC config, and only session-level SQL settings from the config's `spark:` section are applied.
# MAGIC Elsewhere the session is built from the `spark:` section, as `batchscore score` does.

# COMMAND ----------

try:
    spark  # noqa: B018, F821 - the notebook's session on Databricks
    own_session = False
except NameError:
    spark = build_session(cfg.spark, app_name="batchscore-notebook")  # SPARK_REMOTE: a Spark Connect session
    if not is_connect(spark):
        spark.sparkContext.setLogLevel("WARN")
    own_session = True

if not own_session:
    for key, value in {**ENGINE_DEFAULTS, **cfg.spark}.items():
        if key.startswith("spark.sql."):
            spark.conf.set(key, str(value).lower() if isinstance(value, bool) else str(value))
    if spark_conf(spark).get("spark.python.worker.reuse", "true").lower() != "true":
        print("warning: spark.python.worker.reuse is off on this cluster: the model is loaded for every task")
print(f"Spark {spark.version}, master {master(spark)}" + (" (Spark Connect)" if is_connect(spark) else ""))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Score

# COMMAND ----------

manifest = run_scoring(spark, cfg)
print(summary(manifest))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Run manifest
# MAGIC Also written as `_manifest.json` in the output directory.

# COMMAND ----------

print(manifest.to_json().decode())

# COMMAND ----------

# MAGIC %md
# MAGIC ## Predictions (sample)

# COMMAND ----------

predictions = spark.read.parquet(manifest.output.path)
sample = predictions.limit(20)
try:
    display(sample)  # noqa: F821 - Databricks
except NameError:
    sample.show(truncate=False)

if manifest.rows_quarantined:
    print(f"{manifest.rows_quarantined:,} rows quarantined, by reason: {manifest.quarantine_reasons}")
    print(f"  see {manifest.output.quarantine_path}")

# COMMAND ----------

# Outside Databricks this process owns its session; on Databricks the cluster keeps it.
if own_session:
    spark.stop()
