"""The local limit: one process, no Spark. pyarrow read -> numpy -> model -> pyarrow write.

Run by the harness as a child process (`python -m bench.bare_tf`) that loads the
model once and then scores on request, so its warm-up is excluded exactly like the
Spark contenders' (model loaded, first call traced, before the timed runs). It reads
one JSON command a line on stdin and answers one `BENCH {json}` line on stdout:

    {"cmd": "load", "model": PATH, "input": NAME}
    {"cmd": "run", "data": DIR, "columns": [...], "stacked": bool, "shape": [...],
     "out": DIR, "batch_size": N}
    {"cmd": "quit"}
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

Predict = Callable[[np.ndarray], np.ndarray]
OUT_SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("prediction", pa.float32())])


def load_predict(model_path: str, input_name: str, signature: str = "serving_default") -> Predict:
    """The signature's concrete function as numpy -> numpy (fixed input signature: no retrace)."""
    import tensorflow as tf

    fn = tf.saved_model.load(model_path).signatures[signature]

    def predict(x: np.ndarray) -> np.ndarray:
        out = fn(**{input_name: tf.constant(x)})
        return next(iter(out.values())).numpy().reshape(-1)  # [batch, 1] -> [batch]

    return predict


def batch_features(batch: pa.RecordBatch, columns: list[str], *, stacked: bool,
                   shape: tuple[int, ...]) -> np.ndarray:
    """One Arrow batch as the model's input tensor."""
    if stacked:  # D scalar columns -> x: [n, D]
        return np.column_stack([batch.column(c).to_numpy(zero_copy_only=False) for c in columns]).astype(
            np.float32, copy=False)
    flat = batch.column(columns[0]).flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, *shape)  # x: [n, *shape]


def score_dataset(predict: Predict, *, data: str, columns: list[str], stacked: bool,
                  shape: tuple[int, ...], out: str, batch_size: int) -> dict[str, Any]:
    """Score every row of the Parquet dataset `data` into `out/part-00000.parquet`."""
    t0 = time.perf_counter()
    dataset = ds.dataset(data, format="parquet")
    os.makedirs(out, exist_ok=True)
    rows = 0
    with pq.ParquetWriter(os.path.join(out, "part-00000.parquet"), OUT_SCHEMA) as writer:
        for batch in dataset.to_batches(columns=["id", *columns]):
            if batch.num_rows == 0:
                continue
            x = batch_features(batch, columns, stacked=stacked, shape=shape)
            preds = np.concatenate([predict(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
            writer.write_batch(pa.record_batch([batch.column("id"), pa.array(preds, pa.float32())],
                                               schema=OUT_SCHEMA))
            rows += batch.num_rows
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "rows": rows}


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write("BENCH " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve() -> int:
    predict: Predict | None = None
    loads = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                _reply({"ok": True})
                return 0
            if cmd["cmd"] == "load":
                t0 = time.perf_counter()
                predict = load_predict(cmd["model"], cmd["input"])
                loads += 1
                _reply({"ok": True, "seconds": time.perf_counter() - t0, "loads": loads})
            elif cmd["cmd"] == "run":
                if predict is None:
                    raise RuntimeError("run before load")
                res = score_dataset(predict, data=cmd["data"], columns=cmd["columns"], stacked=cmd["stacked"],
                                    shape=tuple(cmd["shape"]), out=cmd["out"], batch_size=cmd["batch_size"])
                res.update(ok=True, loads=loads, pid=os.getpid(),
                           max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
                _reply(res)
            else:
                raise ValueError(f"unknown command {cmd['cmd']!r}")
        except Exception as e:  # noqa: BLE001 - report to the harness, keep serving
            _reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(serve())
