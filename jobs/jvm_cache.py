"""`batchscore jvm-cache [--path [--class-path CP] | --force]`: the JVM class-data archive that
cuts local Spark start-up (the archive itself: batchscore/session/jvm_cache.py).

Exit 0; building prints the archive's path, `--path` prints the one a local session here
would use ("" if none).
"""
from __future__ import annotations

import argparse
import os
import sys

from batchscore.jobs.runner import Job, Run, run_job
from batchscore.session import jvm_cache


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="store_true", help="print the archive local sessions use ('' if none) and exit")
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p.add_argument("--class-path", help="with --path: the session's driver classpath (default: the connector jars)")
    p.add_argument("--dump", help=argparse.SUPPRESS)  # internal: the child process that dumps


def _run(run: Run) -> None:
    args = run.args
    if args.dump:
        jvm_cache.dump(args.dump)
    elif args.path:
        from batchscore.session.builder import local_driver_class_path  # noqa: PLC0415 - pyspark is imported there

        path = jvm_cache.archive_path(local_driver_class_path() if args.class_path is None else args.class_path)
        print(path if path and os.path.isfile(path) else "")
    else:
        jvm_cache.build(force=args.force)


# `build` prints what it did; a failed build raises SystemExit with its reason.
JOB = Job(prog="batchscore jvm-cache", description=jvm_cache.__doc__.split("\n\n")[0], options=_options, run=_run,
          summary=lambda _: None, what="jvm-cache")


def main(argv: list[str] | None = None) -> int:
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
