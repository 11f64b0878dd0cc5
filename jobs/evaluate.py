"""Evaluate scored output against labels: `python -m jobs.evaluate --predictions DIR --label COL --score COL`.

Prints ROC AUC, the positive rate and the mean score; reads the Parquet output
with pyarrow (no Spark needed for a few million rows).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow.dataset as ds


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--predictions", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--score", required=True)
    args = p.parse_args(argv)
    try:
        dataset = ds.dataset(args.predictions, format="parquet", partitioning="hive")
        t = dataset.to_table(columns=[args.label, args.score])
    except Exception as e:  # noqa: BLE001 - any unreadable input is the user's path: exit 2 with its message
        print(f"error: cannot read {args.predictions}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    y = t.column(args.label).to_numpy()
    s = t.column(args.score).to_numpy()
    print(f"evaluate: {len(y):,} rows, positive rate {y.mean():.3f}, mean {args.score} {s.mean():.3f}, "
          f"ROC AUC {roc_auc(y, s):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
