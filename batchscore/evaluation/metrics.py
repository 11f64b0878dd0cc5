"""Metrics of scored output against labels, computed on Spark: no table of rows reaches the driver.

- binary (a probability column, 0/1 labels): AUC-ROC, AUC-PR, log loss, accuracy, precision
  and recall at a threshold, positive rate, mean score, calibration bins;
- multiclass (an array of class probabilities, integer labels 0..K-1): accuracy, log loss,
  macro one-vs-rest AUC-ROC (up to `MAX_OVR_CLASSES` classes);
- regression: RMSE, MAE, R².

Every metric is computed for all rows and, with `slice_column`, per value of that column (its
`top_slices` most frequent values, the rest as "other"). Rows without a label or a score are
counted, reported and left out. Exact AUCs: curves.py; result types: results.py; gates: gates.py.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from batchscore.core.errors import ConfigError, InputError, SchemaError
from batchscore.evaluation.curves import LABEL, MAX_CURVE_POINTS, SCORE, Curve, rank_curves
from batchscore.evaluation.results import TASKS, CalibrationBin, Evaluation, GroupResult, Number, Task

if TYPE_CHECKING:  # pyspark is the optional [spark] extra: imported where Spark is used
    from pyspark.sql import Column, DataFrame

# Internal columns (the `bs__` prefix keeps them apart from the user's; LABEL and SCORE: curves.py).
# Each row is counted once overall and once in its slice: GROUP is 0 (OVERALL) for all rows, 1.. a slice.
GROUP = "bs__group"
CLASS = "bs__class"  # multiclass one-vs-rest: the class index
BIN = "bs__bin"
OVERALL = 0
OTHER = "other"

LOG_LOSS_EPS = 1e-15  # probabilities are clipped to [eps, 1 - eps] in the log loss
MAX_OVR_CLASSES = 32  # beyond this the one-vs-rest AUC (one curve per class) is left out


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


# --- small helpers ---


def _div(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b else None


def _opt(pick: Any, a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else pick(a, b)


