"""The cold whole-command benchmark: `python -m bench.cold --profile full|quick|tiny|cnn`.

Every contender is a whole command started fresh (`bench.coldrun.command`), timed
from its start to its exit with the output committed, alone on the machine
(`bench.quiet`): the harness's own leftovers are ended before each run, foreign
Spark/Ray/benchmark processes, the load average, the machine's CPU busy before the
run and the foreign CPU during it are recorded, and a contended run is repeated
(`--max-repeats`). Per workload, rounds sweep every rows point with the contender
order rotated; each point's figure is the median of its runs; the medians are
fitted to `seconds = fixed + slope x rows`. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench import coldrun, quiet
from bench.coldrun import CONTENDERS, LANES, PROJECT_ROOT
from bench.workloads import IMAGE_SHAPE, MLP_FEATURES, Workload

WORK = str(PROJECT_ROOT / "bench" / "work")
RESULTS = str(PROJECT_ROOT / "bench" / "results")


@dataclass(frozen=True)
class Profile:
    """Points, runs and contenders of one benchmark size."""

    name: str
    workload: str  # "mlp" | "cnn"
    points: tuple[int, ...]  # rows (images for the CNN) per sweep point
    rows_per_file: int
    batch_size: int  # rows per model call, every contender
    runs: int  # rounds: runs per point and contender (median)
    max_repeats: int  # extra attempts of a slot whose run was contended
    ratio_rows: tuple[int, ...]  # where the ratios vs bare TF are given
    contenders: tuple[str, ...] = CONTENDERS
    arrow_batch: int | None = None  # spark.sql.execution.arrow.maxRecordsPerBatch (CNN: 48 KB rows)
    unit: int = 1_000_000  # the slope's unit of rows


M = 1_000_000
PROFILES = {
    "tiny": Profile("tiny", "mlp", (20_000, 40_000), 5_000, 10_000, runs=1, max_repeats=0,
                    ratio_rows=(20_000, 40_000)),
    "quick": Profile("quick", "mlp", (100_000, 300_000), 50_000, 10_000, runs=3, max_repeats=1,
                     ratio_rows=(100_000, 300_000)),
    # no 20M point: its six cold runs a round (bare TF alone ~45 s at 20M here) would push make bench past 45 min
    # 3 rounds (the design card's median of 3): a round is ~11 min of timed runs plus ~2 min of checks here, once
    # load1 stopped counting as contention (it made 13 needless repeats in the first sweep)
    "full": Profile("full", "mlp", (1 * M, 2 * M, 5 * M, 10 * M), 250_000, 10_000, runs=3, max_repeats=1,
                    ratio_rows=(2 * M, 10 * M)),
    # the compute-heavy workload, bare TF and the lanes (make bench-cnn)
    "cnn": Profile("cnn", "cnn", (1_500, 6_000), 750, 256, runs=3, max_repeats=2, ratio_rows=(1_500, 6_000),
                   contenders=("bare_tf", "predict_batch_udf", "dataframe_lane", "arrow_lane"),
                   arrow_batch=1024, unit=1_000),
}
# Planning priors, seconds = fixed + slope per unit (MLP: the cold figures for bare TF and
# the Arrow lane; the others guessed from bench/results/full.md). Only for --dry-run's estimate.
PRIORS = {
    "mlp": {"bare_tf": (4.2, 0.81), "arrow_lane": (16.7, 0.68), "dataframe_lane": (18.0, 1.8),
            "predict_batch_udf": (15.0, 3.5), "pandas_udf": (15.0, 3.0), "ray_data": (25.0, 1.5)},
    "cnn": {"bare_tf": (4.2, 1.2), "arrow_lane": (16.7, 1.1), "dataframe_lane": (18.0, 1.5),
            "predict_batch_udf": (15.0, 1.5), "pandas_udf": (15.0, 1.5), "ray_data": (25.0, 1.3)},
}
OVERHEAD_S = 3.0  # per run outside the timing: leftovers check, quiet sample (2 s), row count


def rotation(keys: tuple[str, ...] | list[str], round_index: int, point_index: int) -> list[str]:
    """The contender order of one (round, point): rotated by one for each round and each point."""
    keys = list(keys)
    k = (round_index + point_index) % len(keys) if keys else 0
    return keys[k:] + keys[:k]


def make_workload(p: Profile, rows: int, *, work: str = WORK) -> Workload:
    """The dataset of one sweep point (made or reused) and the model."""
    from bench.colddata import ensure_mlp_linked
    from bench.workloads import ensure_cnn_data, ensure_model

    if p.workload == "mlp":
        return Workload(name="mlp", title=f"Tabular MLP 32-256-256-1, {rows:,} rows x 32 float32",
                        data_path=ensure_mlp_linked(work, rows, rows_per_file=p.rows_per_file),
                        model_path=ensure_model(work, "mlp"), rows=rows, input_name="features",
                        columns=MLP_FEATURES, stacked=True, tensor_shape=(32,), batch_size=p.batch_size)
    conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(p.arrow_batch)} if p.arrow_batch else {}
    return Workload(name="cnn", title=f"Image CNN (3x Conv2D), {rows:,} rows x 64x64x3 float32",
                    data_path=ensure_cnn_data(work, rows, rows_per_file=p.rows_per_file),
                    model_path=ensure_model(work, "cnn"), rows=rows, input_name="image", columns=("image",),
                    stacked=False, tensor_shape=IMAGE_SHAPE, batch_size=p.batch_size, spark_conf=conf)


def estimate_seconds(p: Profile, contenders: list[str]) -> float:
    """Planning estimate of the whole run from PRIORS (attempts without repeats)."""
    total = 0.0
    for key in contenders:
        fixed, slope = PRIORS[p.workload].get(key, (20.0, 2.0))
        total += p.runs * sum(fixed + slope * rows / p.unit + OVERHEAD_S for rows in p.points)
    return total


def _say(msg: str) -> None:
    print(f"[cold {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- protocol


@dataclass
class Slot:
    """One contender at one point in one round; `attempts` holds every run made for it."""

    key: str
    rows: int
    round: int
    attempts: list[dict[str, Any]]

    def accepted(self) -> dict[str, Any] | None:
        """The first uncontended successful attempt, else the last successful one (flagged contended)."""
        ok = [a for a in self.attempts if a["ok"]]
        clean = [a for a in ok if not a["contention"]["contended"]]
        if clean:
            return clean[0]
        return ok[-1] if ok else None


def run_slot(key: str, w: Workload, *, round_index: int, max_repeats: int, run_root: str,
             own_sessions: set[int], th: quiet.Thresholds, config: str | None, keep: bool = False,
             runner: Any = coldrun.timed_run) -> Slot:
    """Run one slot: repeat (up to `max_repeats` times) while the run was contended; a failure is not repeated."""
    slot = Slot(key, w.rows, round_index, [])
    for attempt in range(max_repeats + 1):
        run_dir = os.path.join(run_root, f"{w.name}-{w.rows}-{key}-r{round_index}-a{attempt}")
        rec = runner(key, w, run_dir=run_dir, own_sessions=own_sessions, th=th, config=config)
        rec.update(round=round_index, attempt=attempt)
        slot.attempts.append(rec)
        verdict = "ok" if rec["ok"] else f"FAILED ({'; '.join(rec['problems'])})"
        why = "; ".join(rec["contention"]["reasons"])
        _say(f"{key:18s} {w.rows:>11,} rows  r{round_index} a{attempt}  {rec['seconds']:8.2f} s  {verdict}"
             + (f"  contended: {why}" if why else ""))
        if not keep and rec["ok"]:
            shutil.rmtree(run_dir, ignore_errors=True)  # logs of failed runs stay for reading
        if not rec["ok"] or not rec["contention"]["contended"]:
            break
    for rec in slot.attempts:
        rec["accepted"] = rec is slot.accepted()
    return slot


def check_predictions(slots: list[Slot], *, tolerance: float = 1e-4) -> dict[str, Any]:
    """Compare every kept output of one point with bare TF's: same ids, predictions within `tolerance`."""
    import numpy as np

    from bench.harness import read_predictions

    outs = {s.key: os.path.join(a["run_dir"], "out") for s in slots for a in [s.accepted()] if a}
    checks: dict[str, Any] = {}
    if "bare_tf" not in outs:
        return {"skipped": "no bare TF output"}
    ids0, p0 = read_predictions(outs["bare_tf"])
    for key, out in outs.items():
        if key == "bare_tf":
            continue
        ids, p = read_predictions(out)
        same = ids.shape == ids0.shape and bool(np.array_equal(ids, ids0))
        diff = float(np.max(np.abs(p - p0))) if same and len(p) else None
        checks[key] = {"same_ids": same, "max_abs_diff_vs_bare_tf": diff,
                       "ok": same and diff is not None and diff <= tolerance}
    for s in slots:
        for a in s.attempts:
            if a["ok"]:  # a failed run's logs stay
                shutil.rmtree(a["run_dir"], ignore_errors=True)
    return checks


def run_benchmark(p: Profile, contenders: list[str], *, th: quiet.Thresholds, work: str = WORK,
                  save: Any = None) -> dict[str, Any]:
    """Every round over every point, rotated; returns the raw result (runs, output checks)."""
    run_root = os.path.join(work, "cold-runs")
    shutil.rmtree(run_root, ignore_errors=True)
    own: set[int] = set()
    workloads = {rows: make_workload(p, rows, work=work) for rows in p.points}
    config_dir = os.path.join(work, "cold-configs")
    configs = {rows: coldrun.lane_config(w, os.path.join(config_dir, f"{p.name}-{rows}.yaml"))
               for rows, w in workloads.items()}
    raw: dict[str, Any] = {"slots": [], "output_checks": {}}
    t_start = time.monotonic()
    for r in range(p.runs):
        for j, rows in enumerate(p.points):
            keep = r == 0 and j == 0  # the smallest point's first outputs are checked against bare TF
            slots = [run_slot(key, workloads[rows], round_index=r, max_repeats=p.max_repeats, run_root=run_root,
                              own_sessions=own, th=th, config=configs[rows] if key in LANES else None, keep=keep)
                     for key in rotation(contenders, r, j)]
            if keep:
                raw["output_checks"] = {"rows": rows, **check_predictions(slots)}
            raw["slots"].extend(asdict(s) for s in slots)
            if save is not None:
                save(raw)
        _say(f"round {r + 1}/{p.runs} done after {(time.monotonic() - t_start) / 60:.1f} min")
    raw["leftovers_at_end"] = [asdict(s) for s in quiet.clear_own_leftovers(own, wait_s=10.0)]
    raw["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return raw


# ---------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.cold", description="Cold whole-command benchmark (bench/README.md).")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    p.add_argument("--contenders", help=f"comma-separated subset of {', '.join(CONTENDERS)}")
    p.add_argument("--points", help="rows per sweep point, comma-separated (overrides the profile)")
    p.add_argument("--runs", type=int, help="rounds (runs per point and contender)")
    p.add_argument("--max-repeats", type=int, help="extra attempts of a contended slot")
    d = quiet.Thresholds()
    p.add_argument("--max-load", type=float, default=None,
                   help="1-minute load average above which a run counts as contended (default: usable cores)")
    p.add_argument("--max-pre-busy", type=float, default=d.max_pre_busy)
    p.add_argument("--max-foreign-cores", type=float, default=d.max_foreign_cores)
    p.add_argument("--settle", type=float, default=d.settle_s, help="seconds of the quiet sample before a run")
    p.add_argument("--out-dir", help="where cold*.json|md|png go (default: bench/results for the full profile "
                                     "unchanged, bench/work/results otherwise)")
    p.add_argument("--work", default=WORK, help="data, models and run directories")
    p.add_argument("--dry-run", action="store_true", help="print the plan, the commands and an estimate; run nothing")
    p.add_argument("--from-partial", metavar="JSON",
                   help="write the report of a run stopped early from its <name>.partial.json (its completed "
                        "rounds; marked as cut short); runs nothing")
    return p.parse_args(argv)


def resolve(a: argparse.Namespace) -> tuple[Profile, list[str], quiet.Thresholds, bool]:
    """(profile with overrides, contenders, thresholds, whether it is the profile unchanged)."""
    p = PROFILES[a.profile]
    changes: dict[str, Any] = {}
    if a.points:
        changes["points"] = tuple(int(x) for x in a.points.split(",") if x)
        changes["ratio_rows"] = tuple(r for r in p.ratio_rows if r in changes["points"]) or changes["points"][:2]
    if a.runs is not None:
        changes["runs"] = a.runs
    if a.max_repeats is not None:
        changes["max_repeats"] = a.max_repeats
    contenders = [c for c in (a.contenders.split(",") if a.contenders else p.contenders) if c]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(unknown)}; known: {', '.join(CONTENDERS)}")
    cores = len(os.sched_getaffinity(0))
    th = quiet.Thresholds(max_load1=a.max_load if a.max_load is not None else float(cores),
                          max_pre_busy=a.max_pre_busy, max_foreign_cores=a.max_foreign_cores, settle_s=a.settle)
    unchanged = not changes and not a.contenders
    return replace(p, **changes), contenders, th, unchanged


def dry_run(p: Profile, contenders: list[str], th: quiet.Thresholds, work: str) -> None:
    """The plan: points, contenders, one command each, an estimate; nothing is generated or run."""
    print(f"profile {p.name}: {p.workload}, points {', '.join(f'{r:,}' for r in p.points)} rows, "
          f"{p.rows_per_file:,} rows a file, batch {p.batch_size:,}, {p.runs} rounds, "
          f"up to {p.max_repeats} repeats of a contended run")
    print(f"thresholds: {asdict(th)}")
    rows = p.points[0]
    w = Workload(name=p.workload, title="", data_path=os.path.join(work, "data", f"{p.workload}-{rows}r-..."),
                 model_path=os.path.join(work, "models", p.workload), rows=rows,
                 input_name="features" if p.workload == "mlp" else "image",
                 columns=MLP_FEATURES if p.workload == "mlp" else ("image",), stacked=p.workload == "mlp",
                 tensor_shape=(32,) if p.workload == "mlp" else IMAGE_SHAPE, batch_size=p.batch_size)
    for key in contenders:
        argv = coldrun.command(key, w, out="<run>/out", loads_dir="<run>/loads", config="<work>/cold-configs/x.yaml")
        print(f"  {key}: {' '.join(argv)}")
    reason = coldrun.ray_unavailable_reason() if "ray_data" in contenders else None
    if reason:
        print(f"  ray_data would be skipped: {reason}")
    n = p.runs * len(p.points) * len(contenders)
    print(f"{n} timed runs; estimate {estimate_seconds(p, contenders) / 60:.0f} min from the planning priors "
          "(bench/cold.py PRIORS), plus data generation on the first run")


def machine_summary() -> dict[str, Any]:
    """bench.report.machine_info, with the Spark every Spark contender runs (pyspark's, `local[2]`)."""
    from bench.report import machine_info

    m = machine_info()
    m["spark"] = {"version": m["versions"].get("pyspark"), "master": coldrun.SPARK_CONF["spark.master"]}
    return m


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    p, contenders, th, unchanged = resolve(a)
    if a.dry_run:
        dry_run(p, contenders, th, a.work)
        return 0
    from bench.cold_report import write_all
    from bench.coldstats import summarize

    if a.from_partial:
        return report_partial(a.from_partial, a.out_dir or RESULTS)

    unavailable = {}
    ray_version = None
    if "ray_data" in contenders:
        reason = coldrun.ray_unavailable_reason()
        if reason:
            unavailable["ray_data"] = reason
            contenders.remove("ray_data")
            _say(f"ray_data not run: {reason}")
        else:
            ray_version = coldrun.ray_version()
    out_dir = a.out_dir or (RESULTS if unchanged and p.name == "full" else os.path.join(a.work, "results"))
    name = "cold" if p.name == "full" else f"cold-{p.name}"
    name += "" if unchanged else "-custom"
    res: dict[str, Any] = {
        "benchmark": "cold", "settings": asdict(p), "contenders": contenders, "unavailable": unavailable,
        "thresholds": asdict(th), "machine": machine_summary(), "ray_version": ray_version,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()), "estimate_s": round(estimate_seconds(p, contenders)),
    }
    partial = os.path.join(a.work, "results", f"{name}.partial.json")
    os.makedirs(os.path.dirname(partial), exist_ok=True)

    def save(raw: dict[str, Any]) -> None:
        with open(partial, "w") as fh:
            json.dump({**res, **raw}, fh, default=str)

    _say(f"{p.name}: {len(contenders)} contenders, points {p.points}, {p.runs} rounds; "
         f"estimate {res['estimate_s'] / 60:.0f} min")
    res.update(run_benchmark(p, contenders, th=th, work=a.work, save=save))
    res["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    res["loadavg_end"] = list(os.getloadavg())
    res["summary"] = summarize(res["slots"], contenders=contenders, points=p.points, ratio_rows=p.ratio_rows,
                               unit=p.unit)
    for path in write_all(res, out_dir, name):
        _say(f"wrote {path}")
    return 0


def report_partial(path: str, out_dir: str) -> int:
    """The report of a run stopped early (e.g. out of time), from the slots its partial JSON holds:
    a round's runs at a point count when every contender completed that point in that round;
    the report says it was cut short and how many runs each figure has."""
    from bench.cold_report import write_all
    from bench.coldstats import summarize

    with open(path, encoding="utf-8") as fh:
        res = json.load(fh)
    st = res["settings"]
    done = {(s["round"], s["rows"], s["key"]) for s in res["slots"]}
    whole = {(r, rows) for r in range(st["runs"]) for rows in st["points"]
             if all((r, rows, c) in done for c in res["contenders"])}
    if not whole:
        raise SystemExit(f"{path}: no point completed by every contender; nothing to report")
    res["slots"] = [s for s in res["slots"] if (s["round"], s["rows"]) in whole]
    rounds = {r for r, _ in whole}
    res["cut_short"] = (f"stopped in round {max(rounds) + 1} of {st['runs']}; a point counts a round's runs when "
                        "every contender completed it in that round (the runs per figure are in the tables)")
    saved = dt.datetime.fromtimestamp(os.path.getmtime(path), dt.timezone.utc)
    res["finished_at"] = res.get("finished_at") or saved.isoformat(timespec="seconds")
    res["elapsed_s"] = res.get("elapsed_s") or (saved - dt.datetime.fromisoformat(res["started_at"])).total_seconds()
    res["loadavg_end"] = res.get("loadavg_end") or res["loadavg_start"]
    res["summary"] = summarize(res["slots"], contenders=res["contenders"], points=tuple(st["points"]),
                               ratio_rows=tuple(st["ratio_rows"]), unit=st["unit"])
    name = os.path.basename(path).removesuffix(".partial.json")
    for out in write_all(res, out_dir, name):
        _say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
