"""Every fixed choice of a config key or API argument, declared once as a Literal.

Both the driver-side config (`batchscore.config`) and the code that runs in Spark's
Python workers (`udfs/`, which may import only `batchscore.core`) take their choices
from here; the tuples are derived from the Literals, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Literal, get_args

InputFormat = Literal["parquet", "delta", "orc", "table"]
Lane = Literal["auto", "dataframe", "arrow"]
Distribution = Literal["broadcast", "files", "direct"]
Sharing = Literal["worker", "executor"]  # one model copy per Python worker, or one host per executor
Placement = Literal["replicate", "split"]  # the whole model per device, or layer groups over the devices
OutputFormat = Literal["parquet", "delta"]
OutputMode = Literal["error", "overwrite", "append", "overwrite_partitions"]
OnBadRows = Literal["quarantine", "fail"]  # the job's `quarantine.on_bad_rows` and the engine's
ApiBadRows = Literal["keep", "drop", "fail"]  # score_dataframe(bad_rows=...)
UdfBadRows = Literal["null", "fail"]  # predict_udf(bad_rows=...)
Task = Literal["binary", "multiclass", "regression"]
BuiltInModel = Literal["mlp", "cnn"]
Strategy = Literal["default", "mirrored", "multi_worker"]
Reader = Literal["arrow", "petastorm"]

DISTRIBUTIONS: tuple[str, ...] = get_args(Distribution)
SHARINGS: tuple[str, ...] = get_args(Sharing)
PLACEMENTS: tuple[str, ...] = get_args(Placement)
ON_BAD_ROWS: tuple[str, ...] = get_args(OnBadRows)
API_BAD_ROWS: tuple[str, ...] = get_args(ApiBadRows)
UDF_BAD_ROWS: tuple[str, ...] = get_args(UdfBadRows)
TASKS: tuple[Task, ...] = get_args(Task)
BUILT_IN_MODELS: tuple[str, ...] = get_args(BuiltInModel)
