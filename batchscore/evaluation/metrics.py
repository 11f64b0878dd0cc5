"""Metrics of scored output against labels, computed on Spark: no table of rows reaches the driver.

- binary (a probability column, 0/1 labels): AUC-ROC, AUC-PR, log loss, accuracy, precision
  and recall at a threshold, positive rate, mean score, calibration bins;
- multiclass (an array of class probabilities, integer labels 0..K-1): accuracy, log loss,
  macro one-vs-rest AUC-ROC (up to `MAX_OVR_CLASSES` classes);
- regression: RMSE, MAE, R².

Every metric is computed for all rows and, with `slice_column`, per value of that column (its
`top_slices` most frequent values, the rest as "other"): each row is counted once overall and
once in its slice (a group id, `GROUP`; 0 is all rows).

AUC-ROC and AUC-PR are exact. The rows are counted per distinct score (positives,
negatives), range-partitioned in descending score order, and the cumulative counts in that
order are a window sum within each partition plus the totals of the partitions before it
(one small table on the driver). Ties count half in AUC-ROC, as in the rank-sum statistic
(`roc_auc`); AUC-PR is the step-wise sum over distinct thresholds, sum_k (R_k - R_k-1) P_k
(scikit-learn's average precision). Rows without a label or without a score are counted and
reported, and left out of the metrics.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import numpy as np

from batchscore.core.choices import TASKS, Task
from batchscore.core.errors import ConfigError, InputError, SchemaError

if TYPE_CHECKING:  # pyspark is the optional [spark] extra: imported where Spark is used
    from pyspark.sql import Column, DataFrame


# Internal columns (the `bs__` prefix keeps them apart from the user's).
GROUP = "bs__group"  # 0: all rows; 1..: the slices
CLASS = "bs__class"  # multiclass one-vs-rest: the class index
LABEL = "bs__y"
SCORE = "bs__s"
PART = "bs__part"  # range partition of the distinct-score table
BIN = "bs__bin"
OVERALL = 0
OTHER = "other"

LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] in the log loss
MAX_OVR_CLASSES = 32  # beyond this the one-vs-rest AUC (one curve per class) is left out
MAX_CURVE_POINTS = 500  # curve points kept per group for plots and the JSON

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


# --- results ---


@dataclass(frozen=True)
class Curve:
    """A score's ranking of one group's rows: totals, the two areas, and sampled curve points.

    `thresholds` descend; `tp[i]` / `fp[i]` count the positives / negatives scored at or above
    `thresholds[i]`. The last point is always the lowest score (every row predicted positive).
    """

    positives: int
    negatives: int
    auc_roc: float | None
    auc_pr: float | None
    thresholds: list[float] = field(default_factory=list)
    tp: list[int] = field(default_factory=list)
    fp: list[int] = field(default_factory=list)

    def roc(self) -> tuple[list[float], list[float]]:
        """(false positive rates, true positive rates), from (0, 0)."""
        n, p = max(self.negatives, 1), max(self.positives, 1)
        return [0.0, *(f / n for f in self.fp)], [0.0, *(t / p for t in self.tp)]

    def pr(self) -> tuple[list[float], list[float]]:
        """(recalls, precisions) at the sampled thresholds."""
        p = max(self.positives, 1)
        return [t / p for t in self.tp], [t / (t + f) for t, f in zip(self.tp, self.fp, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        fpr, tpr = self.roc()
        recall, precision = self.pr()
        return {"thresholds": self.thresholds, "fpr": fpr[1:], "tpr": tpr[1:],
                "recall": recall, "precision": precision}


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


# --- the numpy reference of the rank-sum AUC (small data, no Spark) ---


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney) statistic, ties averaged."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --- the entry point ---


def resolve_task(df: DataFrame, *, score: str, task: str | None = None) -> Task:
    """The task asked for, or inferred from the score column: an array is multiclass, else binary.

    Raises:
        ConfigError: an unknown task. SchemaError: the score column is missing.
    """
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        return task  # narrowed to a Task by the check above
    from pyspark.sql.types import ArrayType  # noqa: PLC0415 - pyspark is the optional [spark] extra

    return "multiclass" if isinstance(_field(df, score, "score").dataType, ArrayType) else "binary"


def evaluate(df: DataFrame, *, label: str, score: str, task: str | None = None, threshold: float = 0.5,
             bins: int = 10, slice_column: str | None = None, top_slices: int = 10,
             max_curve_points: int = MAX_CURVE_POINTS) -> Evaluation:
    """Every metric of `task` for the rows of `df`, and per slice of `slice_column`.

    Args:
        df: one row per prediction (and, after `join_labels`, per label without one), holding the
            `label` and `score` columns; null labels and scores are counted, not evaluated.
        task: binary | multiclass | regression; None: inferred (`resolve_task`).
        threshold: binary: a score at or above it predicts the positive class.
        bins: binary: equal-width calibration bins over [0, 1].
        slice_column: also every metric per value of this column (its `top_slices` most
            frequent values, the rest as "other").
        max_curve_points: curve points kept per group (for plots).

    Raises:
        SchemaError: a missing column or one of the wrong type. InputError: labels or scores
            outside their range (binary: 0/1 labels, scores in [0, 1]), or no row to evaluate.
    """
    resolved = resolve_task(df, score=score, task=task)
    _check_types(df, label=label, score=score, task=resolved)
    if bins < 1 or top_slices < 1 or max_curve_points < 2:
        raise ConfigError("bins and top_slices must be >= 1, max_curve_points >= 2")
    group, names = slice_groups(df, slice_column, top=top_slices) if slice_column else (None, [])
    prepared = _prepare(df, label=label, score=score, group=group, task=resolved)
    if resolved == "binary":
        results = _binary(prepared, threshold=threshold, bins=bins, max_points=max_curve_points,
                          label=label, score=score)
    elif resolved == "multiclass":
        results = _multiclass(prepared, max_points=max_curve_points, label=label, score=score)
    else:
        results = _regression(prepared)
    named = {g: GroupResult(name="all" if g == OVERALL else names[g - 1], **r) for g, r in results.items()}
    return Evaluation(task=resolved, label=label, score=score, threshold=threshold, overall=named[OVERALL],
                      slice_column=slice_column, slices=[named[g] for g in sorted(named) if g != OVERALL])


def join_labels(predictions: DataFrame, labels: DataFrame, *, key: str, label: str,
                columns: Sequence[str] = ()) -> DataFrame:
    """Predictions and labels side by side, on `key` (a full outer join).

    A prediction without a label row gets a null label, a label without a prediction a null
    score: `evaluate` counts both. `columns` (the score, a slice column) are taken from the
    predictions, or from the labels when only they have one; `label` from the labels.

    Raises:
        SchemaError: `key` or `label` is missing, or a column is in neither table.
    """
    for name, df, what in ((key, predictions, "predictions"), (key, labels, "labels"), (label, labels, "labels")):
        if name not in df.columns:
            raise SchemaError(f"column '{name}' is not in the {what} (columns: {', '.join(df.columns)})")
    wanted = [c for c in dict.fromkeys(columns) if c not in (key, label)]
    missing = [c for c in wanted if c not in predictions.columns and c not in labels.columns]
    if missing:
        raise SchemaError(f"column '{missing[0]}' is in neither the predictions nor the labels")
    from_predictions = [c for c in wanted if c in predictions.columns]
    from_labels = [c for c in wanted if c not in predictions.columns]
    return predictions.select(key, *from_predictions).join(
        labels.select(key, label, *from_labels), on=key, how="full_outer")


def duplicate_key(df: DataFrame, key: str) -> tuple[Any, int] | None:
    """A value of `key` that appears more than once in `df` and its count, or None (one shuffle)."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    rows = df.where(F.col(key).isNotNull()).groupBy(key).count().where(F.col("count") > 1).limit(1).collect()
    return (rows[0][0], int(rows[0][1])) if rows else None


# --- slices ---


def slice_groups(df: DataFrame, column: str, *, top: int) -> tuple[Column, list[str]]:
    """A group id per row for `column`'s `top` most frequent values (1..top, ties by value),
    `top + 1` for the rest; and the groups' names (a value as text, "null", "other").

    Raises:
        SchemaError: the column is missing or not a scalar.
    """
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType  # noqa: PLC0415 - as above

    kind = _field(df, column, "slice").dataType
    if isinstance(kind, (ArrayType, MapType, StructType, BinaryType)):
        raise SchemaError(f"slice column '{column}' must hold scalars, not {kind.simpleString()}")
    counted = df.groupBy(column).count().orderBy(F.desc("count"), F.col(column).asc_nulls_last())
    rows = counted.limit(top + 1).collect()
    values = [r[0] for r in rows[:top]]
    names = ["null" if v is None else str(v) for v in values]
    expr: Any = None
    for i, v in enumerate(values, start=1):
        cond = F.col(column).eqNullSafe(F.lit(v))
        expr = F.when(cond, i) if expr is None else expr.when(cond, i)
    if len(rows) > top:
        names.append(OTHER if OTHER not in names else f"{OTHER} (the rest)")
    rest = F.lit(len(values) + 1)
    return (rest if expr is None else expr.otherwise(rest)), names


# --- preparing the rows ---


def _prepare(df: DataFrame, *, label: str, score: str, group: Column | None, task: Task) -> DataFrame:
    """GROUP, LABEL, SCORE; each row twice with a slice column (group 0 and its slice's).
    NaN labels and scores read as missing."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    groups = F.lit(OVERALL) if group is None else F.explode(F.array(F.lit(OVERALL), group))
    s = F.col(score).cast("array<double>") if task == "multiclass" else F.col(score).cast("double")
    if task != "multiclass":
        s = F.when(~F.isnan(s), s)
    y = F.col(label).cast("double")
    return df.select(groups.alias(GROUP), F.when(~F.isnan(y), y).alias(LABEL), s.alias(SCORE))


def _check_types(df: DataFrame, *, label: str, score: str, task: Task) -> None:
    from pyspark.sql.types import ArrayType, BooleanType, NumericType  # noqa: PLC0415 - optional extra

    y = _field(df, label, "label").dataType
    if not isinstance(y, (NumericType, BooleanType)):
        raise SchemaError(f"label column '{label}' must be numeric or boolean, not {y.simpleString()}")
    s = _field(df, score, "score").dataType
    if task == "multiclass":
        ok = isinstance(s, ArrayType) and isinstance(s.elementType, NumericType)
        want = "an array of class probabilities"
    else:
        ok, want = isinstance(s, NumericType), "numeric"
    if not ok:
        raise SchemaError(f"score column '{score}' must be {want} for a {task} evaluation, not {s.simpleString()}")


def _field(df: DataFrame, column: str, role: str) -> Any:
    try:
        return df.schema[column]
    except (KeyError, LookupError):
        raise SchemaError(f"{role} column '{column}' is not in the data (columns: {', '.join(df.columns)})") from None


def _valid() -> Column:
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    return F.col(LABEL).isNotNull() & F.col(SCORE).isNotNull()


def _row_counts() -> list[Column]:
    """Counts of a group's rows: evaluated, without a label, without a prediction."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    return [F.count(F.when(_valid(), 1)).alias("evaluated"),
            F.count(F.when(F.col(LABEL).isNull() & F.col(SCORE).isNotNull(), 1)).alias("without_label"),
            F.count(F.when(F.col(SCORE).isNull(), 1)).alias("without_prediction")]


_COUNTS = ("evaluated", "without_label", "without_prediction")


# --- binary ---


def _binary(df: DataFrame, *, threshold: float, bins: int, max_points: int, label: str,
            score: str) -> dict[int, dict[str, Any]]:
    """Per group: rows, metrics, calibration and the curve."""
    sums = _binary_sums(df, threshold=threshold, bins=bins)
    _check_binary(sums.get(OVERALL, {}), label=label, score=score)
    curves = rank_curves(df.where(_valid()).select(GROUP, LABEL, SCORE), keys=[GROUP], max_points=max_points)
    out = {}
    for g, s in sums.items():
        curve = curves.get((g,))
        n = s["evaluated"]
        metrics: dict[str, Number] = {
            "rows": n, "positives": int(s["positives"]),
            "positive_rate": _div(s["positives"], n), "mean_score": _div(s["score_sum"], n),
            "auc_roc": curve.auc_roc if curve else None, "auc_pr": curve.auc_pr if curve else None,
            "log_loss": _div(s["log_loss_sum"], n), "accuracy": _div(s["correct"], n),
            "precision": _div(s["true_positives"], s["predicted_positives"]),
            "recall": _div(s["true_positives"], s["positives"]),
        }
        out[g] = {"rows": {k: s[k] for k in _COUNTS}, "metrics": metrics,
                  "calibration": _calibration(s["bins"], bins), "curves": {"": curve} if curve else {}}
    return out


def _binary_sums(df: DataFrame, *, threshold: float, bins: int) -> dict[int, dict[str, Any]]:
    """One pass: additive sums per (group, calibration bin), added up per group on the driver."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    y, s, valid = F.col(LABEL), F.col(SCORE), _valid()
    p = F.least(F.greatest(s, F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
    predicted = s >= F.lit(threshold)
    bin_of = F.when(valid, F.least(F.floor(s * bins), F.lit(bins - 1)).cast("int"))
    rows = (df.withColumn(BIN, bin_of).groupBy(GROUP, BIN).agg(
        *_row_counts(),
        F.sum(F.when(valid, y)).alias("positives"),
        F.sum(F.when(valid, s)).alias("score_sum"),
        F.sum(F.when(valid, -(y * F.log(p) + (1 - y) * F.log(1 - p)))).alias("log_loss_sum"),
        F.count(F.when(valid & (predicted == (y == 1)), 1)).alias("correct"),
        F.count(F.when(valid & predicted, 1)).alias("predicted_positives"),
        F.count(F.when(valid & predicted & (y == 1), 1)).alias("true_positives"),
        F.count(F.when(valid & ~y.isin(0.0, 1.0), 1)).alias("bad_labels"),
        F.min(F.when(valid, s)).alias("min_score"), F.max(F.when(valid, s)).alias("max_score"),
    ).collect())  # groups x (bins + 1) rows
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        acc = out.setdefault(r[GROUP], {"bins": {}, "min_score": None, "max_score": None})
        for k in (*_COUNTS, "positives", "score_sum", "log_loss_sum", "correct", "predicted_positives",
                  "true_positives", "bad_labels"):
            acc[k] = acc.get(k, 0) + (r[k] or 0)
        acc["min_score"] = _opt(min, acc["min_score"], r["min_score"])
        acc["max_score"] = _opt(max, acc["max_score"], r["max_score"])
        if r[BIN] is not None:
            acc["bins"][r[BIN]] = (r["evaluated"], r["score_sum"], r["positives"])
    return out


def _check_binary(s: dict[str, Any], *, label: str, score: str) -> None:
    if not s.get("evaluated"):
        raise InputError(f"no row has both a label ('{label}') and a score ('{score}')")
    if s["bad_labels"]:
        raise InputError(f"label column '{label}' holds {s['bad_labels']:,} values other than 0 and 1 "
                         "(a binary evaluation; --task multiclass or regression?)")
    if s["min_score"] < 0 or s["max_score"] > 1:
        raise InputError(f"score column '{score}' holds values outside [0, 1] (min {s['min_score']:.4g}, "
                         f"max {s['max_score']:.4g}): a binary evaluation needs probabilities")


def _calibration(found: dict[int, tuple[int, float, float]], bins: int) -> list[CalibrationBin]:
    """Every equal-width bin: its range, rows, mean score and observed positive rate (None when empty)."""
    out: list[CalibrationBin] = []
    for b in range(bins):
        n, score_sum, positives = found.get(b, (0, 0.0, 0.0))
        out.append({"bin": b, "lower": b / bins, "upper": (b + 1) / bins, "count": n,
                    "mean_score": _div(score_sum, n), "observed_rate": _div(positives, n)})
    return out


# --- exact AUC-ROC and AUC-PR ---


def rank_curves(df: DataFrame, *, keys: Sequence[str], max_points: int = MAX_CURVE_POINTS,
                partitions: int | None = None) -> dict[tuple[Any, ...], Curve]:
    """AUC-ROC, AUC-PR and sampled curve points of each group of `keys`, exactly, on Spark.

    Args:
        df: the `keys`, LABEL (0/1) and SCORE (not null) of every row to rank.
        partitions: of the distinct-score table (default: the session's shuffle partitions).

    Returns:
        Per group (a tuple of its key values); groups without both classes get areas of None.
    """
    from pyspark.sql import Window  # noqa: PLC0415 - pyspark is the optional [spark] extra
    from pyspark.sql import functions as F  # noqa: PLC0415 - as above

    spark = df.sparkSession
    n = partitions or int(spark.conf.get("spark.sql.shuffle.partitions") or 8)
    # One row per (group, distinct score), range-partitioned in (group, score descending) order:
    # a group's partitions follow each other, higher scores first.
    distinct = (df.groupBy(*keys, SCORE).agg(F.sum(LABEL).alias("pos"), F.sum(1 - F.col(LABEL)).alias("neg"))
                .repartitionByRange(n, *[F.col(k) for k in keys], F.col(SCORE).desc())
                .withColumn(PART, F.spark_partition_id())
                .persist())  # the partition ids must not change between the two passes below
    try:
        totals = distinct.groupBy(*keys, PART).agg(
            F.sum("pos").alias("pos"), F.sum("neg").alias("neg"), F.count(F.lit(1)).alias("n")).collect()
        offsets, groups = _offsets(totals, keys=keys, max_points=max_points)
        if not offsets:
            return {}
        offsets_df = spark.createDataFrame(offsets, schema=_offsets_schema(distinct, keys))
        w = Window.partitionBy(*keys, PART).orderBy(F.col(SCORE).desc())  # no ties: one row per score
        ranked = (distinct.join(F.broadcast(offsets_df), on=[*keys, PART])
                  .withColumn("tp", F.col("tp_before") + F.sum("pos").over(w))  # positives scored >= this score
                  .withColumn("fp", F.col("fp_before") + F.sum("neg").over(w))
                  .withColumn("rank", F.col("rows_before") + F.row_number().over(w)))
        # AUC-ROC: each negative gets the positives above it, and half those tied with it.
        # AUC-PR: each positive gets the precision at its score. The sampled curve points
        # (<= max_points + 1 per group) come along in the same pass.
        point = (F.col("rank") % F.col("stride") == 0) | (F.col("rank") == F.col("rows_total"))
        results = ranked.groupBy(*keys).agg(
            F.sum(F.col("neg") * (F.col("tp") - F.col("pos") / 2)).alias("roc"),
            F.sum(F.col("pos") * F.col("tp") / (F.col("tp") + F.col("fp"))).alias("ap"),
            F.collect_list(F.when(point, F.struct(SCORE, "tp", "fp"))).alias("points")).collect()
    finally:
        distinct.unpersist()
    return _curves(groups, results, keys=keys)


def _offsets(totals: Iterable[Any], *, keys: Sequence[str],
             max_points: int) -> tuple[list[tuple[Any, ...]], dict[tuple[Any, ...], tuple[int, int, int]]]:
    """Per (group, partition): the positives, negatives and distinct scores of the group's earlier
    partitions, the group's distinct scores and the stride of its curve points; and per group
    its (positives, negatives, distinct scores)."""
    by_group: dict[tuple[Any, ...], list[Any]] = {}
    for r in totals:
        by_group.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows, groups = [], {}
    for g, parts in by_group.items():
        pos, neg, n = (sum(int(r[c]) for r in parts) for c in ("pos", "neg", "n"))
        groups[g] = (pos, neg, n)
        stride = max(1, math.ceil(n / max_points))
        tp = fp = seen = 0
        for r in sorted(parts, key=lambda r: r[PART]):
            rows.append((*g, r[PART], tp, fp, seen, n, stride))
            tp, fp, seen = tp + int(r["pos"]), fp + int(r["neg"]), seen + int(r["n"])
    return rows, groups


def _offsets_schema(distinct: DataFrame, keys: Sequence[str]) -> Any:
    from pyspark.sql.types import IntegerType, LongType, StructField, StructType  # noqa: PLC0415 - optional extra

    fields = [StructField(k, distinct.schema[k].dataType) for k in keys] + [StructField(PART, IntegerType())]
    fields += [StructField(c, LongType()) for c in ("tp_before", "fp_before", "rows_before", "rows_total", "stride")]
    return StructType(fields)


def _curves(groups: dict[tuple[Any, ...], tuple[int, int, int]], results: Iterable[Any], *,
            keys: Sequence[str]) -> dict[tuple[Any, ...], Curve]:
    sums: dict[tuple[Any, ...], tuple[float, float]] = {}
    found: dict[tuple[Any, ...], list[tuple[float, int, int]]] = {}
    for r in results:
        g = tuple(r[k] for k in keys)
        sums[g] = (r["roc"], r["ap"])
        found[g] = [(float(p[SCORE]), int(p["tp"]), int(p["fp"])) for p in r["points"]]
    out = {}
    for g, (pos, neg, _) in groups.items():
        roc, ap = sums.get(g, (0.0, 0.0))
        pts = sorted(found.get(g, []), key=lambda t: -t[0])
        both = pos > 0 and neg > 0
        out[g] = Curve(positives=pos, negatives=neg,
                       auc_roc=float(roc) / (pos * neg) if both else None,
                       auc_pr=float(ap) / pos if both else None,
                       thresholds=[t[0] for t in pts], tp=[t[1] for t in pts], fp=[t[2] for t in pts])
    return out


# --- multiclass ---


def _multiclass(df: DataFrame, *, max_points: int, label: str, score: str) -> dict[int, dict[str, Any]]:
    """Per group: rows and metrics (accuracy, log loss, macro one-vs-rest AUC-ROC), curves per class."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    y, s, valid = F.col(LABEL), F.col(SCORE), _valid()
    size = F.size(s)
    label_ok = (y >= 0) & (y < size) & (y == F.floor(y))
    # the first class of the highest probability (SQL: pyspark 3.5's array_position takes no Column value)
    argmax = F.expr(f"array_position({SCORE}, array_max({SCORE}))") - 1
    p_true = F.when(label_ok, F.try_element_at(s, (y + 1).cast("int")))  # guarded: index 0 raises
    p = F.least(F.greatest(p_true, F.lit(LOG_LOSS_EPS)), F.lit(1 - LOG_LOSS_EPS))
    rows = df.groupBy(GROUP).agg(
        *_row_counts(),
        F.count(F.when(valid & (argmax == y), 1)).alias("correct"),
        F.sum(F.when(valid, -F.log(p))).alias("log_loss_sum"),
        F.count(F.when(valid & ~label_ok, 1)).alias("bad_labels"),
        F.min(F.when(valid, size)).alias("min_classes"), F.max(F.when(valid, size)).alias("max_classes"),
    ).collect()
    sums = {r[GROUP]: r.asDict() for r in rows}
    overall = sums.get(OVERALL, {})
    if not overall.get("evaluated"):
        raise InputError(f"no row has both a label ('{label}') and a score ('{score}')")
    if overall["min_classes"] != overall["max_classes"]:
        raise InputError(f"score column '{score}' holds arrays of {overall['min_classes']} to "
                         f"{overall['max_classes']} class probabilities: expected one size")
    if overall["bad_labels"]:
        raise InputError(f"label column '{label}' holds {overall['bad_labels']:,} values that are not a class "
                         f"index 0..{overall['max_classes'] - 1}")
    k = int(overall["max_classes"])
    curves = _one_vs_rest(df, max_points=max_points) if k <= MAX_OVR_CLASSES else {}
    out = {}
    for g, r in sums.items():
        per_class = {str(c): cv for (gg, c), cv in sorted(curves.items()) if gg == g}
        aucs = [cv.auc_roc for cv in per_class.values() if cv.auc_roc is not None]
        n = r["evaluated"]
        metrics: dict[str, Number] = {
            "rows": n, "classes": k, "accuracy": _div(r["correct"], n), "log_loss": _div(r["log_loss_sum"], n),
            "auc_roc_macro": float(np.mean(aucs)) if aucs else None}
        out[g] = {"rows": {c: r[c] for c in _COUNTS}, "metrics": metrics, "curves": per_class}
    return out


def _one_vs_rest(df: DataFrame, *, max_points: int) -> dict[tuple[Any, ...], Curve]:
    """One binary ranking per class: the class's probability, labelled 1 where it is the true class."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    exploded = df.where(_valid()).select(GROUP, LABEL, F.posexplode(SCORE).alias(CLASS, "p"))
    ovr = exploded.select(GROUP, CLASS, (F.col(LABEL) == F.col(CLASS)).cast("double").alias(LABEL),
                          F.col("p").alias(SCORE)).where(F.col(SCORE).isNotNull() & ~F.isnan(SCORE))
    return rank_curves(ovr, keys=[GROUP, CLASS], max_points=max_points)


# --- regression ---


def _regression(df: DataFrame) -> dict[int, dict[str, Any]]:
    """Per group: rows and metrics (RMSE, MAE, R², the means)."""
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark is the optional [spark] extra

    y, s, valid = F.col(LABEL), F.col(SCORE), _valid()
    err = s - y
    rows = df.groupBy(GROUP).agg(
        *_row_counts(),
        F.avg(F.when(valid, err * err)).alias("mse"), F.avg(F.when(valid, F.abs(err))).alias("mae"),
        F.var_pop(F.when(valid, y)).alias("var_label"),
        F.avg(F.when(valid, y)).alias("mean_label"), F.avg(F.when(valid, s)).alias("mean_prediction"),
    ).collect()
    if not any(r["evaluated"] for r in rows if r[GROUP] == OVERALL):
        raise InputError("no row has both a label and a prediction")
    out = {}
    for r in rows:
        metrics: dict[str, Number] = {
            "rows": r["evaluated"], "rmse": math.sqrt(r["mse"]) if r["mse"] is not None else None,
            "mae": r["mae"], "r2": 1 - r["mse"] / r["var_label"] if r["var_label"] else None,
            "mean_label": r["mean_label"], "mean_prediction": r["mean_prediction"]}
        out[r[GROUP]] = {"rows": {c: r[c] for c in _COUNTS}, "metrics": metrics}
    return out


# --- gates ---


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


# --- small helpers ---


def _div(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def _opt(pick: Any, a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else pick(a, b)


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None
