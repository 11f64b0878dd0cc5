"""Gates: `metric>=value` conditions on the metrics of all rows, so a job can stop a bad model.

`batchscore evaluate --gate auc_roc>=0.75` exits 3 when a gate fails (metrics and plots are
written first).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

from batchscore.core.errors import ConfigError
from batchscore.evaluation.results import METRICS, Number, Task


@dataclass(frozen=True)
class Gate:
    """`metric>=value` or `metric<=value`: a condition the metrics of all rows must meet."""

    metric: str
    op: Literal[">=", "<="]
    value: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def failure(self, metrics: dict[str, Number]) -> str | None:
        """Why the gate fails on `metrics`, or None when it passes."""
        got = metrics.get(self.metric)
        if got is None or (isinstance(got, float) and math.isnan(got)):
            return f"{self}: {self.metric} is undefined (e.g. only one class among the labels)"
        ok = got >= self.value if self.op == ">=" else got <= self.value
        return None if ok else f"{self}: {self.metric} = {got:.6g}"


_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=)\s*([^\s]+)\s*$")


def parse_gate(text: str) -> Gate:
    """`auc_roc>=0.75` as a Gate.

    Raises:
        ConfigError: not `metric>=number` or `metric<=number`.
    """
    m = _GATE.match(text)
    value = _float(m.group(3)) if m else None
    if m is None or value is None:
        raise ConfigError(f"--gate {text!r}: expected METRIC>=VALUE or METRIC<=VALUE, e.g. auc_roc>=0.75")
    op = cast(Literal[">=", "<="], m.group(2))  # the pattern allows only these two
    return Gate(m.group(1), op, value)


def check_gate_metrics(gates: Iterable[Gate], task: Task) -> None:
    """Raises ConfigError naming the first gate metric that `task` does not compute, and the known ones."""
    for g in gates:
        if g.metric not in METRICS[task]:
            raise ConfigError(f"--gate {g}: unknown metric '{g.metric}' for a {task} evaluation; "
                              f"known: {', '.join(METRICS[task])}")


def failed_gates(gates: Iterable[Gate], metrics: dict[str, Number]) -> list[str]:
    """One line per gate that `metrics` fail."""
    return [f for f in (g.failure(metrics) for g in gates) if f is not None]


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None
