"""What the scoring tasks did: one JSON row per task, merged on the driver.

Every scoring task of both lanes ends its output with one row whose `bs__stats` column
holds the task's counters as JSON (null in every other row). The driver observes those
rows (`Observation` over `collect_list`) and drops them before its action: Spark keeps the
observed metrics of each task's accepted attempt only, so every task counts exactly once
under retries and speculation, on classic and Spark Connect sessions alike.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from functools import reduce
from typing import Any

from batchscore.core.columns import STATS_COLUMN

_MAX_KEYS = {"max_call_rows", "max_batch_rows", "last_task_end_at", "pipeline_stages"}
_MIN_KEYS = {"first_task_at"}
_DICT_MAX_KEYS = {"peak_rss_mb", "worker_started_at", "daemon_tf_import_s", "daemon_prestarted", "daemon_launched_at",
                  "host_loads"}
_DICT_TEXT_KEYS = {"devices"}  # per worker: the devices its tasks used, "; "-joined


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two tasks' (or runs') stats as one; neither argument is changed.

    Counters are summed; `max_call_rows`, the last task's end and per-worker peak RSS,
    start time and daemon import (the same in every task of a worker) take the max, the
    first task's start the min; per-worker model loads and seconds are summed per worker,
    per-worker devices joined (a worker moved between GPUs lists each once), and a model
    host's loads (`host_loads`, reported by every task it served) take the max per host.
    """
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for k, v in b.items():
        if isinstance(v, dict):
            d = out.setdefault(k, {})
            for wk, wv in v.items():
                if k in _DICT_TEXT_KEYS:
                    d[wk] = "; ".join(sorted({*d.get(wk, "").split("; "), *wv.split("; ")} - {""}))
                else:
                    d[wk] = max(d.get(wk, 0), wv) if k in _DICT_MAX_KEYS else d.get(wk, 0) + wv
        elif k in _MAX_KEYS:
            out[k] = max(out.get(k, 0), v)
        elif k in _MIN_KEYS:
            out[k] = min(out.get(k, v), v)
        else:
            out[k] = out.get(k, 0) + v
    return out


def merged_stats(each: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Many tasks' stats as one (`merge_stats` over all of them; {} for none)."""
    return reduce(merge_stats, each, {})


def stats_json(stats: dict[str, Any]) -> str:
    """A task's stats as the text of its stats row."""
    return json.dumps(stats, separators=(",", ":"))


def stats_of_rows(texts: Iterable[str | None]) -> dict[str, Any]:
    """The merged stats of the tasks' stats rows (their JSON texts; nulls skipped)."""
    return merged_stats(json.loads(t) for t in texts if t)


class TaskStats:
    """The counters of the scoring tasks behind one DataFrame, readable once an action on it ended.

    `observe(scored)` returns the DataFrame without its stats rows (and column); `value` is
    their merged counters (`rows`, `rows_bad`, `model_calls`, `max_call_rows`, `loads` per
    worker process, ...). Only tasks that ran to their end report: an action that reads every
    row (a write, `count()` over the scored columns, `collect()`) reports all of them.
    """

    def __init__(self) -> None:
        self._observation: Any = None

    def observe(self, scored: Any) -> Any:
        """`scored` (carrying `bs__stats`) observed by this object, its stats rows and column dropped."""
        from pyspark.sql import Observation  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used
        from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra: imported where Spark is used

        if self._observation is not None:
            raise ValueError("a TaskStats observes one DataFrame; make one per score_dataframe call")
        self._observation = Observation(f"bs_stats_{uuid.uuid4().hex[:12]}")
        # one string, not the list itself: Spark 3.5's Observation hands a list back as a JVM object.
        # A stats row's JSON has no newline (stats_json), so the newline joins them unambiguously.
        joined = F.concat_ws("\n", F.collect_list(STATS_COLUMN)).alias(STATS_COLUMN)
        observed = scored.observe(self._observation, joined)
        return observed.filter(F.col(STATS_COLUMN).isNull()).drop(STATS_COLUMN)

    @property
    def value(self) -> dict[str, Any]:
        """The merged counters; waits for the first action on the observed DataFrame to end."""
        if self._observation is None:
            return {}
        return stats_of_rows((self._observation.get.get(STATS_COLUMN) or "").split("\n"))


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
