"""Exact AUC-ROC and AUC-PR, and sampled ROC / precision-recall curve points, computed on Spark.

The rows are counted per distinct score (positives, negatives), range-partitioned in
descending score order, and the cumulative counts in that order are a window sum within each
partition plus the totals of the partitions before it (one small table on the driver). Ties
count half in AUC-ROC, as in the rank-sum statistic (`roc_auc`, the numpy reference); AUC-PR
is the step-wise sum over distinct thresholds, sum_k (R_k - R_k-1) P_k (scikit-learn's
average precision). No table of rows reaches the driver.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pyspark is the optional [spark] extra: imported where Spark is used
    from pyspark.sql import DataFrame

# The internal columns `rank_curves` reads and adds (the `bs__` prefix keeps them apart from the user's).
LABEL = "bs__y"
SCORE = "bs__s"
PART = "bs__part"  # range partition of the distinct-score table

MAX_CURVE_POINTS = 500  # curve points kept per group for plots and the JSON


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


# --- exact AUC-ROC and AUC-PR on Spark ---


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
