"""`batchscore <command> ...`: one command with subcommands, each the job's own `main`.

`batchscore --help` lists the commands (score, check-manifest, report, evaluate, train, demo,
jvm-cache, server), `batchscore COMMAND --help` their options; also `python -m batchscore ...`.
Each subcommand keeps its job's exit codes (0 success, 2 a user error with one
`error: ...` line, 1 anything else; evaluate: 3 a `--gate` failed).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

# subcommand -> (module of the job, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("batchscore.jobs.score", "score a dataset with a TensorFlow model on Spark"),
    "check-manifest": ("batchscore.jobs.check_manifest", "check a scoring run's _manifest.json"),
    "report": ("batchscore.jobs.report", "write an HTML report of a scoring run (figures, phases, quarantine)"),
    "evaluate": ("batchscore.jobs.evaluate", "evaluate scored output against labels"),
    "train": ("batchscore.jobs.train", "train a Keras model on Parquet (tf.distribute, Spark barrier tasks)"),
    "demo": ("batchscore.jobs.demo", "make the demo data and model if missing, then score them"),
    "jvm-cache": ("batchscore.jobs.jvm_cache", "build the JVM class-data archive that cuts local Spark start-up"),
    "server": ("batchscore.jobs.server", "start, stop or check a local Spark Connect server (sc://127.0.0.1:15002)"),
}


def _job_main(name: str) -> Callable[[list[str]], int]:
    module = importlib.import_module(COMMANDS[name][0])  # heavy imports only for the command run
    main: Callable[[list[str]], int] = module.main
    return main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="batchscore",
        description="Offline batch scoring of TensorFlow models on Apache Spark.",
        epilog="Run `batchscore COMMAND --help` for a command's options.",
    )
    from batchscore import __version__  # noqa: PLC0415 - the package is imported already

    parser.add_argument("--version", action="version", version=f"batchscore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, --version, or an unknown command (exit 2 with usage)
        parser.print_help(sys.stderr)
        return 2
    return _job_main(argv[0])(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
