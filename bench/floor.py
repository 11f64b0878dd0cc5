"""What Spark's Python data path costs with no model at all: `python -m bench.floor`.

The DataFrame lane, `predict_batch_udf` and every other Spark Python UDF get their
input from the JVM, which turns each row into Arrow column by column. This measures
that floor on the MLP benchmark data (1M rows of `id` + 32 float32 columns): the same
`read.parquet -> select -> mapInArrow -> write.parquet` shape as the lanes, with a
Python function that returns `id` and a constant instead of scoring. Variants:

- `jvm_only`: no Python at all (`id`, `f0 * 0` written by the JVM);
- `python_id_only`: only `id` goes to Python and back (the round trip itself);
- `python_33_columns`: `id` + the 32 features as separate columns (as the issue's
  identity mapInArrow);
- `python_packed_array`: `id` + `array(f0..f31)`, what the DataFrame lane sends.

Median of 5 runs each after one warm-up, in rotating order, same session settings as
`bench.run`. Writes bench/results/floor.{json,md}.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from bench.run import BENCH_DIR, SPARK_CONF, rotated
from bench.workloads import mlp_workload


def _constant_prediction(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for b in batches:
        yield pa.record_batch([b.column("id"), pa.array(np.zeros(b.num_rows, np.float32))],
                              names=["id", "prediction"])


def variants(df: Any, features: list[str]) -> dict[str, Callable[[], Any]]:
    from pyspark.sql import functions as F  # noqa: N812, PLC0415

    schema = "id long, prediction float"
    return {
        "jvm_only": lambda: df.select("id", (F.col(features[0]) * 0).cast("float").alias("prediction")),
        "python_id_only": lambda: df.select("id").mapInArrow(_constant_prediction, schema),
        "python_33_columns": lambda: df.select("id", *features).mapInArrow(_constant_prediction, schema),
        "python_packed_array": lambda: df.select("id", F.array(*features).alias("x"))
        .mapInArrow(_constant_prediction, schema),
    }


def main() -> int:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from jobs.session import build_session  # noqa: PLC0415

    work = str(BENCH_DIR / "work")
    w = mlp_workload(work, rows=1_000_000, rows_per_file=125_000, batch_size=4096)
    spark = build_session(dict(SPARK_CONF), app_name="batchscore-bench-floor")
    spark.sparkContext.setLogLevel("WARN")
    df = spark.read.parquet(w.data_path)
    runs: dict[str, list[float]] = {}
    out_root = tempfile.mkdtemp(prefix="floor-", dir=work)
    try:
        vs = variants(df, list(w.columns))
        names = list(vs)
        for r in range(6):  # round 0 is the warm-up
            for name in rotated(names, r):
                out = os.path.join(out_root, f"{name}-{r}")
                t0 = time.perf_counter()
                vs[name]().write.parquet(out)
                seconds = time.perf_counter() - t0
                shutil.rmtree(out)
                if r:
                    runs.setdefault(name, []).append(seconds)
                print(f"[floor] {name} round {r}: {seconds:.2f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
        spark.stop()
    medians = {k: round(statistics.median(v), 3) for k, v in runs.items()}
    result = {"rows": w.rows, "data": w.data_path, "spark_conf": SPARK_CONF, "runs": runs, "median_seconds": medians,
              "load_average": os.getloadavg()}
    res_dir = BENCH_DIR / "results"
    res_dir.mkdir(exist_ok=True)
    (res_dir / "floor.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Spark's Python data path with no model (`python -m bench.floor`)", "",
             f"{w.rows:,} rows of `id` + 32 float32 columns, `local[2]`, median of 5 runs; the Python "
             "function returns `id` and a constant.", "",
             "| variant | seconds (median) | rows/s |", "|---|---:|---:|"]
    lines += [f"| `{k}` | {v:.2f} | {w.rows / v:,.0f} |" for k, v in medians.items()]
    (res_dir / "floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
