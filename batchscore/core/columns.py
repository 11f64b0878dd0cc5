"""The columns the engine adds beside a row's predictions, and what they hold."""
from __future__ import annotations

REASON_COLUMN = "bs__reason"  # "ok", or why the row was quarantined (convert.REASONS)
BAD_COLUMN = "bs__column"  # the input column that made a row bad, or NO_COLUMN
OK_REASON = "ok"
NO_COLUMN = "_"
STATS_COLUMN = "bs__stats"  # a task's counters as JSON in its one stats row, null in scored rows (udfs/lanes/stats.py)
