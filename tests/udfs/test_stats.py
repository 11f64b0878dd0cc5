"""The tasks' counters as data: merged like the per-task sums, and each task's stats row."""
from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from batchscore.core.columns import STATS_COLUMN
from batchscore.udfs.lanes.scoring import STATS_FIELD, scored_with_stats
from batchscore.udfs.lanes.stats import merge_stats, merged_stats, stats_json, stats_of_rows

TASKS: list[dict[str, Any]] = [
    {"rows": 100, "rows_bad": 2, "model_calls": 4, "max_call_rows": 32, "max_batch_rows": 100,
     "first_task_at": 10.0, "last_task_end_at": 12.5, "loads": {"h:1": 1}, "model_load_s": {"h:1": 0.5},
     "peak_rss_mb": {"h:1": 300.0}, "host_loads": {"e1/0": 1}, "devices": {"h:1": "CPU:0"}, "corrupt_files": 1},
    {"rows": 60, "rows_bad": 0, "model_calls": 2, "max_call_rows": 30, "max_batch_rows": 60,
     "first_task_at": 9.0, "last_task_end_at": 11.0, "loads": {"h:1": 0}, "model_load_s": {"h:1": 0.0},
     "peak_rss_mb": {"h:1": 320.0}, "host_loads": {"e1/0": 1}, "devices": {"h:1": "CPU:0"}},
    {"rows": 0, "rows_bad": 0, "model_calls": 0, "max_call_rows": 0, "max_batch_rows": 0,
     "first_task_at": 11.0, "last_task_end_at": 13.0, "loads": {"h:2": 1}, "model_load_s": {"h:2": 0.25},
     "peak_rss_mb": {"h:2": 250.0}, "host_loads": {"e1/0": 1}},
]


def test_merged_stats_equal_the_per_task_sums_and_extremes() -> None:
    before = json.dumps(TASKS)
    total = merged_stats(TASKS)
    assert json.dumps(TASKS) == before  # the tasks' dicts are not changed
    for key in ("rows", "rows_bad", "model_calls", "corrupt_files"):
        assert total[key] == sum(t.get(key, 0) for t in TASKS), key
    assert (total["max_call_rows"], total["max_batch_rows"]) == (32, 100)
    assert (total["first_task_at"], total["last_task_end_at"]) == (9.0, 13.0)
    assert total["loads"] == {"h:1": 1, "h:2": 1} and total["model_load_s"] == {"h:1": 0.5, "h:2": 0.25}
    assert total["peak_rss_mb"] == {"h:1": 320.0, "h:2": 250.0}  # per worker: the max
    assert total["host_loads"] == {"e1/0": 1}  # a host's loads, reported by every task it served
    assert total["devices"] == {"h:1": "CPU:0"}
    # the order of the tasks does not matter, nor how they are grouped
    assert merged_stats(reversed(TASKS)) == total == merge_stats(TASKS[0], merged_stats(TASKS[1:]))
    assert merged_stats([]) == {}


def test_stats_rows_round_trip_through_json() -> None:
    texts = [None, *(stats_json(t) for t in TASKS), None]
    assert stats_of_rows(texts) == merged_stats(TASKS)


def test_a_task_ends_with_one_stats_row_with_zero_values_where_nulls_are_refused() -> None:
    schema = pa.schema([pa.field("id", pa.int64(), False), pa.field("tag", pa.string()),
                        pa.field("emb", pa.list_(pa.float32()), False),
                        pa.field("pt", pa.struct([pa.field("x", pa.float64())]), False),
                        pa.field("bs__reason", pa.string(), False), STATS_FIELD])
    data = pa.RecordBatch.from_pydict({"id": [1, 2], "tag": ["a", None], "emb": [[1.0], [2.0]],
                                       "pt": [{"x": 1.0}, {"x": 2.0}], "bs__reason": ["ok", "ok"]},
                                      schema=pa.schema(list(schema)[:-1]))
    stats: dict = {}

    def scored():
        yield data
        stats.update(rows=2)  # filled when the stream ends, as score_batches does

    out = list(scored_with_stats(scored(), stats, schema))
    assert len(out) == 2 and out[0].column(STATS_COLUMN).null_count == 2
    row = out[1].to_pylist()
    assert row == [{"id": 0, "tag": None, "emb": [], "pt": {"x": 0.0}, "bs__reason": "",
                    STATS_COLUMN: '{"rows":2,"tasks":1}'}]
    assert out[1].schema == out[0].schema  # one schema per Arrow stream
    empty = list(scored_with_stats(iter([]), {"rows": 0}, schema))  # an empty task reports too
    assert len(empty) == 1 and json.loads(empty[0].column(STATS_COLUMN)[0].as_py()) == {"rows": 0, "tasks": 1}
