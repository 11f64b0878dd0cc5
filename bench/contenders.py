"""The five contenders, each able to score one workload into a fresh output directory.

- `bare_tf`: one process, no Spark (bench/bare_tf.py, run as a child process).
- `predict_batch_udf`: Spark's `pyspark.ml.functions.predict_batch_udf`.
- `pandas_udf`: a plain iterator pandas UDF with a module-level model cache.
- `dataframe_lane` / `arrow_lane`: this project's `batchscore.run.steps.run_scoring`.

Every `run()` times from the start of the read to the committed write and
returns at least `{"seconds": ...}`. The peers count their model loads with one
file per load, written from inside the worker that loaded.

The functions the Spark workers run live at module level here so that the
workers import them (and so share this module's cache across tasks).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from bench.workloads import Workload

Predict = Callable[[np.ndarray], np.ndarray]

# ---------------------------------------------------------------- worker side

_MODELS: dict[str, Predict] = {}


def record_load(loads_dir: str) -> None:
    """One empty file per model load, named by the loading process."""
    os.makedirs(loads_dir, exist_ok=True)
    open(os.path.join(loads_dir, f"{os.getpid()}-{time.time_ns()}"), "w").close()


def count_loads(loads_dir: str) -> tuple[int, list[int]]:
    """(loads, distinct loading pids) recorded under `loads_dir`."""
    try:
        names = os.listdir(loads_dir)
    except FileNotFoundError:
        return 0, []
    return len(names), sorted({int(n.split("-", 1)[0]) for n in names})


def _load_predict(model_path: str, input_name: str) -> Predict:
    from bench.bare_tf import load_predict

    return load_predict(model_path, input_name)


def make_pbu_predict_fn(model_path: str, input_name: str, loads_dir: str) -> Predict:
    """predict_batch_udf's `make_predict_fn`: load once per worker (Spark caches the result)."""
    predict = _load_predict(model_path, input_name)
    record_load(loads_dir)

    def predict_batch(x: np.ndarray) -> np.ndarray:
        return predict(x.astype(np.float32, copy=False))

    return predict_batch


def cached_predict(model_path: str, input_name: str, loads_dir: str) -> Predict:
    """The pandas UDF's model: loaded on first use in this worker, then reused across tasks."""
    predict = _MODELS.get(model_path)
    if predict is None:
        predict = _load_predict(model_path, input_name)
        record_load(loads_dir)
        _MODELS[model_path] = predict
    return predict


def _chunked(predict: Predict, x: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def make_pandas_udf(w: Workload, loads_dir: str) -> Any:
    """A plain SCALAR_ITER pandas UDF -> float prediction."""
    from pyspark.sql.functions import pandas_udf

    model_path, input_name, bs, shape = w.model_path, w.input_name, w.batch_size, w.tensor_shape
    if w.stacked:
        @pandas_udf("float")  # type: ignore[call-overload]
        def score_stacked(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.Series]:
            predict = cached_predict(model_path, input_name, loads_dir)
            for cols in batches:
                x = np.column_stack([c.to_numpy(np.float32) for c in cols])  # x: [n, D]
                yield pd.Series(_chunked(predict, x, bs))

        return score_stacked

    @pandas_udf("float")  # type: ignore[call-overload]
    def score_tensor(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        predict = cached_predict(model_path, input_name, loads_dir)
        for s in batches:
            x = np.stack(s.to_numpy()).astype(np.float32, copy=False).reshape(-1, *shape)  # x: [n, *shape]
            yield pd.Series(_chunked(predict, x, bs))

    return score_tensor


# ---------------------------------------------------------------- driver side


class Contender:
    """Base: subclasses set `key`, `label`, and implement `prepare` and `run`."""

    key = ""
    label = ""

    def __init__(self) -> None:
        self.available = True
        self.unavailable_reason: str | None = None
        self.workload: Workload | None = None

    def prepare(self, w: Workload) -> None:
        self.workload = w

    def run(self, out: str) -> dict[str, Any]:
        raise NotImplementedError

    def loads(self) -> tuple[int, list[int]] | None:
        """(model loads, pids that loaded) so far for this workload, if the contender counts them."""
        return None

    def monitor_target(self, jvm_pid: int) -> tuple[str, int]:
        return ("spark", jvm_pid)

    def close(self) -> None:
        pass


class BareTF(Contender):
    """The bare TF child process; one per harness run, its model reloaded per workload."""

    key = "bare_tf"
    label = "bare TF (1 process)"

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_tf"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, bufsize=1,
        )
        self._loads = 0

    def _call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("BENCH "):
                reply = json.loads(line[6:])
                if not reply.get("ok"):
                    raise RuntimeError(f"bare TF process: {reply.get('error')}")
                return reply
        raise RuntimeError(f"bare TF process exited (code {self.proc.poll()})")

    def prepare(self, w: Workload) -> None:
        super().prepare(w)
        self._call({"cmd": "load", "model": w.model_path, "input": w.input_name})
        self._loads = 1

    def run(self, out: str) -> dict[str, Any]:
        w = self.workload
        assert w is not None
        r = self._call({"cmd": "run", "data": w.data_path, "columns": list(w.columns), "stacked": w.stacked,
                        "shape": list(w.tensor_shape), "out": out, "batch_size": w.batch_size})
        return {"seconds": r["seconds"], "process_max_rss_mb": round(r["max_rss_mb"], 1)}

    def loads(self) -> tuple[int, list[int]] | None:
        return self._loads, [self.proc.pid]

    def monitor_target(self, jvm_pid: int) -> tuple[str, int]:
        return ("process", self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call({"cmd": "quit"})
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001
                self.proc.kill()


class _SparkPeer(Contender):
    def __init__(self, spark: Any, loads_root: str) -> None:
        super().__init__()
        self.spark = spark
        self.loads_root = loads_root
        self.udf: Any = None

    @property
    def loads_dir(self) -> str:
        assert self.workload is not None
        return os.path.join(self.loads_root, f"{self.key}-{self.workload.name}")

    def loads(self) -> tuple[int, list[int]] | None:
        return count_loads(self.loads_dir)

    def _predict_column(self) -> Any:
        raise NotImplementedError

    def run(self, out: str) -> dict[str, Any]:
        w = self.workload
        assert w is not None
        t0 = time.perf_counter()
        df = self.spark.read.parquet(w.data_path)
        df.select("id", self._predict_column().alias("prediction")).write.parquet(out)
        return {"seconds": time.perf_counter() - t0}


class PredictBatchUDF(_SparkPeer):
    """`predict_batch_udf`, used as its docs show: scalar columns combined with `array()`,
    tensors as a flat array column with `input_tensor_shapes`. Made once per workload, so
    its model cache (keyed by the UDF's uuid) survives across runs."""

    key = "predict_batch_udf"
    label = "Spark predict_batch_udf"

    def prepare(self, w: Workload) -> None:
        from pyspark.ml.functions import predict_batch_udf
        from pyspark.sql.types import FloatType

        super().prepare(w)
        shape = [len(w.columns)] if w.stacked else list(w.tensor_shape)
        self.udf = predict_batch_udf(
            partial(make_pbu_predict_fn, w.model_path, w.input_name, self.loads_dir),
            return_type=FloatType(), batch_size=w.batch_size, input_tensor_shapes=[shape],
        )

    def _predict_column(self) -> Any:
        from pyspark.sql import functions as F

        w = self.workload
        assert w is not None
        return self.udf(F.array(*w.columns)) if w.stacked else self.udf(w.columns[0])


class PandasIterUDF(_SparkPeer):
    key = "pandas_udf"
    label = "iterator pandas UDF"

    def prepare(self, w: Workload) -> None:
        super().prepare(w)
        self.udf = make_pandas_udf(w, self.loads_dir)

    def _predict_column(self) -> Any:
        w = self.workload
        assert w is not None
        return self.udf(*w.columns)


class ProjectLane(Contender):
    """`batchscore.run.steps.run_scoring` with `input.lane` forced; loads and lane come from the manifest."""

    lane = ""

    def __init__(self, spark: Any) -> None:
        super().__init__()
        self.spark = spark
        self._loads = 0

    def prepare(self, w: Workload) -> None:
        super().prepare(w)
        self._loads = 0

    def config(self, out: str) -> Any:  # a JobSpec
        from batchscore.config.loader import load_config

        w = self.workload
        assert w is not None
        sets = [
            f"input.path={w.data_path}", f"input.lane={self.lane}", f"model.path={w.model_path}",
            f"model.batch_size={w.batch_size}", f"output.path={out}", "output.keep_columns=[id]",
            "output.rename={output_0: prediction}",
        ]
        if w.stacked:
            sets.append(f"input.columns={{{w.input_name}: [{', '.join(w.columns)}]}}")
        return load_config(None, sets)

    def run(self, out: str) -> dict[str, Any]:
        from batchscore.run.steps import run_scoring

        cfg = self.config(out)
        t0 = time.perf_counter()
        manifest = run_scoring(self.spark, cfg).to_dict()
        seconds = time.perf_counter() - t0
        self._loads += int(manifest.get("model_loads") or 0)
        keep = ("lane", "rows_in", "rows_scored", "rows_quarantined", "seconds_scoring", "seconds_total",
                "rows_per_second", "model_loads", "python_workers", "peak_worker_rss_mb", "model_calls",
                "max_rows_per_call")
        return {"seconds": seconds, "manifest": {k: manifest.get(k) for k in keep}}

    def loads(self) -> tuple[int, list[int]] | None:
        return self._loads, []  # the pids come from the monitor (manifest counts are per run)


class DataFrameLane(ProjectLane):
    key = "dataframe_lane"
    label = "batchscore DataFrame lane"
    lane = "dataframe"


class ArrowLane(ProjectLane):
    key = "arrow_lane"
    label = "batchscore Arrow lane"
    lane = "arrow"
