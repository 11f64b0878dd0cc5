"""Run the benchmark: `python -m bench.run --profile quick|full` (tiny: a smoke run while developing).

One process tree, one machine, the same data and model for every contender:
bare single-process TF, Spark's predict_batch_udf, a plain iterator pandas UDF,
batchscore's DataFrame lane and its Arrow lane. The Spark contenders share one
`local[2]` SparkSession, each in Python workers of its own (`own_python_workers`).
Each contender gets one untimed warm-up run (Python
workers started, model loaded, first call traced, output checked against bare
TF's), then `warmup_rounds - 1` more untimed rounds for every contender, then
`runs` timed runs; rounds rotate the order; each run writes to a fresh
directory; the median counts. The extra rounds let the Spark JVM's JIT compiler
settle: HotSpot keeps compiling Spark's planning and per-row write paths for the
first several jobs (bench/README.md, "Where the time goes"), a one-off cost per
JVM that a long scoring job amortises like TF's tracing.
Results: bench/results/<profile>.{json,md,png} (see bench/README.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import Bench, first_line, jvm_pid, own_python_workers, read_predictions, say

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent

# Settings of the one shared SparkSession (applied through batchscore.session.builder.build_session).
SPARK_CONF = {
    "spark.master": "local[2]",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "4g",  # the CNN's 48 KB rows pass through the JVM
    "spark.sql.shuffle.partitions": "4",  # the DataFrame lane's small row-count aggregation
    "spark.ui.showConsoleProgress": "false",
}


@dataclass(frozen=True)
class Profile:
    name: str
    mlp_rows: int
    mlp_rows_per_file: int
    cnn_rows: int
    cnn_rows_per_file: int
    runs: int  # timed runs per contender (median)
    warmup_rounds: int  # untimed rounds of every contender before the timed runs (the first checks outputs)
    batch_sizes: tuple[int, ...]  # batch-size sweep, lanes on the MLP
    sweep_rows: tuple[int, ...]  # rows sweep, lanes on the MLP
    sweep_runs: int
    mlp_batch: int = 4096  # rows per model call, every contender
    cnn_batch: int = 256
    cnn_arrow_batch: int = 1024  # spark.sql.execution.arrow.maxRecordsPerBatch for the CNN
    # a larger CNN point, bare TF and the lanes only (0: none): per-run fixed cost against per-image cost
    cnn_large_rows: int = 0


PROFILES = {
    "tiny": Profile("tiny", mlp_rows=20_000, mlp_rows_per_file=2_500, cnn_rows=160, cnn_rows_per_file=20,
                    runs=3, warmup_rounds=1, batch_sizes=(1024, 8192), sweep_rows=(20_000, 60_000), sweep_runs=3),
    "quick": Profile("quick", mlp_rows=100_000, mlp_rows_per_file=12_500, cnn_rows=1_600, cnn_rows_per_file=200,
                     runs=3, warmup_rounds=2, batch_sizes=(1024, 8192), sweep_rows=(100_000, 300_000),
                     sweep_runs=3),
    # full CNN: ~15-25 s a contender run on 2 cores (bare TF does ~450 images/s)
    "full": Profile("full", mlp_rows=1_000_000, mlp_rows_per_file=125_000, cnn_rows=6_000,
                    cnn_rows_per_file=750, runs=5, warmup_rounds=3, batch_sizes=(1024, 4096, 16384),
                    sweep_rows=(1_000_000, 3_000_000, 10_000_000), sweep_runs=3, cnn_large_rows=24_000),
}
CONTENDERS = ("bare_tf", "predict_batch_udf", "pandas_udf", "dataframe_lane", "arrow_lane")
LANES = ("dataframe_lane", "arrow_lane")


def _set_confs(spark: Any, conf: dict[str, str]) -> dict[str, str | None]:
    old = {}
    for k, v in conf.items():
        old[k] = spark.conf.get(k, None)
        spark.conf.set(k, v)
    return old


def _restore_confs(spark: Any, old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            spark.conf.unset(k)
        else:
            spark.conf.set(k, v)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"timed_runs": 0}
    rps = [r["rows_per_second"] for r in ok]
    secs = [r["seconds"] for r in ok]
    rss = [r["peak_worker_rss_mb"] for r in ok if r.get("peak_worker_rss_mb") is not None]
    return {
        "timed_runs": len(ok),
        "median_seconds": round(statistics.median(secs), 4),
        "median_rows_per_second": round(statistics.median(rps), 1),
        "min_rows_per_second": round(min(rps), 1),
        "max_rows_per_second": round(max(rps), 1),
        "peak_worker_rss_mb": round(max(rss), 1) if rss else None,
        "median_peak_worker_rss_mb": round(statistics.median(rss), 1) if rss else None,
    }


def rotated(items: list[Any], r: int) -> list[Any]:
    """`items` starting at position r (mod len): round r's order."""
    k = r % len(items) if items else 0
    return items[k:] + items[:k]


def compare(bench: Bench, w: Any, contenders: list[Any], runs: int, warmup_rounds: int = 1) -> dict[str, Any]:
    """`warmup_rounds` untimed rounds of every contender (the first checks outputs), then `runs`
    timed rounds; every round rotates the order."""
    old = _set_confs(bench.spark, w.spark_conf)
    result: dict[str, Any] = {
        "title": w.title, "rows": w.rows, "data": w.data_path, "model": w.model_path,
        "batch_size": w.batch_size, "spark_conf": dict(w.spark_conf), "contenders": {},
        "runs": runs, "warmup_rounds": warmup_rounds,
    }
    recs = {c.key: {"label": c.label, "available": True, "warmup": None, "more_warmups": [], "runs": []}
            for c in contenders}
    try:
        for c in contenders:
            try:
                own_python_workers(bench.spark, c.key)
                c.prepare(w)
            except Exception as e:  # noqa: BLE001
                c.available, c.unavailable_reason = False, f"prepare failed: {first_line(e)}"
        _checked_warmup(bench, w, contenders, recs)
        live = [c for c in contenders if c.available]
        for r in range(1, warmup_rounds):
            for c in rotated(live, r):
                rec = bench.measure(c, f"warmup{r + 1}")
                recs[c.key]["more_warmups"].append(rec)
                say(f"[{w.name}] warm-up {r + 1}/{warmup_rounds} {c.key}: "
                    + (rec.get("error") or f"{rec['seconds']:.2f} s"))
        _timed_rounds(bench, w, live, recs, runs)
        for c in contenders:
            _finish_record(c, recs[c.key])
    finally:
        _restore_confs(bench.spark, old)
    result["contenders"] = recs
    _add_ratios(result)
    return result


def _checked_warmup(bench: Bench, w: Any, contenders: list[Any], recs: dict[str, Any]) -> None:
    """The first untimed round, in the given order: each output is checked against bare TF's."""
    reference = None
    for c in contenders:
        if not c.available:
            continue
        say(f"[{w.name}] warm-up {c.key}")
        rec = bench.measure(c, "warmup", keep=True)
        recs[c.key]["warmup"] = rec
        if "error" in rec:
            c.available, c.unavailable_reason = False, f"warm-up failed: {rec['error']}"
            continue
        if "wrong_lane" in rec:
            c.available = False
            c.unavailable_reason = (f"not available: input.lane: {c.lane} ran the '{rec['wrong_lane']}' "
                                    "lane (the manifest's `lane`)")
        try:
            ids, preds = read_predictions(rec["out"])
            if reference is None and c.key == "bare_tf":
                reference = (ids, preds)
            elif reference is not None:
                import numpy as np

                same_ids = len(ids) == len(reference[0]) and bool((ids == reference[0]).all())
                rec["same_ids_as_bare_tf"] = same_ids
                rec["max_abs_diff_vs_bare_tf"] = (float(np.max(np.abs(preds - reference[1])))
                                                  if same_ids and len(ids) else None)
        except Exception as e:  # noqa: BLE001
            rec["compare_error"] = first_line(e)
        say(f"[{w.name}] warm-up {c.key}: {rec['seconds']:.2f} s"
            + (f" ({c.unavailable_reason})" if not c.available else ""))
    for c in contenders:
        warm = recs[c.key]["warmup"]
        if warm and "out" in warm:
            bench.drop_out(warm.pop("out"))


def _timed_rounds(bench: Bench, w: Any, live: list[Any], recs: dict[str, Any], runs: int) -> None:
    for r in range(runs):
        for c in rotated(live, r):
            rec = bench.measure(c, f"run{r + 1}")
            if "wrong_lane" in rec and "error" not in rec:
                rec["error"] = f"ran the '{rec['wrong_lane']}' lane"
            recs[c.key]["runs"].append(rec)
            msg = rec.get("error") or f"{rec['seconds']:.2f} s, {rec['rows_per_second']:,.0f} rows/s"
            say(f"[{w.name}] {c.key} run {r + 1}/{runs}: {msg}")


def _finish_record(c: Any, rc: dict[str, Any]) -> None:
    """A contender's record after the rounds: availability, medians, workers, model loads, errors."""
    rc["available"] = c.available
    if c.unavailable_reason:
        rc["unavailable_reason"] = c.unavailable_reason
    rc.update(summarise(rc["runs"]) if c.available else {})
    loads = c.loads() if c.available or c.key == "bare_tf" else None
    all_runs = [x for x in [rc["warmup"], *rc["more_warmups"], *rc["runs"]] if x and "error" not in x]
    workers = sorted({p for x in all_runs for p in x.get("workers", [])})
    rc["workers"] = workers
    if loads is not None:
        rc["model_loads"] = loads[0]
        if loads[1]:
            rc["loading_pids"] = loads[1]
    errors = [x["error"] for x in rc["runs"] if "error" in x]
    if errors:
        rc["errors"] = errors


def _add_ratios(result: dict[str, Any]) -> None:
    cs = result["contenders"]

    def rate(key: str) -> float | None:
        c = cs.get(key) or {}
        return c.get("median_rows_per_second") if c.get("available") else None

    bare, pbu = rate("bare_tf"), rate("predict_batch_udf")
    for c in cs.values():
        r = c.get("median_rows_per_second") if c.get("available") else None
        c["x_bare_tf"] = round(r / bare, 3) if r and bare else None
        c["x_predict_batch_udf"] = round(r / pbu, 3) if r and pbu else None


def batch_sweep(bench: Bench, w: Any, lanes: list[Any], sizes: tuple[int, ...], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"workload": w.name, "rows": w.rows, "batch_sizes": list(sizes), "lanes": {}}
    for lane in lanes:
        points = []
        for bs in sizes:
            lane.prepare(dataclasses.replace(w, batch_size=bs))
            recs = []
            for r in range(runs):
                rec = bench.measure(lane, f"bs{bs}-run{r + 1}")
                recs.append(rec)
                say(f"[sweep batch] {lane.key} batch {bs} run {r + 1}/{runs}: "
                     + (rec.get("error") or f"{rec['seconds']:.2f} s"))
            points.append({"batch_size": bs, "runs": recs, **summarise(recs)})
        out["lanes"][lane.key] = points
    return out


def rows_sweep(bench: Bench, workloads: list[Any], lanes: list[Any], runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": [w.rows for w in workloads], "lanes": {lane.key: [] for lane in lanes}}
    for w in workloads:
        recs: dict[str, list[dict[str, Any]]] = {lane.key: [] for lane in lanes}
        for lane in lanes:
            lane.prepare(w)
        for r in range(runs):
            for lane in lanes:
                rec = bench.measure(lane, f"rows{w.rows}-run{r + 1}")
                recs[lane.key].append(rec)
                say(f"[sweep rows] {lane.key} {w.rows:,} rows run {r + 1}/{runs}: "
                     + (rec.get("error") or f"{rec['seconds']:.2f} s"))
        for lane in lanes:
            out["lanes"][lane.key].append({"rows": w.rows, "data": w.data_path, "runs": recs[lane.key],
                                           **summarise(recs[lane.key])})
    for lane in lanes:
        out["lanes"][lane.key + "_fit"] = _linear_fit(out["lanes"][lane.key])
    return out


def _linear_fit(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """seconds = a + b * rows over the sweep's medians; r2 near 1 means linear."""
    pts = [(p["rows"], p["median_seconds"]) for p in points if p.get("median_seconds")]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    b = sum((x - mx) * (y - my) for x, y in pts) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for _, y in pts)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in pts)
    # two points always fit a line: R² says something only from three on
    r2 = round(1 - ss_res / ss_tot, 5) if ss_tot > 0 and n >= 3 else None
    return {"intercept_seconds": round(a, 3), "seconds_per_million_rows": round(b * 1e6, 3), "r2": r2,
            "points": n}


def _parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(x.replace("_", "")) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--rows", type=int, help="MLP rows (overrides the profile)")
    p.add_argument("--cnn-rows", type=int, help="CNN rows (overrides the profile)")
    p.add_argument("--runs", type=int, help="timed runs per contender (>= 3 for a reportable median)")
    p.add_argument("--warmup-rounds", type=int, help="untimed rounds of every contender before the timed runs")
    p.add_argument("--batch-sizes", type=_parse_ints, help="batch-size sweep, e.g. 1024,8192")
    p.add_argument("--sweep-rows", type=_parse_ints, help="rows sweep, e.g. 1000000,3000000,10000000")
    p.add_argument("--no-sweeps", action="store_true", help="only the side-by-side comparison")
    p.add_argument("--workloads", default="mlp,cnn", help="comma list of mlp, cnn")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list of " + ", ".join(CONTENDERS))
    p.add_argument("--master", default=SPARK_CONF["spark.master"], help="Spark master (default local[2])")
    p.add_argument("--work", default=str(BENCH_DIR / "work"), help="data, models and scratch outputs")
    p.add_argument("--results", help="results directory (default bench/results for quick and full "
                                     "without overrides, else <work>/results)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """What to run, from the command line: the profile (with overrides) and where results go."""

    profile: Profile
    name: str  # the profile's name, `-custom` when anything was overridden
    results_dir: str
    workloads: list[str]  # mlp, cnn
    contenders: list[str]


def plan_run(args: argparse.Namespace) -> Plan | str:
    """The run's plan, or an error message (an unknown workload or contender)."""
    profile = PROFILES[args.profile]
    overrides = {k: v for k, v in {
        "mlp_rows": args.rows, "cnn_rows": args.cnn_rows, "runs": args.runs,
        "warmup_rounds": args.warmup_rounds,
        "batch_sizes": args.batch_sizes, "sweep_rows": args.sweep_rows}.items() if v}
    custom = bool(overrides) or args.no_sweeps or args.workloads != "mlp,cnn" \
        or args.contenders != ",".join(CONTENDERS) or args.master != SPARK_CONF["spark.master"]
    if overrides:
        profile = dataclasses.replace(profile, **overrides)
    results_dir = args.results or (str(BENCH_DIR / "results") if profile.name in ("quick", "full") and not custom
                                   else os.path.join(args.work, "results"))
    workload_names = [x.strip() for x in args.workloads.split(",") if x.strip()]
    wanted = [x.strip() for x in args.contenders.split(",") if x.strip()]
    bad = sorted(set(workload_names) - {"mlp", "cnn"}) + sorted(set(wanted) - set(CONTENDERS))
    if bad:
        return f"unknown workload or contender '{bad[0]}'"
    return Plan(profile, profile.name + ("-custom" if custom else ""), results_dir, workload_names, wanted)


def _set_environment() -> None:
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # the bare TF child and the Spark workers import `bench` and `udfs` from this checkout
    path = os.environ.get("PYTHONPATH", "")
    if str(PROJECT_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), path) if p)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def make_workloads(work: str, plan: Plan, *, sweeps: bool) -> tuple[list[Any], list[Any]]:
    """The compared workloads (data and models made if missing), and the rows sweep's MLP workloads."""
    from bench.workloads import cnn_workload, mlp_workload

    profile, names = plan.profile, plan.workloads
    workloads = []
    if "mlp" in names:
        workloads.append(mlp_workload(work, profile.mlp_rows, rows_per_file=profile.mlp_rows_per_file,
                                      batch_size=profile.mlp_batch))
    if "cnn" in names:
        workloads.append(cnn_workload(work, profile.cnn_rows, rows_per_file=profile.cnn_rows_per_file,
                                      batch_size=profile.cnn_batch, arrow_batch=profile.cnn_arrow_batch))
    if "cnn" in names and profile.cnn_large_rows and sweeps:
        cnn_large = cnn_workload(work, profile.cnn_large_rows, rows_per_file=profile.cnn_rows_per_file,
                             batch_size=profile.cnn_batch, arrow_batch=profile.cnn_arrow_batch)
        workloads.append(dataclasses.replace(cnn_large, name="cnn_large"))
    sweep_workloads = []
    if sweeps and "mlp" in names:
        for n in profile.sweep_rows:
            sweep_workloads.append(mlp_workload(work, n, rows_per_file=profile.mlp_rows_per_file,
                                                batch_size=profile.mlp_batch))
    return workloads, sweep_workloads


def make_contenders(w: Any, wanted: list[str], spark: Any, env: dict[str, str], loads_root: str) -> list[Any]:
    """The contenders asked for, in CONTENDERS order; the large CNN point runs bare TF and the lanes only."""
    from bench import contenders as cm

    large = w.name == "cnn_large"
    cs: list[Any] = []
    if "bare_tf" in wanted:
        cs.append(cm.BareTF(env))
    if "predict_batch_udf" in wanted and not large:
        cs.append(cm.PredictBatchUDF(spark, loads_root))
    if "pandas_udf" in wanted and not large:
        cs.append(cm.PandasIterUDF(spark, loads_root))
    if "dataframe_lane" in wanted:
        cs.append(cm.DataFrameLane(spark))
    if "arrow_lane" in wanted:
        cs.append(cm.ArrowLane(spark))
    return cs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_run(args)
    if isinstance(plan, str):
        print(f"error: {plan}", file=sys.stderr)
        return 2
    profile = plan.profile
    if profile.runs < 3:
        say(f"warning: {profile.runs} timed runs; the protocol asks for at least 3")
    _set_environment()

    from batchscore.session.builder import build_session
    from bench import report
    from bench.monitor import WorkerMonitor

    started = dt.datetime.now(dt.timezone.utc)
    work = os.path.abspath(args.work)
    say(f"profile {plan.name}: preparing data and models under {work}")
    workloads, sweep_workloads = make_workloads(work, plan, sweeps=not args.no_sweeps)
    sweeps = not args.no_sweeps and "mlp" in plan.workloads
    spark_conf = {**SPARK_CONF, "spark.master": args.master}
    spark = build_session(spark_conf, app_name="batchscore-bench")
    spark.sparkContext.setLogLevel("ERROR")
    monitor = WorkerMonitor()
    stamp = started.strftime("%Y%m%dT%H%M%S")
    out_root = os.path.join(work, "out", stamp)
    loads_root = os.path.join(work, "loads", stamp)
    bench = Bench(spark, jvm_pid(spark), monitor, out_root)
    results = _results_header(plan, started, spark, spark_conf)
    results["machine"] = report.machine_info(spark)
    env = {**os.environ}
    all_contenders: list[Any] = []
    try:
        for w in workloads:
            cs = make_contenders(w, plan.contenders, spark, env, loads_root)
            all_contenders += cs
            _run_workload(bench, w, cs, plan, results, sweep_workloads if sweeps else None)
        results["pool_pings"] = bench.pings
        results["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        results["targets"] = report.evaluate_targets(results)
        paths = report.write_all(results, plan.results_dir, plan.name)
        print(report.markdown(results))
        say("wrote " + ", ".join(paths))
    finally:
        for c in all_contenders:
            c.close()
        monitor.close()
        spark.stop()
        shutil.rmtree(out_root, ignore_errors=True)
        shutil.rmtree(loads_root, ignore_errors=True)
    return 0


def _results_header(plan: Plan, started: dt.datetime, spark: Any, spark_conf: dict[str, str]) -> dict[str, Any]:
    return {
        "profile": plan.name, "base_profile": plan.profile.name, "settings": dataclasses.asdict(plan.profile),
        "started_at": started.isoformat(timespec="seconds"), "spark_conf": spark_conf,
        "spark_conf_effective": {k: spark.conf.get(k, None) for k in (
            "spark.sql.execution.arrow.maxRecordsPerBatch", "spark.python.worker.reuse",
            "spark.sql.files.maxPartitionBytes", "spark.sql.shuffle.partitions")},
        "workloads": {}, "sweeps": {},
    }


def _run_workload(bench: Bench, w: Any, cs: list[Any], plan: Plan, results: dict[str, Any],
                  sweep_workloads: list[Any] | None) -> None:
    """Compare the contenders on `w`; after the MLP, the sweeps (the lanes only; None: no sweeps)."""
    from bench import contenders as cm

    profile = plan.profile
    large = w.name == "cnn_large"  # the pools and the JVM are warm from the 6k CNN: one warm-up round
    say(f"[{w.name}] {w.title}: {', '.join(c.key for c in cs)}")
    results["workloads"][w.name] = compare(bench, w, cs, profile.sweep_runs if large else profile.runs,
                                           1 if large else profile.warmup_rounds)
    for c in cs:
        if isinstance(c, cm.BareTF):
            c.close()
    if sweep_workloads is not None and w.name == "mlp":
        lanes = [c for c in cs if c.key in LANES and c.available]
        if not lanes:
            say("no lane available: sweeps skipped")
        else:
            results["sweeps"]["batch_size"] = batch_sweep(bench, w, lanes, profile.batch_sizes, profile.sweep_runs)
            results["sweeps"]["rows"] = rows_sweep(bench, sweep_workloads, lanes, profile.sweep_runs)


if __name__ == "__main__":
    sys.exit(main())
