"""`batchscore server start|stop|status [--port N]`: a local Spark Connect server
(batchscore/session/connect_server.py) that jobs, notebooks and tests reach with
`--remote sc://127.0.0.1:N` or $SPARK_REMOTE.

`start` prints the server's address as its last line once a client's query ran on it; exit 2
with one line when the port is taken or the server failed. `status` prints running or stopped
and the address, exit 0 or 1. `--serve` is the server process itself: a classic session with
the Connect plugin, until SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from batchscore.core.errors import ConfigError
from batchscore.jobs.runner import Job, Run, conf_pairs, run_job
from batchscore.session import connect_server

NOT_RUNNING_EXIT = 1


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=("start", "stop", "status"), help="what to do")
    p.add_argument("--port", type=int, default=connect_server.DEFAULT_PORT,
                   help=f"the server's port on 127.0.0.1 (default {connect_server.DEFAULT_PORT})")
    p.add_argument("--master", default="local[*]", help="start: the server's Spark master (default local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="start: a Spark setting of the server's session (repeatable)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # internal: the server process


def _pairs(run: Run) -> dict[str, str]:
    return conf_pairs(run.args.conf)


def _load(run: Run) -> dict[str, str]:
    if not run.args.serve and run.args.action is None:
        raise ConfigError("expected an action: start, stop or status")
    return _pairs(run)


def _spark_conf(run: Run) -> dict[str, Any] | None:
    """The server process's session: the project's profile, the given conf, the Connect plugin."""
    if not run.args.serve:
        return None
    for key in connect_server.CLIENT_ENV:  # the server's own session is classic
        os.environ.pop(key, None)
    return {"spark.master": run.args.master, **run.config, **connect_server.plugin_conf(run.args.port)}


def _serve(run: Run) -> None:
    """Serve until SIGTERM (or SIGINT); the runner then stops the session."""
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    print(f"{connect_server.SERVING}{connect_server.url(run.args.port)}", flush=True)
    while not stopping.wait(3600):
        pass


def _run(run: Run) -> str | None:
    args = run.args
    if args.serve:
        _serve(run)
        return None
    if args.action == "start":
        return connect_server.start(args.port, master=args.master, conf=run.config)
    if args.action == "stop":
        stopped = connect_server.stop(args.port)
        return f"{'stopped' if stopped else 'not running'} {connect_server.url(args.port)}"
    state = connect_server.status(args.port)
    return (f"running {state.url} (pid {state.pid}, log {state.log})" if state
            else f"stopped {connect_server.url(args.port)}")


def _exit_code(run: Run) -> int:
    """`status`: 0 running, NOT_RUNNING_EXIT stopped."""
    stopped = run.args.action == "status" and not run.args.serve and str(run.result).startswith("stopped ")
    return NOT_RUNNING_EXIT if stopped else 0


JOB = Job(prog="batchscore server", description=__doc__.splitlines()[0], options=_options, load=_load,
          spark_conf=_spark_conf, run=_run, summary=lambda r: r, exit_code=_exit_code,
          app_name="batchscore-connect-server", prestart_daemon=True, what="the Connect server")


def main(argv: list[str] | None = None) -> int:
    serving = "--serve" in (sys.argv[1:] if argv is None else argv)
    if serving:
        connect_server.adopt_orphans()  # its JVM, Python daemon, workers and model hosts end before it does
    code = run_job(JOB, argv)
    if serving and not connect_server.reap_all():
        print("batchscore server: some child processes did not end", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
