"""What an evaluation returns: the tasks, their metrics, and the results per group of rows.

`Evaluation.to_dict` is the `metrics.json` written beside the predictions; the plots
(batchscore/evaluation/plots.py) draw its curves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from batchscore.evaluation.curves import Curve

Task = Literal["binary", "multiclass", "regression"]
TASKS: tuple[Task, ...] = ("binary", "multiclass", "regression")

METRICS: dict[Task, tuple[str, ...]] = {
    "binary": ("rows", "positives", "positive_rate", "mean_score", "auc_roc", "auc_pr", "log_loss",
               "accuracy", "precision", "recall"),
    "multiclass": ("rows", "classes", "accuracy", "log_loss", "auc_roc_macro"),
    "regression": ("rows", "rmse", "mae", "r2", "mean_label", "mean_prediction"),
}

Number = float | int | None


class CalibrationBin(TypedDict):
    """One equal-width bin of scores: its range, rows, mean score and observed positive rate."""

    bin: int
    lower: float
    upper: float
    count: int
    mean_score: float | None  # None: no row in the bin
    observed_rate: float | None


@dataclass(frozen=True)
class GroupResult:
    """The metrics of one group of rows: all rows, or one slice."""

    name: str
    rows: dict[str, int]  # evaluated, without_label, without_prediction
    metrics: dict[str, Number]
    calibration: list[CalibrationBin] = field(default_factory=list)  # binary: one entry per bin
    curves: dict[str, Curve] = field(default_factory=dict)  # binary: {"": ...}; multiclass: per class

    def to_dict(self, *, curves: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "metrics": self.metrics}
        if self.calibration:
            out["calibration"] = self.calibration
        if curves and "" in self.curves:
            out["curve"] = self.curves[""].to_dict()
        elif curves and self.curves:
            out["curves_by_class"] = {k: c.to_dict() for k, c in self.curves.items()}
        return out


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` found: all rows (`overall`) and, with a slice column, each slice."""

    task: Task
    label: str
    score: str
    threshold: float
    overall: GroupResult
    slice_column: str | None = None
    slices: list[GroupResult] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, Number]:
        """The metrics of all rows (what gates check)."""
        return self.overall.metrics

    def to_dict(self) -> dict[str, Any]:
        """The metrics JSON: options, all rows (with curve points), each slice."""
        out: dict[str, Any] = {"task": self.task, "label": self.label, "score": self.score}
        if self.task == "binary":
            out["threshold"] = self.threshold
        out.update(self.overall.to_dict(curves=True))
        if self.slice_column:
            out["slice_column"] = self.slice_column
            out["slices"] = {g.name: g.to_dict(curves=False) for g in self.slices}
        return out
