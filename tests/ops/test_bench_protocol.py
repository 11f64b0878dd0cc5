"""The benchmark harness's protocol: warm-up rounds, rotation, medians and ratios, checks on outputs.

The contenders here write real Parquet files with pyarrow and report fixed times, so what is
tested is the harness's bookkeeping, not anyone's speed (no test times anything).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench import harness
from bench import run as bench_run
from bench.contenders import Contender
from bench.monitor import WorkerMonitor
from bench.workloads import Workload

ROWS = 50


class FixedTimes(Contender):
    """Writes ROWS rows of id + prediction; reports `seconds[i]` for its i-th run."""

    def __init__(self, key: str, seconds: list[float], calls: list[str], *, rows: int = ROWS,
                 offset: float = 0.0) -> None:
        super().__init__()
        self.key = self.label = key
        self.seconds, self.calls, self.rows, self.offset = seconds, calls, rows, offset

    def run(self, out: str) -> dict[str, Any]:
        i = sum(c == self.key for c in self.calls)
        self.calls.append(self.key)
        os.makedirs(out)
        table = pa.table({"id": pa.array(np.arange(self.rows), pa.int64()),
                          "prediction": pa.array(np.arange(self.rows) / 10 + self.offset, pa.float32())})
        pq.write_table(table, os.path.join(out, "part-0.parquet"))
        return {"seconds": self.seconds[min(i, len(self.seconds) - 1)]}

    def monitor_target(self, jvm_pid: int) -> tuple[str, int]:
        return ("process", os.getpid())


@pytest.fixture
def bench(spark, tmp_path):
    monitor = WorkerMonitor()
    try:
        yield harness.Bench(spark, 0, monitor, str(tmp_path / "out"))
    finally:
        monitor.close()
        spark.sparkContext.environment.pop("BATCHSCORE_BENCH_CONTENDER", None)  # later tests: the usual workers


def _workload(tmp_path: Any) -> Workload:
    return Workload(name="t", title="t", data_path=str(tmp_path), model_path=str(tmp_path), rows=ROWS,
                    input_name="x", columns=("x",), stacked=False, tensor_shape=(1,), batch_size=8)


def test_warmup_rounds_then_timed_rounds_in_rotating_order_and_ratios_of_medians(bench, tmp_path) -> None:
    calls: list[str] = []
    # 2 warm-up rounds, then 3 timed runs: bare TF always 1 s, the lane 9 s cold then 4, 2, 5 s
    bare = FixedTimes("bare_tf", [1.0], calls)
    lane = FixedTimes("arrow_lane", [9.0, 9.0, 4.0, 2.0, 5.0], calls)
    result = bench_run.compare(bench, _workload(tmp_path), [bare, lane], runs=3, warmup_rounds=2)

    # round 1 in the given order; every later round starts one further along
    assert calls == ["bare_tf", "arrow_lane", "arrow_lane", "bare_tf",
                     "bare_tf", "arrow_lane", "arrow_lane", "bare_tf", "bare_tf", "arrow_lane"]
    c = result["contenders"]
    assert len(c["arrow_lane"]["more_warmups"]) == 1 and len(c["arrow_lane"]["runs"]) == 3
    assert c["arrow_lane"]["median_seconds"] == 4.0  # warm-up times stay out of the median
    assert c["arrow_lane"]["median_rows_per_second"] == ROWS / 4.0
    assert c["arrow_lane"]["x_bare_tf"] == 0.25
    assert c["arrow_lane"]["warmup"]["same_ids_as_bare_tf"] is True
    assert c["arrow_lane"]["warmup"]["max_abs_diff_vs_bare_tf"] == 0.0


def test_wrong_row_counts_and_differing_predictions_are_reported(bench, tmp_path) -> None:
    calls: list[str] = []
    bare = FixedTimes("bare_tf", [1.0], calls)
    off = FixedTimes("dataframe_lane", [2.0], calls, offset=0.5)
    short = FixedTimes("arrow_lane", [2.0], calls, rows=ROWS - 1)
    result = bench_run.compare(bench, _workload(tmp_path), [bare, off, short], runs=3, warmup_rounds=1)
    c = result["contenders"]
    assert c["dataframe_lane"]["warmup"]["max_abs_diff_vs_bare_tf"] == pytest.approx(0.5)
    assert c["arrow_lane"]["available"] is False
    assert f"wrote {ROWS - 1} rows, expected {ROWS}" in c["arrow_lane"]["unavailable_reason"]
    assert c["arrow_lane"]["runs"] == []  # not timed once its warm-up failed


def test_idle_worker_pools_are_touched_in_their_own_workers(bench, monkeypatch):
    """Spark stops a pool's workers after a minute unused; the harness touches idle pools between runs."""
    from bench.harness import jvm_pid
    from bench.monitor import spark_python_workers

    monkeypatch.setattr(harness, "POOL_KEEPALIVE_SECONDS", 0.0)
    bench.pool_used = {"bench-test-idle": 0.0, "bench-test-running": 0.0}
    bench.keep_pools_warm("bench-test-running")
    assert bench.pings == 1
    assert bench.pool_used["bench-test-idle"] > 0.0 and bench.pool_used["bench-test-running"] == 0.0
    jvm = jvm_pid(bench.spark)
    assert spark_python_workers(jvm, "bench-test-idle")  # the one-row task ran in that pool's own worker
    assert not spark_python_workers(jvm, "bench-test-running")
