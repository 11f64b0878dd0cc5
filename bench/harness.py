"""The measuring harness: one run of a contender into a fresh directory, watched and checked.

`Bench.measure` times a contender's run (the contender reports its own seconds), records the
peak RSS of the processes that hold the model, the Spark jobs and tasks it started, and checks
the rows it wrote. Each Spark contender runs in Python workers of its own
(`own_python_workers`), kept warm between runs (`Bench.keep_pools_warm`).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return f"{type(e).__name__}: {line.strip()[:300]}"


def count_rows(path: str) -> int:
    import pyarrow.dataset as ds

    return ds.dataset(path, format="parquet").count_rows()


def read_predictions(path: str) -> Any:
    """(ids, predictions) sorted by id."""
    import numpy as np
    import pyarrow.dataset as ds

    t = ds.dataset(path, format="parquet").to_table(columns=["id", "prediction"])
    ids = t.column("id").to_numpy()
    order = np.argsort(ids, kind="stable")
    return ids[order], t.column("prediction").to_numpy().astype("float64")[order]


# Spark stops a pool's idle Python workers once the pool has been unused for a minute
# (PythonWorkerFactory, not configurable): a contender waiting while the others run
# would start cold again. Pools unused for this long are touched before the next run;
# the next run may take 40 s (24k CNN images on the DataFrame lane), so 10 + 40 < 60.
POOL_KEEPALIVE_SECONDS = 10.0


class Bench:
    """Holds the session, the monitor and the output area; runs contenders and records runs."""

    def __init__(self, spark: Any, jvm_pid: int, monitor: Any, out_root: str) -> None:
        self.spark = spark
        self.jvm_pid = jvm_pid
        self.monitor = monitor
        self.out_root = out_root
        self._n = 0
        self.pool_used: dict[str, float] = {}  # Spark contender key -> when its pool last ran
        self.pings = 0

    def keep_pools_warm(self, running: str) -> None:
        """Run one tiny Python task in every other pool idle for POOL_KEEPALIVE_SECONDS (outside any timing)."""
        def touch(batches: Any) -> Any:
            yield from batches

        for key, last in list(self.pool_used.items()):
            if key != running and time.monotonic() - last > POOL_KEEPALIVE_SECONDS:
                own_python_workers(self.spark, key)
                self.spark.range(0, 1, 1, 1).mapInArrow(touch, "id long").collect()
                self.pool_used[key] = time.monotonic()
                self.pings += 1

    def fresh_out(self, tag: str) -> str:
        self._n += 1
        path = os.path.join(self.out_root, f"{self._n:04d}-{tag}")
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(path + "_quarantine", ignore_errors=True)
        return path

    @staticmethod
    def drop_out(path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(path + "_quarantine", ignore_errors=True)

    def measure(self, c: Any, tag: str, *, keep: bool = False) -> dict[str, Any]:
        """One run of `c` into a fresh directory, watched by the RSS monitor."""
        w = c.workload
        out = self.fresh_out(f"{w.name}-{c.key}-{tag}")
        spark_pool = c.monitor_target(self.jvm_pid)[0] == "spark"
        self.keep_pools_warm(c.key)
        own_python_workers(self.spark, c.key)
        load_before = os.getloadavg()[0]
        group = f"bench-{self._n:04d}"
        sc = self.spark.sparkContext
        sc.setJobGroup(group, f"{w.name} {c.key} {tag}")
        self.monitor.begin(*c.monitor_target(self.jvm_pid), pool=c.key)
        try:
            info = c.run(out)
        except Exception as e:  # noqa: BLE001 - a failed contender is reported, not fatal
            self.monitor.end()
            self.drop_out(out)
            return {"error": first_line(e)}
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
            if spark_pool:
                self.pool_used[c.key] = time.monotonic()
        win = self.monitor.end()
        rec: dict[str, Any] = {
            "seconds": round(info.pop("seconds"), 4),
            "rows_per_second": None,
            "peak_worker_rss_mb": win.peak_worker_rss_mb(),
            "workers": win.model_workers(),
            "active_pids": win.active_pids(),
            "rss_mb_by_pid": {str(p): round(v, 1) for p, v in sorted(win.peak_rss_mb.items())},
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        }
        rec["rows_per_second"] = round(w.rows / rec["seconds"], 1) if rec["seconds"] > 0 else None
        rec.update(info)
        if spark_pool:
            rec.update(spark_jobs(sc, group))
        lane = getattr(c, "lane", "")
        got = (rec.get("manifest") or {}).get("lane")
        if lane and got != lane:
            rec["wrong_lane"] = got
        try:
            rec["rows_out"] = count_rows(out)
        except Exception as e:  # noqa: BLE001
            rec["rows_out"] = None
            rec["error"] = f"output unreadable: {first_line(e)}"
        if rec["rows_out"] != w.rows and "error" not in rec:
            rec["error"] = f"wrote {rec['rows_out']} rows, expected {w.rows}"
        if keep:
            rec["out"] = out
        else:
            self.drop_out(out)
        return rec


def own_python_workers(spark: Any, key: str) -> None:
    """Python functions created from now on run in Python workers of their own.

    Spark keys its pools of Python workers by interpreter and environment, and a
    function carries `sc.environment` as it was when the function was created. One
    variable per contender gives each its own workers, as separate jobs would have:
    no contender finds TensorFlow already started (with thread pools sized by
    someone else) or another contender's models in its workers.
    """
    from bench.monitor import POOL_VARIABLE

    spark.sparkContext.environment[POOL_VARIABLE] = key


def spark_jobs(sc: Any, group: str) -> dict[str, Any]:
    """How many Spark jobs and tasks one run started (a pointer to fixed per-run overhead)."""
    try:
        tracker = sc.statusTracker()
        jobs = [tracker.getJobInfo(j) for j in tracker.getJobIdsForGroup(group)]
        stages = [tracker.getStageInfo(s) for j in jobs if j for s in j.stageIds]
        return {"spark_jobs": len(jobs), "spark_tasks": sum(s.numTasks for s in stages if s)}
    except Exception:  # noqa: BLE001 - informative only
        return {}


def jvm_pid(spark: Any) -> int:
    proc = getattr(getattr(spark.sparkContext, "_gateway", None), "proc", None)
    if proc is not None:
        return int(proc.pid)
    import psutil

    for p in psutil.Process().children(recursive=True):
        if "java" in p.name().lower():
            return p.pid
    raise RuntimeError("cannot find the Spark JVM among this process's children")
