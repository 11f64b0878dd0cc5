"""Where a run's CPU goes: `python -m bench.cpu` (`make bench-cpu`).

Bare TF, each lane and `predict_batch_udf` score the MLP benchmark data (1M rows; `--workload cnn`: the
6,000 CNN images) `--warm` times untimed,
then `--runs` times while this counts CPU seconds per run in every process involved:
the bare TF process; the Spark JVM split by thread (JIT compiler threads, task threads,
GC, the rest: scheduler, py4j, listeners); the Python workers below the JVM; the driver's
Python. The counts come from /proc/<pid>/task/*/stat (Linux), so they include what
Spark's task metrics leave out (the JIT compiler, GC, the Python workers). `--warm 2`
and `--warm 12` side by side show how much of a run is the JVM still compiling.

Writes bench/results/cpu-warm<N>.md (CNN: cpu-cnn-warm<N>.md) and prints it.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict

import psutil

from bench import contenders as cm
from bench.harness import jvm_pid, own_python_workers
from bench.monitor import cpu_seconds, spark_python_workers
from bench.run import BENCH_DIR, PROFILES, SPARK_CONF
from bench.workloads import cnn_workload, mlp_workload

_TICK = os.sysconf("SC_CLK_TCK")

CpuSeconds = defaultdict[str, float]  # CPU seconds by thread group or worker


def _thread_group(name: str) -> str:
    if "CompilerThre" in name:
        return "JIT compiler"
    if name.startswith("Executor task"):
        return "task threads"
    if name.startswith(("GC Thread", "G1 ")):
        return "GC"
    return "other JVM threads"


def jvm_threads(pid: int) -> CpuSeconds:
    """CPU seconds so far of each thread group of process `pid`."""
    out: CpuSeconds = defaultdict(float)
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[_thread_group(name)] += (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return out


def _cpu(p: psutil.Process) -> float:
    try:
        return cpu_seconds(p)
    except psutil.Error:  # a worker that exited counts nothing
        return 0.0


def snapshot(driver: psutil.Process, jvm_pid: int, bare_pid: int | None, pool: str) -> CpuSeconds:
    """CPU seconds so far by group; the Python workers of `pool` one by one (`worker <pid>`)."""
    snap = jvm_threads(jvm_pid)
    for p in spark_python_workers(jvm_pid, pool):
        snap[f"worker {p.pid}"] = _cpu(p)
    snap["driver Python"] = _cpu(driver)
    if bare_pid is not None:
        snap["bare TF process"] = _cpu(psutil.Process(bare_pid))
    return snap


def used_per_run(before: CpuSeconds, after: CpuSeconds, runs: int) -> CpuSeconds:
    """CPU per run by group; a worker started in between counts from zero."""
    used: CpuSeconds = defaultdict(float)
    for k, v in after.items():
        group = "Python workers" if k.startswith("worker ") else k
        used[group] += (v - before.get(k, 0.0)) / runs
    return used


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--warm", type=int, default=2, help="untimed runs of each contender first")
    p.add_argument("--runs", type=int, default=4, help="measured runs of each contender")
    p.add_argument("--workload", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--rows", type=int, help="default: the full profile's rows for the workload")
    p.add_argument("--work", default=str(BENCH_DIR / "work"))
    args = p.parse_args(argv)

    from batchscore.session.builder import build_session

    full = PROFILES["full"]
    if args.workload == "cnn":
        w = cnn_workload(args.work, args.rows or full.cnn_rows, rows_per_file=full.cnn_rows_per_file,
                         batch_size=full.cnn_batch, arrow_batch=full.cnn_arrow_batch)
    else:
        w = mlp_workload(args.work, rows=args.rows or full.mlp_rows, rows_per_file=full.mlp_rows_per_file,
                         batch_size=full.mlp_batch)
    spark = build_session({**SPARK_CONF, **w.spark_conf}, app_name="batchscore-bench-cpu")
    spark.sparkContext.setLogLevel("ERROR")
    jvm = jvm_pid(spark)
    driver = psutil.Process()
    bare = cm.BareTF({**os.environ})
    scratch = tempfile.mkdtemp(prefix="bench-cpu-")
    lanes = [cm.ArrowLane(spark), cm.DataFrameLane(spark), cm.PredictBatchUDF(spark, os.path.join(scratch, "loads"))]
    rows: dict[str, tuple[float, CpuSeconds]] = {}
    try:
        for c in [bare, *lanes]:
            own_python_workers(spark, c.key)
            c.prepare(w)
            bare_pid = c.monitor_target(jvm)[1] if c is bare else None
            walls = []
            for i in range(args.warm + args.runs):
                out = os.path.join(scratch, f"{c.key}-{i}")
                if i == args.warm:
                    before = snapshot(driver, jvm, bare_pid, c.key)
                t0 = time.perf_counter()
                c.run(out)
                if i >= args.warm:
                    walls.append(time.perf_counter() - t0)
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(out + "_quarantine", ignore_errors=True)
            used = used_per_run(before, snapshot(driver, jvm, bare_pid, c.key), args.runs)
            if c is bare:  # the JVM, the workers and this process idle while bare TF runs
                used = defaultdict(float, {"bare TF process": used["bare TF process"]})
            rows[c.label] = (statistics.median(walls), used)
            print(f"[bench.cpu] {c.label}: {statistics.median(walls):.2f} s", file=sys.stderr, flush=True)
    finally:
        bare.close()
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    groups = ["bare TF process", "Python workers", "task threads", "JIT compiler", "GC", "other JVM threads",
              "driver Python"]
    lines = [
        f"# CPU seconds per run, {w.title} (`python -m bench.cpu --workload {w.name} --warm {args.warm} "
        f"--runs {args.runs}`)",
        "",
        f"Each contender ran {args.warm} untimed runs first; figures are per run, averaged over "
        f"{args.runs} runs; wall time is the median. {os.cpu_count()} cores, Spark `{SPARK_CONF['spark.master']}`.",
        "",
        "| contender | wall s | " + " | ".join(groups) + " | total CPU s |",
        "|---|---:|" + "---:|" * (len(groups) + 1),
    ]
    for label, (wall, used) in rows.items():
        cells = [f"{used.get(g, 0.0):.2f}" for g in groups]
        lines.append(f"| {label} | {wall:.2f} | " + " | ".join(cells) + f" | {sum(used.values()):.2f} |")
    text = "\n".join(lines) + "\n"
    name = f"cpu-warm{args.warm}.md" if w.name == "mlp" else f"cpu-{w.name}-warm{args.warm}.md"
    path = BENCH_DIR / "results" / name
    path.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
