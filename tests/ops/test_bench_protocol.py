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


def _attempt(key: str, rows: int, seconds: float, *, ok: bool = True, loads: int | None = 0,
             problems: list[str] | None = None) -> dict[str, Any]:
    return {"key": key, "rows": rows, "seconds": seconds, "ok": ok, "accepted": ok, "model_loads": loads,
            "problems": problems or [], "contention": {"contended": False}, "peak_worker_rss_mb": None}


def test_connect_targets_are_computed_from_the_medians_fits_and_model_loads() -> None:
    """bench.connect's figures (no Spark): fixed cost = our fit's intercept, speedups = the other's median
    over ours at the target point, model loads of every run after the first; a failed run is counted as such."""
    from bench.coldstats import summarize
    from bench.connect_report import BARE, OURS, PBU, later_loads, markdown, targets

    m = 1_000_000
    seconds = {BARE: {m: [5.0, 5.2, 4.9], 2 * m: [6.0, 6.0, 6.4]},  # bare TF medians 5.0 and 6.0 s
               OURS: {m: [3.5, 3.4, 3.6], 2 * m: [4.0, 4.2, 3.9]},  # ours 3.5 and 4.0 s: 3.0 s + 0.5 s per 1M
               PBU: {m: [7.0, 7.0, 7.0], 2 * m: [6.0, 7.0, 8.0]}}  # 7.0 s at 2M: 1.75x ours
    slots: list[dict[str, Any]] = [{"key": k, "attempts": [_attempt(k, rows, s)]} for k, pts in seconds.items()
             for rows, runs in pts.items() for s in runs]
    slots.append({"key": OURS, "attempts": [_attempt(OURS, 2 * m, 99.0, ok=False, loads=None,
                                                     problems=["exit 1: AttributeError: sparkContext"])]})
    summary = summarize(slots, contenders=[BARE, OURS, PBU], points=(m, 2 * m), ratio_rows=(2 * m,), unit=m)
    assert summary[OURS]["points"][str(2 * m)]["median_seconds"] == 4.0  # the failed run is not in the median
    assert summary[OURS]["failed_runs"] == 1 and "sparkContext" in summary[OURS]["failures"][0]

    warmup = _attempt(OURS, m, 20.0, loads=2)
    loads = later_loads([warmup, *(a for s in slots for a in s["attempts"])])
    assert loads == [0] * 6  # the warm-up loaded the model; the six successful timed runs did not
    fixed, vs_bare, vs_pbu, no_reload = targets(summary, target_rows=2 * m, loads=loads)
    assert "fixed cost" in fixed["target"] and fixed["value"] == pytest.approx(3.0) and fixed["met"] is True
    assert "bare TF" in vs_bare["target"] and vs_bare["value"] == pytest.approx(1.5) and vs_bare["met"] is True
    assert "predict_batch_udf" in vs_pbu["target"] and vs_pbu["value"] == pytest.approx(1.75) and vs_pbu["met"]
    assert no_reload["value"] == loads and no_reload["met"] is True
    slow = {**summary, OURS: {**summary[OURS], "fit": {**summary[OURS]["fit"], "intercept": 3.2},
                              "points": {str(2 * m): {"median_seconds": 6.5}}}}
    assert [t["met"] for t in targets(slow, target_rows=2 * m, loads=loads)] == [False, False, False, True]

    slower = targets(summary, target_rows=2 * m, loads=[0, 1, 0])
    assert slower[3]["met"] is False  # a later run that loaded the model again
    assert targets(summary, target_rows=2 * m, loads=[])[3]["met"] is None  # no later run: n/a
    no_ours = {k: v for k, v in summary.items() if k != OURS}
    assert [t["met"] for t in targets(no_ours, target_rows=2 * m, loads=[])] == [None] * 4

    res = {"settings": {"name": "t", "points": [m, 2 * m], "runs": 3, "rows_per_file": 250_000, "batch_size": 10_000,
                        "unit": m, "ratio_rows": [2 * m], "target_rows": 2 * m},
           "machine": {}, "started_at": "now", "server": {"master": "local[2]", "url": "sc://127.0.0.1:1"},
           "summary": summary, "slots": [], "warmups": [warmup], "ratios": {"vs_predict_batch_udf": 1.75},
           "targets": targets(summary, target_rows=2 * m, loads=loads)}
    text = markdown(res)
    assert "1 failed run(s)" in text and "exit 1: AttributeError: sparkContext" in text
    assert text.count("**met**") == 4
