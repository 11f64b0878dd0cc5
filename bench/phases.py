"""Phase profile of one cold scoring run: where every second of `python -m jobs.score` goes.

    python -m bench.phases --rows 2000000 --lane arrow --out bench/results/phases-after.md
    python -m bench.phases --manifest OUT/_manifest.json      # a profile of a run made elsewhere
    python -m bench.phases --conf spark.python.daemon.module=pyspark.daemon --env BATCHSCORE_JVM_CACHE=off
                                                              # without the daemon's preload and the class archive

Runs the job as a fresh command (MLP workload of bench/workloads.py, 250,000-row files,
model batch 10,000, local[2]), times the command from start to exit, then reads the run's
manifest (`seconds_by_phase`, `workers`) and writes a Markdown table. The load average is
recorded before and after: the profile of a shared machine is a sketch, not a benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

from bench.workloads import MLP_FEATURES, ensure_mlp_data, ensure_model

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "work")


def run_job(*, rows: int, lane: str, root: str, master: str, conf: dict[str, str] | None = None,
            env: dict[str, str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `python -m jobs.score` once on fresh output; returns (manifest, timing of the command)."""
    data = ensure_mlp_data(root, rows, rows_per_file=250_000)
    model = ensure_model(root, "mlp")
    out = os.path.join(root, "phases-out", lane)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out + "_quarantine", ignore_errors=True)
    config = os.path.join(root, f"phases-{lane}.yaml")
    with open(config, "w", encoding="utf-8") as fh:
        json.dump({  # JSON is YAML
            "spark": {"spark.master": master, **(conf or {})},
            "input": {"path": data, "lane": lane, "columns": {"features": list(MLP_FEATURES)}},
            "model": {"path": model, "batch_size": 10_000},
            "output": {"path": out, "mode": "overwrite", "keep_columns": ["id"], "rename": {"output_0": "prediction"}},
        }, fh)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    load_before = os.getloadavg()
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "jobs.score", "--config", config], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"jobs.score failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    stop = next((line for line in proc.stderr.splitlines() if "session stopped" in line), "")
    with open(os.path.join(out, "_manifest.json"), encoding="utf-8") as fh:
        manifest = json.load(fh)
    return manifest, {"command_seconds": round(wall, 2), "load_before": load_before,
                      "load_after": os.getloadavg(), "stop_line": stop.split(": ", 1)[-1]}


def profile(manifest: dict[str, Any], timing: dict[str, Any] | None = None, *, title: str = "") -> str:
    """The Markdown profile of one run's manifest (and the command's timing, when it was run here)."""
    phases = manifest.get("seconds_by_phase", {})
    total = manifest.get("seconds_total") or 0.0
    lines = [f"# {title or 'Phase profile'}", "",
             f"{manifest.get('rows_in', 0):,} rows, {manifest.get('lane')} lane, "
             f"model loads {manifest.get('model_loads')}, Python workers {manifest.get('python_workers')}; "
             f"{platform.machine()}, {os.cpu_count()} cores, Spark {manifest.get('spark', {}).get('version')}, "
             f"master {manifest.get('spark', {}).get('master')}.", ""]
    if timing:
        lines += [f"Command wall time (start to exit): {timing['command_seconds']:.2f} s; "
                  f"load average before {_load(timing['load_before'])}, after {_load(timing['load_after'])} "
                  "(a profile is worth reading only from a machine with nothing else running).",
                  f"Session stop (after the manifest): {timing.get('stop_line') or 'not logged'}.", ""]
    lines += ["| phase | seconds | share |", "|---|---:|---:|"]
    for name, secs in phases.items():
        lines.append(f"| {name} | {secs:.3f} | {100 * secs / total if total else 0:.0f}% |")
    lines += [f"| **sum of phases** | **{sum(phases.values()):.3f}** | |",
              f"| seconds_total | {total:.3f} | |", f"| seconds_scoring | {manifest.get('seconds_scoring')} | |", ""]
    workers = manifest.get("workers") or {}
    if workers:
        keys = sorted({k for w in workers.values() for k in w})
        lines += ["Python workers (seconds; `started_s` after the process start):", "",
                  "| worker | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        lines += [f"| {w} | " + " | ".join(str(v.get(k, "")) for k in keys) + " |" for w, v in workers.items()]
        lines.append("")
    return "\n".join(lines)


def _load(avg: tuple[float, float, float] | list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.phases", description=__doc__.splitlines()[0])
    p.add_argument("--manifest", help="profile this manifest instead of running the job")
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--lane", choices=("arrow", "dataframe"), default="arrow")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--root", default=ROOT, help="where the workload's data and model live")
    p.add_argument("--title", default="")
    p.add_argument("--out", help="write the Markdown here (default: print it)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark conf for the job, e.g. spark.python.daemon.module=pyspark.daemon (repeatable)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="an environment variable for the job, e.g. BATCHSCORE_JVM_CACHE=off (repeatable)")
    args = p.parse_args(argv)
    if args.manifest:
        with open(args.manifest, encoding="utf-8") as fh:
            text = profile(json.load(fh), title=args.title)
    else:
        manifest, timing = run_job(rows=args.rows, lane=args.lane, root=args.root, master=args.master,
                                   conf=dict(c.split("=", 1) for c in args.conf),
                                   env=dict(e.split("=", 1) for e in args.env))
        text = profile(manifest, timing, title=args.title or f"Cold run, {args.rows:,} rows, {args.lane} lane")
    if args.out:
        with open(args.out, "a" if os.path.exists(args.out) else "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
