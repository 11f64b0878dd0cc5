"""`batchscore demo`: make the demo data and model if missing, score them, evaluate.

The same run as `make demo`, without spark-submit: the session is built in this
process from the config's `spark:` section (`local[*]` in conf/demo.yaml).
"""
from __future__ import annotations

import argparse
import os
import sys

from batchscore import conf_dir
from batchscore.jobs.runner import Job, Run, run_job


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/demo", help="where the demo data, model and predictions go")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of demo data to make (when missing)")
    p.add_argument("--config", default=os.path.join(conf_dir(), "demo.yaml"), help="the scoring config")
    p.add_argument("--quiet", action="store_true", help="print only the summaries")


def _demo(run: Run) -> int:
    """The first failing step's exit code, else evaluate's."""
    from batchscore import demo_data  # noqa: PLC0415 - heavy imports after --help
    from batchscore.jobs import evaluate, score  # noqa: PLC0415 - heavy imports after --help

    args = run.args
    code = demo_data.main(["--out", args.out, "--rows", str(args.rows)])
    if code:
        return code
    out = args.out.rstrip("/")
    code = score.main(["--config", args.config, *(["--quiet"] if args.quiet else []),
                       "--set", f"input.path={out}/features", "--set", f"model.path={out}/model",
                       "--set", f"output.path={out}/predictions", "--set", "output.mode=overwrite"])
    if code:
        return code
    return evaluate.main(["--predictions", f"{out}/predictions", "--label", "defaulted",
                          "--score", "default_probability"])


# Each step prints its own summary and error lines; the demo passes on the exit code.
JOB = Job(prog="batchscore demo", description=__doc__.splitlines()[0], options=_options, run=_demo,
          summary=lambda code: None, exit_code=lambda run: int(run.result), what="the demo")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
