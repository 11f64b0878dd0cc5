"""The warm Spark Connect benchmark: `python -m bench.connect [--profile full|tiny] [--dry-run]`.

Bare TF first, as cold processes with no server alive (as in `make bench`); then one local
Connect server (batchscore.session.connect_server, started untimed), one untimed warm-up run
per Connect contender, and per round and rows point `batchscore score --remote` (the Arrow
lane) and `predict_batch_udf` each as a fresh client process of that server, the order
alternating by round. Every run is timed from its start to its exit with the output
committed, alone on the machine (bench/quiet.py; the server's own processes are tolerated
while it runs, and their CPU during a run counts as the run's). A failed run is reported
with its exit code and last stderr line. Figures and targets: bench/connect_report.py.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

from bench import coldrun, quiet
from bench.cold import PROFILES as COLD_PROFILES
from bench.cold import RESULTS, WORK, Slot, check_predictions, machine_summary, make_workload, rotation, run_slot
from bench.connect_report import BARE, OURS, PBU, later_loads, speedup, targets, write_all
from bench.workloads import Workload

BASE_KEY = {BARE: "bare_tf", OURS: "arrow_lane", PBU: "predict_batch_udf"}  # the cold harness's commands
REMOTE = (OURS, PBU)
MASTER = coldrun.SPARK_CONF["spark.master"]
M = 1_000_000


@dataclass(frozen=True)
class Profile:
    """Points, rounds and the data's shape of one benchmark size."""

    name: str
    points: tuple[int, ...]
    rows_per_file: int
    batch_size: int
    runs: int
    max_repeats: int  # extra attempts of a contended run
    target_rows: int  # where the ratios are read
    unit: int = M

    @property
    def ratio_rows(self) -> tuple[int, ...]:
        return (self.target_rows,)


PROFILES = {
    "full": Profile("full", (1 * M, 2 * M, 10 * M), 250_000, 10_000, runs=3, max_repeats=1, target_rows=2 * M),
    "tiny": Profile("tiny", (20_000, 40_000), 5_000, 10_000, runs=1, max_repeats=0, target_rows=40_000),
}
# Planning guesses, seconds = fixed + slope per 1M rows (bare TF: the cold benchmark's prior); --dry-run only.
PRIORS = {BARE: (4.2, 0.81), OURS: (3.0, 0.8), PBU: (4.0, 3.5)}
OVERHEAD_S = 3.0  # per run outside the timing: leftovers check, quiet sample, row count


def _say(msg: str) -> None:
    print(f"[connect {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def server_conf() -> dict[str, str]:
    """The server session's Spark settings: what every cold Spark contender gets, but the master."""
    return {k: v for k, v in coldrun.SPARK_CONF.items() if k != "spark.master"}


def write_config(w: Workload, folder: str) -> str:
    """The Arrow lane's job YAML of `w` (bench.coldrun.lane_config with `input.lane: arrow`)."""
    import yaml

    path = coldrun.lane_config(w, os.path.join(folder, f"connect-{w.rows}.yaml"))
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    cfg["input"]["lane"] = "arrow"
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


@contextmanager
def connect_server(port: int, folder: str) -> Iterator[dict[str, Any]]:
    """A local Connect server on `port` for the block (started untimed, stopped after); yields its facts."""
    from batchscore.session import connect_server as cs

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = coldrun.run_env()["PYTHONPATH"]  # its Python workers import bench.contenders
    t0 = time.perf_counter()
    try:
        url = cs.start(port, master=MASTER, conf=server_conf(), folder=folder)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    state = cs.status(port, folder=folder)
    assert state is not None
    info = {"url": url, "port": port, "master": MASTER, "conf": server_conf(), "pid": state.pid, "log": state.log,
            "start_s": round(time.perf_counter() - t0, 2)}
    _say(f"server {url} up in {info['start_s']:.1f} s (pid {state.pid}, log {state.log})")
    try:
        yield info
    finally:
        cs.stop(port, folder=folder)
        _say(f"server {url} stopped")


def remote_runner(server: dict[str, Any], folder: str) -> Callable[..., dict[str, Any]]:
    """A `run_slot` runner: our key -> the cold command as a client of `server`; its processes
    are tolerated and sampled only while it runs (a dead server's runs fail and say so)."""
    from batchscore.session import connect_server as cs

    def run(key: str, w: Workload, **kw: Any) -> dict[str, Any]:
        alive = cs.status(server["port"], folder=folder) is not None
        rec = coldrun.timed_run(BASE_KEY[key], w, remote=server["url"],
                                server_sessions=frozenset({server["pid"]}) if alive else frozenset(), **kw)
        rec["key"] = key
        if not alive:
            rec["ok"] = False
            rec["problems"] = ["the Connect server was not running", *rec["problems"]]
        return rec

    return run


def cold_runner(key: str, w: Workload, **kw: Any) -> dict[str, Any]:
    rec = coldrun.timed_run(BASE_KEY[key], w, **kw)
    rec["key"] = key
    return rec


def _slot_dicts(slots: list[Slot]) -> list[dict[str, Any]]:
    return [asdict(s) for s in slots]


def bare_phase(p: Profile, workloads: dict[int, Workload], *, own: set[int], th: quiet.Thresholds,
               run_root: str, save: Callable[[], None], raw: dict[str, Any]) -> Slot | None:
    """Every round and point of bare TF, cold, no server alive; returns the slot kept for the output check."""
    kept = None
    for r in range(p.runs):
        for j, rows in enumerate(p.points):
            keep = r == 0 and j == 0
            slot = run_slot(BARE, workloads[rows], round_index=r, max_repeats=p.max_repeats, run_root=run_root,
                            own_sessions=own, th=th, config=None, keep=keep, runner=cold_runner)
            kept = slot if keep else kept
            raw["slots"] += _slot_dicts([slot])
            save()
    return kept


def warm_up(runner: Callable[..., dict[str, Any]], w: Workload, *, config: str, own: set[int],
            th: quiet.Thresholds, run_root: str) -> list[dict[str, Any]]:
    """One untimed run of each Connect contender on the smallest point (recorded, not counted)."""
    recs = []
    for key in REMOTE:
        run_dir = os.path.join(run_root, f"warmup-{key}")
        rec = runner(key, w, run_dir=run_dir, own_sessions=own, th=th, config=config)
        rec["warmup"] = True
        verdict = "ok" if rec["ok"] else f"FAILED {'; '.join(rec['problems'])}"
        _say(f"warm-up {key}: {rec['seconds']:.2f} s {verdict}")
        if rec["ok"]:
            shutil.rmtree(run_dir, ignore_errors=True)
        recs.append(rec)
    return recs


def connect_phase(p: Profile, workloads: dict[int, Workload], configs: dict[int, str], *, own: set[int],
                  th: quiet.Thresholds, run_root: str, runner: Callable[..., dict[str, Any]],
                  save: Callable[[], None], raw: dict[str, Any], bare_kept: Slot | None) -> None:
    """Every round and point of the Connect contenders against the running server."""
    smallest = p.points[0]
    raw["warmups"] = warm_up(runner, workloads[smallest], config=configs[smallest], own=own, th=th,
                             run_root=run_root)
    save()
    for r in range(p.runs):
        for j, rows in enumerate(p.points):
            keep = r == 0 and j == 0
            slots = [run_slot(key, workloads[rows], round_index=r, max_repeats=p.max_repeats, run_root=run_root,
                              own_sessions=own, th=th, config=configs[rows], keep=keep, runner=runner)
                     for key in rotation(REMOTE, r, j)]
            if keep and bare_kept is not None:
                raw["output_checks"] = {"rows": rows, **check_predictions([bare_kept, *slots])}
            raw["slots"] += _slot_dicts(slots)
            save()
        _say(f"round {r + 1}/{p.runs} done")


def stop_stale_servers(folder: str) -> list[int]:
    """Stop the servers an interrupted run of this harness left behind (state files in `folder`); their ports."""
    import glob

    from batchscore.session import connect_server as cs

    stopped = []
    for state in glob.glob(os.path.join(folder, "server-*.json")):
        port = int(os.path.basename(state)[len("server-"):-len(".json")])
        if cs.stop(port, folder=folder):
            _say(f"stopped a server left on port {port}")
            stopped.append(port)
    return stopped


def run_benchmark(p: Profile, *, th: quiet.Thresholds, work: str, port: int | None,
                  save_to: str) -> dict[str, Any]:
    """Bare TF, then the server and its clients; returns the raw result (slots, warm-ups, server, checks)."""
    from batchscore.session import connect_server as cs

    run_root = os.path.join(work, "connect-runs")
    shutil.rmtree(run_root, ignore_errors=True)
    folder = os.path.join(work, "connect-server")
    cold_p = replace(COLD_PROFILES["full"], name="connect", points=p.points, rows_per_file=p.rows_per_file,
                     batch_size=p.batch_size)
    workloads = {rows: make_workload(cold_p, rows, work=work) for rows in p.points}
    configs = {rows: write_config(w, os.path.join(work, "connect-configs")) for rows, w in workloads.items()}
    stop_stale_servers(folder)
    port = port or cs.free_port()
    raw: dict[str, Any] = {"slots": [], "warmups": [], "output_checks": {}, "server": None}
    own: set[int] = set()
    t_start = time.monotonic()

    def save() -> None:
        with open(save_to, "w") as fh:
            json.dump(raw, fh, default=str)

    bare_kept = bare_phase(p, workloads, own=own, th=th, run_root=run_root, save=save, raw=raw)
    quiet.clear_own_leftovers(own, wait_s=10.0)
    try:
        with connect_server(port, folder) as server:
            raw["server"] = server
            connect_phase(p, workloads, configs, own=own, th=th, run_root=run_root, save=save, raw=raw,
                          runner=remote_runner(server, folder), bare_kept=bare_kept)
    except cs.ServerError as e:
        raw["server_error"] = str(e)
        _say(f"no server, no Connect runs: {e}")
    raw["leftovers_at_end"] = [asdict(s) for s in quiet.clear_own_leftovers(own, wait_s=10.0)]
    raw["elapsed_s"] = round(time.monotonic() - t_start, 1)
    return raw


def figures(res: dict[str, Any], p: Profile) -> None:
    """Add the summary (medians, fits, ratios vs bare TF), the ratio vs predict_batch_udf,
    our later runs' model loads and the targets to `res`."""
    from bench.coldstats import summarize

    res["summary"] = summarize(res["slots"], contenders=[BARE, *REMOTE], points=p.points, ratio_rows=p.ratio_rows,
                               unit=p.unit)
    ours_runs = res["warmups"] + [a for s in res["slots"] for a in s["attempts"]]
    res["later_model_loads"] = later_loads(ours_runs)
    res["ratios"] = {"rows": p.target_rows, "vs_bare_tf": speedup(res["summary"], OURS, BARE, p.target_rows),
                     "vs_predict_batch_udf": speedup(res["summary"], OURS, PBU, p.target_rows)}
    res["targets"] = targets(res["summary"], target_rows=p.target_rows, loads=res["later_model_loads"])


def dry_run(p: Profile, work: str) -> None:
    """The plan, one command per contender and an estimate; nothing is made or run."""
    print(f"profile {p.name}: MLP, points {', '.join(f'{r:,}' for r in p.points)} rows, {p.rows_per_file:,} rows "
          f"a file, batch {p.batch_size:,}, {p.runs} rounds, up to {p.max_repeats} repeats of a contended run")
    rows = p.points[0]
    w = Workload(name="mlp", title="", data_path=os.path.join(work, "data", f"mlp-{rows}r-{p.rows_per_file}pf"),
                 model_path=os.path.join(work, "models", "mlp"), rows=rows, input_name="features",
                 columns=tuple(f"f{i}" for i in range(32)), stacked=True, tensor_shape=(32,),
                 batch_size=p.batch_size)
    print("1. bare TF, cold, no server alive:")
    print("   " + " ".join(coldrun.command("bare_tf", w, out="<run>/out", loads_dir="<run>/loads")))
    print(f"2. server (untimed): batchscore.session.connect_server.start(PORT, master={MASTER!r}, "
          f"conf={server_conf()}); one warm-up run of each Connect contender")
    for key in REMOTE:
        argv = coldrun.command(BASE_KEY[key], w, out="<run>/out", loads_dir="<run>/loads",
                               config="<work>/connect-configs/connect-N.yaml", remote="sc://127.0.0.1:PORT")
        print(f"   {key}: {' '.join(argv)}")
    runs = p.runs * len(p.points) * (1 + len(REMOTE))
    est = sum(p.runs * (fixed + slope * r / M + OVERHEAD_S) for fixed, slope in PRIORS.values() for r in p.points)
    print(f"{runs} timed runs; estimate {est / 60:.0f} min from guesses (bench/connect.py PRIORS), plus the "
          "server's start, the warm-ups and data generation on the first run")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    a = argparse.ArgumentParser(prog="bench.connect", description=__doc__.split("\n", 1)[0])
    a.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    a.add_argument("--points", help="rows per point, comma-separated (overrides the profile)")
    a.add_argument("--runs", type=int, help="rounds")
    a.add_argument("--port", type=int, help="the server's port (default: a free one)")
    a.add_argument("--work", default=WORK, help="data, models and run directories")
    a.add_argument("--out-dir", help="default: bench/results for the full profile unchanged, else bench/work/results")
    a.add_argument("--dry-run", action="store_true", help="print the plan and the commands; run nothing")
    return a.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    p = PROFILES[a.profile]
    if a.points:
        pts = tuple(int(x) for x in a.points.split(",") if x)
        p = replace(p, points=pts, target_rows=p.target_rows if p.target_rows in pts else pts[-1])
    p = replace(p, runs=a.runs) if a.runs else p
    if a.dry_run:
        dry_run(p, a.work)
        return 0
    unchanged = not a.points and not a.runs
    name = "connect" if p.name == "full" else f"connect-{p.name}"
    name += "" if unchanged else "-custom"
    out_dir = a.out_dir or (RESULTS if unchanged and p.name == "full" else os.path.join(a.work, "results"))
    th = quiet.Thresholds(max_load1=float(len(os.sched_getaffinity(0))))
    res: dict[str, Any] = {
        "benchmark": "connect", "settings": {**asdict(p), "ratio_rows": list(p.ratio_rows)},
        "thresholds": asdict(th), "machine": machine_summary(), "loadavg_start": list(os.getloadavg()),
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    partial = os.path.join(a.work, "results", f"{name}.partial.json")
    os.makedirs(os.path.dirname(partial), exist_ok=True)
    _say(f"{p.name}: points {p.points}, {p.runs} rounds")
    res.update(run_benchmark(p, th=th, work=a.work, port=a.port, save_to=partial))
    res["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    res["loadavg_end"] = list(os.getloadavg())
    figures(res, p)
    for path in write_all(res, out_dir, name):
        _say(f"wrote {path}")
    for t in res["targets"]:
        _say(f"target {t['target']}: {t['value']} -> {'n/a' if t['met'] is None else 'met' if t['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
