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
- `python_packed_array`: `id` + `array(f0..f31)`, what the DataFrame lane sends;
- `python_packed_rows_bound`, `python_33_rows_bound`: those two with Spark's per-row
  Arrow byte check off and the batch bounded by rows instead, as the DataFrame lane's job
  sets it (`batchscore.run.lane_choice.arrow_batch_conf`);
- `packed_arrow_udf`: the same array through Spark 4.1's iterator `arrow_udf` (a scalar
  UDF: `id` stays in the JVM, only the array goes to Python, pyarrow arrays in and out);
- `packed_pandas_udf`: the same array through an iterator `pandas_udf` (what
  `predict_batch_udf` builds on: pandas Series of per-row numpy arrays).

The `python_*` variants use `mapInArrow`; with the two UDF variants the table compares
Spark's three Python paths for the DataFrame lane's input.

Median of 5 runs each after one warm-up, in rotating order, same session settings as
`bench.run`. Writes bench/results/floor.{json,md}.

`--only VARIANT --jfr` runs one variant with the JVM under Java Flight Recorder and
writes where its task threads spend their time (the timed rounds' stack samples) to
bench/results/floor-jfr-<variant>.md (`make bench-jvm-profile`).
"""
from __future__ import annotations

import argparse
import datetime as dt
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
import pandas as pd
import pyarrow as pa

from bench import jfr
from bench.harness import jvm_pid
from bench.run import BENCH_DIR, SPARK_CONF, rotated
from bench.workloads import mlp_workload


def _constant_prediction(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for b in batches:
        yield pa.record_batch([b.column("id"), pa.array(np.zeros(b.num_rows, np.float32))],
                              names=["id", "prediction"])


def _zeros_arrow(arrays: Iterator[pa.Array]) -> Iterator[pa.Array]:
    for a in arrays:
        yield pa.array(np.zeros(len(a), np.float32))


def _zeros_pandas(series: Iterator[pd.Series]) -> Iterator[pd.Series]:
    for s in series:
        yield pd.Series(np.zeros(len(s), np.float32))


def variants(df: Any, features: list[str]) -> dict[str, Callable[[], Any]]:
    from pyspark.sql import functions as F
    from pyspark.sql.functions import arrow_udf, pandas_udf

    schema = "id long, prediction float"
    # pyspark's stubs lack the overload for the type-hinted form (the UDF type inferred from the hints),
    # the form pyspark prefers (passing functionType warns)
    zeros_arrow = arrow_udf(_zeros_arrow, "float")  # type: ignore[call-overload]
    zeros_pandas = pandas_udf(_zeros_pandas, "float")  # type: ignore[call-overload]
    vs = {
        "jvm_only": lambda: df.select("id", (F.col(features[0]) * 0).cast("float").alias("prediction")),
        "python_id_only": lambda: df.select("id").mapInArrow(_constant_prediction, schema),
        "python_33_columns": lambda: df.select("id", *features).mapInArrow(_constant_prediction, schema),
        "python_packed_array": lambda: df.select("id", F.array(*features).alias("x"))
        .mapInArrow(_constant_prediction, schema),
        "packed_arrow_udf": lambda: df.select("id", zeros_arrow(F.array(*features)).alias("prediction")),
        "packed_pandas_udf": lambda: df.select("id", zeros_pandas(F.array(*features)).alias("prediction")),
    }
    vs.update({name: vs[base] for name, base in ROWS_BOUND.items()})  # same query, written under other confs
    return vs


VARIANTS = ("jvm_only", "python_id_only", "python_33_columns", "python_packed_array", "python_packed_rows_bound",
            "python_33_rows_bound", "packed_arrow_udf", "packed_pandas_udf")
ROWS_BOUND = {"python_packed_rows_bound": "python_packed_array", "python_33_rows_bound": "python_33_columns"}
# the row width the DataFrame lane works out for these rows (id + 32 float32)
ROW_BYTES = 8 + 32 * 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=VARIANTS, help="run one variant (results are not written to floor.*)")
    p.add_argument("--jfr", action="store_true", help="with --only: profile the JVM with Java Flight Recorder")
    args = p.parse_args(argv)
    if args.jfr and not args.only:
        p.error("--jfr needs --only VARIANT: one variant per recording")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from batchscore.run.lane_choice import arrow_batch_conf, temporary_conf
    from batchscore.session.builder import LOG_CONFIG, build_session

    work = str(BENCH_DIR / "work")
    w = mlp_workload(work, rows=1_000_000, rows_per_file=125_000, batch_size=4096)
    out_root = tempfile.mkdtemp(prefix="floor-", dir=work)
    conf = dict(SPARK_CONF)
    recording = os.path.join(out_root, "floor.jfr")
    if args.jfr:
        conf["spark.driver.extraJavaOptions"] = (f"-Dlog4j2.configurationFile=file:{LOG_CONFIG} "
                                                 + jfr.JAVA_OPTIONS)
    spark = build_session(conf, app_name="batchscore-bench-floor")
    spark.sparkContext.setLogLevel("WARN")
    df = spark.read.parquet(w.data_path)
    runs: dict[str, list[float]] = {}
    timed_from = None
    try:
        vs = variants(df, list(w.columns))
        names = [args.only] if args.only else list(vs)
        for r in range(6):  # round 0 is the warm-up
            if r == 1:
                timed_from = dt.datetime.now(dt.timezone.utc)
            for name in rotated(names, r):
                out = os.path.join(out_root, f"{name}-{r}")
                conf_for = arrow_batch_conf(spark, ROW_BYTES) if name in ROWS_BOUND else {}
                with temporary_conf(spark, conf_for):
                    t0 = time.perf_counter()
                    vs[name]().write.parquet(out)
                    seconds = time.perf_counter() - t0
                shutil.rmtree(out)
                if r:
                    runs.setdefault(name, []).append(seconds)
                print(f"[floor] {name} round {r}: {seconds:.2f} s", file=sys.stderr, flush=True)
        if args.jfr:
            jfr.dump(jvm_pid(spark), recording)
            _write_profile(args.only, recording, timed_from, runs[args.only])
    finally:
        spark.stop()
        shutil.rmtree(out_root, ignore_errors=True)
    medians = {k: round(statistics.median(v), 3) for k, v in runs.items()}
    if args.only:
        print(f"{args.only}: median {medians[args.only]:.2f} s")
        return 0
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


def _write_profile(variant: str, recording: str, since: dt.datetime | None, seconds: list[float]) -> None:
    stacks = jfr.thread_samples(recording, "Executor task", since)
    lines = [f"# Where Spark's task threads spend `{variant}` (`python -m bench.floor --only {variant} --jfr`)", "",
             "1,000,000 rows of `id` + 32 float32 columns (the MLP benchmark data), `local[2]`; Java Flight "
             "Recorder (`settings=profile`) over the 5 timed rounds "
             f"(median {statistics.median(seconds):.2f} s), after one warm-up round.", ""]
    lines += jfr.markdown(stacks)
    path = BENCH_DIR / "results" / f"floor-jfr-{variant}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
