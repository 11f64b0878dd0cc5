"""The cold benchmark's peers as one-shot whole commands: start, score, write, exit.

    python -m bench.oneshot bare_tf|predict_batch_udf|pandas_udf|ray --data DIR --model DIR
        --input NAME (--columns f0,f1,...|--tensor COL --shape 64,64,3) --batch-size N --out DIR
        [--master local[2]] [--conf k=v ...] [--remote sc://HOST:PORT] [--loads-dir DIR]

Each reads the same Parquet with its own reader, feeds the same SavedModel in
`--batch-size` chunks and writes `id` + `prediction` as Parquet into `--out`; the
last stdout line is `ONESHOT {json}` (rows written by the driver where known,
model loads). The harness (bench.cold) times the whole process. `--remote`: the Spark
peers run as Spark Connect clients of that server (bench.connect). The batchscore
lanes are not here: they run as users run them (`python -m batchscore score`).

Only numpy and pyarrow are imported at the top: the Ray contender runs this
module from its own virtualenv (bench/.venv-ray), which has no pyspark.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

KINDS = ("bare_tf", "predict_batch_udf", "pandas_udf", "ray")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.oneshot", description=__doc__.split("\n", 1)[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="the signature's input name")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--columns", help="scalar columns stacked into [batch, D], comma-separated")
    g.add_argument("--tensor", help="one array column reshaped to --shape per row")
    p.add_argument("--shape", default="", help="per-row tensor shape for --tensor, e.g. 64,64,3")
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="Spark conf (Spark peers)")
    p.add_argument("--remote", default=None, metavar="sc://HOST:PORT",
                   help="Spark peers: a Spark Connect client of this server instead of a local session")
    p.add_argument("--loads-dir", default=None, help="one file per model load is written here")
    return p.parse_args(argv)


def _columns(a: argparse.Namespace) -> tuple[list[str], bool, tuple[int, ...]]:
    """(columns, stacked, per-row shape)."""
    if a.columns:
        cols = [c for c in a.columns.split(",") if c]
        return cols, True, (len(cols),)
    return [a.tensor], False, tuple(int(d) for d in a.shape.split(",") if d)


def run_bare_tf(a: argparse.Namespace) -> dict[str, Any]:
    """pyarrow read -> numpy -> model (TF default thread pools) -> pyarrow write, one process."""
    from bench.bare_tf import load_predict, score_dataset

    cols, stacked, shape = _columns(a)
    predict = load_predict(a.model, a.input)
    if a.loads_dir:
        _record_load(a.loads_dir)
    res = score_dataset(predict, data=a.data, columns=cols, stacked=stacked, shape=shape,
                        out=a.out, batch_size=a.batch_size)
    return {"rows": res["rows"], "model_loads": 1}


def _record_load(loads_dir: str) -> None:
    os.makedirs(loads_dir, exist_ok=True)
    open(os.path.join(loads_dir, f"{os.getpid()}-{time.time_ns()}"), "w").close()


def _spark(a: argparse.Namespace) -> Any:
    """A SparkSession with the settings bench.cold gives the lanes' generated config, or with
    `--remote` a Spark Connect client session (the server owns the settings)."""
    from pyspark.sql import SparkSession

    if a.remote:
        return SparkSession.builder.remote(a.remote).create()

    from batchscore import conf_dir

    b = SparkSession.builder.appName(f"bench-{a.kind}").master(a.master)
    log4j = os.path.join(conf_dir(), "log4j2.properties")
    if os.path.isfile(log4j):  # the lanes' command quiets the driver the same way
        b = b.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile=file:{log4j}")
    for item in a.conf:
        k, v = item.split("=", 1)
        b = b.config(k, v)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def run_spark_peer(a: argparse.Namespace) -> dict[str, Any]:
    """predict_batch_udf or a plain iterator pandas UDF: read.parquet -> select -> write.parquet."""
    from functools import partial

    from pyspark.sql import functions as F

    from bench.contenders import make_pandas_udf, make_pbu_predict_fn
    from bench.workloads import Workload

    cols, stacked, shape = _columns(a)
    loads_dir = a.loads_dir or os.path.join(a.out + ".loads")
    spark = _spark(a)
    try:
        df = spark.read.parquet(a.data)
        if a.kind == "predict_batch_udf":
            from pyspark.ml.functions import predict_batch_udf
            from pyspark.sql.types import FloatType

            udf = predict_batch_udf(partial(make_pbu_predict_fn, a.model, a.input, loads_dir),
                                    return_type=FloatType(), batch_size=a.batch_size,
                                    input_tensor_shapes=[list(shape)])
            col = udf(F.array(*cols)) if stacked else udf(cols[0])
        else:
            w = Workload(name="oneshot", title="oneshot", data_path=a.data, model_path=a.model, rows=0,
                         input_name=a.input, columns=tuple(cols), stacked=stacked, tensor_shape=shape,
                         batch_size=a.batch_size)
            col = make_pandas_udf(w, loads_dir)(*cols)
        df.select("id", col.alias("prediction")).write.parquet(a.out)
    finally:
        spark.stop()
    return {"model_loads": len(os.listdir(loads_dir)) if os.path.isdir(loads_dir) else None}


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.kind == "bare_tf":
        info = run_bare_tf(a)
    elif a.kind == "ray":
        from bench.oneshot_ray import run_ray

        cols, stacked, shape = _columns(a)
        info = run_ray(data=a.data, model=a.model, input_name=a.input, columns=cols, stacked=stacked,
                       shape=shape, batch_size=a.batch_size, out=a.out, loads_dir=a.loads_dir)
    else:
        info = run_spark_peer(a)
    print("ONESHOT " + json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
