"""Evaluate scored output against labels: `batchscore evaluate --predictions DIR --label COL --score COL`.

Only wiring (the skeleton is jobs/runner.py): arguments -> session ->
`batchscore.evaluation.run.evaluate_run` (metrics on Spark, batchscore/evaluation/metrics.py)
-> metrics JSON and plots (`<predictions>/_evaluation/` or `--out`) -> summary -> gates.
Exit codes: 0 success; 2 a user error (a missing path or column, labels out of range, a bad
`--gate`), one line `error: ...` on stderr; 3 a `--gate` failed, one line `gate failed: ...`
per failed gate on stderr (the metrics are written first); 1 anything else.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from batchscore.core.choices import TASKS
from batchscore.evaluation.gates import failed_gates, parse_gate
from batchscore.jobs.runner import Job, Run, conf_pairs, run_job

__all__ = ["GATE_FAILED_EXIT", "main"]

GATE_FAILED_EXIT = 3


def _options(p: argparse.ArgumentParser) -> None:
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


def _spark_conf(run: Run) -> dict[str, str]:
    return {"spark.master": "local[*]", **conf_pairs(run.args.conf)}


def _evaluate(run: Run) -> tuple[Any, str, list[str]]:
    """The metrics (written as JSON and plots), where they went and the files written."""
    from batchscore.evaluation import run as evaluation  # noqa: PLC0415 - imports pyspark and matplotlib, after --help

    args = run.args
    result, source = evaluation.evaluate_run(
        run.spark, predictions=args.predictions, label=args.label, score=args.score, labels=args.labels,
        key=args.key, task=args.task, threshold=args.threshold, bins=args.bins,
        slice_column=args.slice_column, top_slices=args.top_slices, gates=run.config)
    out = args.out or evaluation.default_out(args.predictions)
    return result, out, evaluation.write_evaluation(run.spark, result, out, source=source)


def _summary(evaluated: tuple[Any, str, list[str]]) -> str:
    from batchscore.evaluation import run as evaluation  # noqa: PLC0415 - imported by _evaluate already

    result, out, written = evaluated
    return f"{evaluation.summary(result)}\n  written: {out} ({', '.join(w.rsplit('/', 1)[-1] for w in written)})"


def _gates(run: Run) -> int:
    """GATE_FAILED_EXIT, with one `gate failed: ...` line each, when a `--gate` failed; else 0."""
    failed = failed_gates(run.config, run.result[0].metrics)
    for line in failed:
        print(f"gate failed: {line}", file=sys.stderr)
    return GATE_FAILED_EXIT if failed else 0


JOB = Job(prog="batchscore evaluate", description=__doc__.splitlines()[0], options=_options,
          load=lambda run: [parse_gate(g) for g in run.args.gate], spark_conf=_spark_conf, run=_evaluate,
          summary=_summary, exit_code=_gates, app_name="batchscore-evaluate", spark_log_level="ERROR", remote=True,
          what="evaluation")


def main(argv: list[str] | None = None, *, spark: Any = None) -> int:
    """Run the evaluation; returns the exit code.

    Args:
        spark: a session to use (and leave running); by default one is built and stopped at the end.
    """
    return run_job(JOB, argv, spark=spark)


if __name__ == "__main__":
    sys.exit(main())
