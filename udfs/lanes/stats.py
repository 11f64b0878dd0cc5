"""A Spark accumulator that sums what the scoring tasks report."""
from __future__ import annotations

from typing import Any

from pyspark.accumulators import AccumulatorParam

_MAX_KEYS = {"max_call_rows", "max_batch_rows", "last_task_end_at", "pipeline_stages"}
_MIN_KEYS = {"first_task_at"}
_DICT_MAX_KEYS = {"peak_rss_mb", "worker_started_at", "daemon_tf_import_s", "daemon_prestarted", "daemon_launched_at",
                  "host_loads"}
_DICT_TEXT_KEYS = {"devices"}  # per worker: the devices its tasks used, "; "-joined


class ScoringStatsParam(AccumulatorParam):
    """Counters are summed; `max_call_rows`, the last task's end and per-worker peak RSS,
    start time and daemon import (the same in every task of a worker) take the max, the
    first task's start the min; per-worker model loads and seconds are summed per worker,
    per-worker devices joined (a worker moved between GPUs lists each once), and a model
    host's loads (`host_loads`, reported by every task it served) take the max per host."""

    def zero(self, value: dict[str, Any]) -> dict[str, Any]:
        return {}

    def addInPlace(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for k, v in b.items():
            if isinstance(v, dict):
                d = a.setdefault(k, {})
                for wk, wv in v.items():
                    if k in _DICT_TEXT_KEYS:
                        d[wk] = "; ".join(sorted({*d.get(wk, "").split("; "), *wv.split("; ")} - {""}))
                    else:
                        d[wk] = max(d.get(wk, 0), wv) if k in _DICT_MAX_KEYS else d.get(wk, 0) + wv
            elif k in _MAX_KEYS:
                a[k] = max(a.get(k, 0), v)
            elif k in _MIN_KEYS:
                a[k] = min(a.get(k, v), v)
            else:
                a[k] = a.get(k, 0) + v
        return a


def make_stats_accumulator(sc: Any) -> Any:
    return sc.accumulator({}, ScoringStatsParam())


def model_loads(stats: dict[str, Any]) -> int:
    """Models loaded in the run: by the workers, and by the model hosts (`model.sharing: executor`)."""
    return int(sum(stats.get("loads", {}).values()) + sum(stats.get("host_loads", {}).values()))


def model_loads_by_executor(stats: dict[str, Any]) -> dict[str, int]:
    """The model hosts' loads per Spark executor id (a host id is `<executor id>/<incarnation>`)."""
    out: dict[str, int] = {}
    for host, n in sorted(stats.get("host_loads", {}).items()):
        executor = host.rsplit("/", 1)[0]
        out[executor] = out.get(executor, 0) + int(n)
    return out
