"""Evaluate scored output against labels: `batchscore evaluate --predictions DIR --label COL --score COL`.

Only wiring: arguments -> session -> `batchscore.evaluation.run.evaluate_run` (metrics on Spark,
batchscore/evaluation/metrics.py) -> metrics JSON and plots (`<predictions>/_evaluation/` or `--out`) -> summary
-> gates. Exit codes: 0 success; 2 a user error (a missing path or column, labels out of
range, a bad `--gate`), one line `error: ...` on stderr; 3 a `--gate` failed, one line
`gate failed: ...` per failed gate on stderr (the metrics are written first); 1 anything else.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from batchscore.core.errors import BatchscoreError, ConfigError
from batchscore.core.spark_errors import one_line, translate_spark_error
from batchscore.evaluation.metrics import TASKS, failed_gates, parse_gate, roc_auc

__all__ = ["GATE_FAILED_EXIT", "main", "roc_auc"]

GATE_FAILED_EXIT = 3


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="batchscore evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--predictions", required=True, help="a scoring run's output (read through its _manifest.json)")
    p.add_argument("--label", required=True, help="the label column (in the predictions, or in --labels)")
    p.add_argument("--score", required=True, help="the score column: a probability, class probabilities or a value")
    p.add_argument("--labels", default=None, metavar="PATH", help="a Parquet table of labels, joined on --key")
    p.add_argument("--key", default=None, help="the column joining predictions and --labels")
    p.add_argument("--task", choices=TASKS, default=None,
                   help="default: multiclass for an array score column, else binary")
    p.add_argument("--threshold", type=float, default=0.5, help="binary: scores at or above it predict 1 (0.5)")
    p.add_argument("--bins", type=int, default=10, help="binary: equal-width calibration bins (10)")
    p.add_argument("--slice", dest="slice_column", default=None, metavar="COL",
                   help="also every metric per value of this column")
    p.add_argument("--top-slices", type=int, default=10, metavar="N",
                   help="slices: the N most frequent values, the rest as 'other' (10)")
    p.add_argument("--out", default=None, metavar="DIR", help="where the metrics and plots go "
                   "(default: PREDICTIONS/_evaluation)")
    p.add_argument("--gate", action="append", default=[], metavar="METRIC>=VALUE",
                   help="exit 3 when the metric of all rows is below (>=) or above (<=) VALUE, "
                        "e.g. auc_roc>=0.75 or log_loss<=0.5 (repeatable)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for the session (repeatable; default master local[*])")
    return p.parse_args(argv)


def _spark_conf(pairs: list[str]) -> dict[str, str]:
    conf = {"spark.master": "local[*]"}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--conf {pair!r}: expected KEY=VALUE")
        conf[k.strip()] = v
    return conf


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run the evaluation; returns the exit code.

    Args:
        spark: a session to use (and leave running); by default one is built and stopped at the end.
    """
    args = _parse_args(argv)
    own_session = False
    try:
        gates = [parse_gate(g) for g in args.gate]
        if spark is None:
            from batchscore.session.builder import build_session, session_is_shared  # noqa: PLC0415 - imports pyspark

            own_session = not session_is_shared()
            spark = build_session(_spark_conf(args.conf), app_name="batchscore-evaluate")
            spark.sparkContext.setLogLevel("ERROR")
        from batchscore.evaluation import run as evaluation  # noqa: PLC0415 - imports pyspark and matplotlib, after --help

        result, source = evaluation.evaluate_run(
            spark, predictions=args.predictions, label=args.label, score=args.score, labels=args.labels,
            key=args.key, task=args.task, threshold=args.threshold, bins=args.bins,
            slice_column=args.slice_column, top_slices=args.top_slices, gates=gates)
        out = args.out or evaluation.default_out(args.predictions)
        written = evaluation.write_evaluation(spark, result, out, source=source)
        print(evaluation.summary(result))
        print(f"  written: {out} ({', '.join(w.rsplit('/', 1)[-1] for w in written)})")
    except BatchscoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the exit code: 2 for a Spark failure a user caused, else 1
        user_error = translate_spark_error(e)
        print(f"error: {user_error if isinstance(user_error, BatchscoreError) else one_line(e)}", file=sys.stderr)
        return 2 if isinstance(user_error, BatchscoreError) else 1
    finally:
        if own_session and spark is not None:
            spark.stop()
    failed = failed_gates(gates, result.metrics)
    for line in failed:
        print(f"gate failed: {line}", file=sys.stderr)
    return GATE_FAILED_EXIT if failed else 0


if __name__ == "__main__":
    sys.exit(main())
