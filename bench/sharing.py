"""`model.sharing: executor` against `worker`: `python -m bench.sharing [--tiny | --points ...]`.

The cold benchmark's MLP (bench/workloads.py: 32 float32 features, 32-256-256-1) on
`local[2]` (two task slots, one executor), scored by the Arrow lane as a whole fresh
command, once with each Python worker holding its own model (`worker`) and once with
one model host process serving both workers (`executor`). Each run is alone on the
machine (bench/quiet.py, bench/coldrun.py: the same checks, the same sampler, which
here also follows the model host, detached into a session of its own). Rounds rotate
the order; each figure is the median of its runs.

Reported per rows point: seconds (start to committed output), rows/s of the scoring
(the manifest's), the ratio executor/worker (target >= 0.9 on CPU), model loads, and
the resident memory of the model copies: the sums of the peak RSS and of the peak PSS of
the processes that hold or serve the model (the Python workers under `worker`; the host
under `executor`, plus its workers, which only convert and forward rows). Target: one copy
per executor.
Writes bench/results/sharing.{md,json} for the default settings, else bench/work/results/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import psutil

from batchscore.udfs.host import client as host_client
from bench import coldrun, quiet
from bench.cold import PROFILES as COLD_PROFILES
from bench.cold import WORK, machine_summary, make_workload, rotation
from bench.workloads import Workload

RESULTS = str(coldrun.PROJECT_ROOT / "bench" / "results")
MODES = ("worker", "executor")
HOST_MODULE = "batchscore.udfs.host.model_host"
TARGET_RATIO = 0.9
PSS_EVERY_S = 1.0  # proportional set size (smaps_rollup) is dearer than RSS: sampled once a second


@dataclass(frozen=True)
class Settings:
    """What a run of the benchmark measures: the rows points, the rounds and the data's shape."""
    points: tuple[int, ...]
    runs: int
    rows_per_file: int
    batch_size: int


DEFAULTS = Settings(points=(1_000_000, 2_000_000), runs=3, rows_per_file=250_000, batch_size=10_000)
TINY = Settings(points=(20_000,), runs=1, rows_per_file=5_000, batch_size=10_000)


def _say(msg: str) -> None:
    print(f"[sharing {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def host_sampler(host_dir: str, own_sessions: set[int], made: list[coldrun.TreeSampler]) -> type[coldrun.TreeSampler]:
    """A TreeSampler that also samples the run's model hosts (their socket is under `host_dir`)
    and counts their session as the run's own (their CPU is not foreign)."""

    class HostSampler(coldrun.TreeSampler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.hosts: set[int] = set()
            self.peak_pss_mb: dict[int, float] = {}
            self._last_pss = 0.0
            made.append(self)
            super().__init__(*args, **kwargs)

        def _sample(self) -> None:
            super()._sample()
            now = time.perf_counter()
            if now - self._last_pss < PSS_EVERY_S:
                return
            self._last_pss = now
            for pid, info in list(self.procs.items()):
                handle = self._handles.get(pid)
                if not info.worker or handle is None:
                    continue
                try:  # shared pages (TF imported by the daemon before the fork) count once, split
                    pss = handle.memory_full_info().pss / coldrun.MB
                except psutil.Error:
                    continue
                self.peak_pss_mb[pid] = max(self.peak_pss_mb.get(pid, 0.0), pss)

        def _scan(self) -> None:
            super()._scan()
            forked = set(host_client.live_host_pids(host_dir))  # a host forked from a worker keeps its command line
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = p.info["cmdline"] or []
                started = HOST_MODULE in cmd and any(a.startswith(host_dir) for a in cmd)
                if p.pid in self.procs or not (started or p.pid in forked):
                    continue
                try:
                    own_sessions.add(os.getsid(p.pid))
                except OSError:
                    continue
                self._handles[p.pid] = p
                self.procs[p.pid] = coldrun.ProcInfo(p.pid, " ".join(cmd)[:160], worker=True)
                self.hosts.add(p.pid)

    return HostSampler


def model_memory(sampler: Any) -> dict[str, Any]:
    """Peak RSS and PSS of the processes holding or serving the model: every Python worker and host."""
    hosts = [p for pid, p in sampler.procs.items() if pid in sampler.hosts and p.peak_rss_mb > 0]
    workers = [p for pid, p in sampler.procs.items() if p.worker and pid not in sampler.hosts and p.peak_rss_mb > 0]
    pss = sampler.peak_pss_mb
    return {"hosts": len(hosts), "host_rss_mb": [round(p.peak_rss_mb, 1) for p in hosts],
            "worker_rss_mb": sorted(round(p.peak_rss_mb, 1) for p in workers),
            "model_processes_rss_mb": round(sum(p.peak_rss_mb for p in hosts + workers), 1),
            "model_processes_pss_mb": round(sum(pss.get(p.pid, 0.0) for p in hosts + workers), 1)}


def write_configs(w: Workload, folder: str) -> dict[str, str]:
    """The Arrow lane's job YAML of `w`, once per sharing mode."""
    import yaml

    paths = {}
    for mode in MODES:
        path = coldrun.lane_config(w, os.path.join(folder, f"sharing-{w.rows}-{mode}.yaml"))
        with open(path) as fh:
            cfg = yaml.safe_load(fh)
        cfg["model"]["sharing"] = mode
        with open(path, "w") as fh:
            yaml.safe_dump(cfg, fh, sort_keys=False)
        paths[mode] = path
    return paths


def run_once(mode: str, w: Workload, *, config: str, run_dir: str, own: set[int], th: quiet.Thresholds,
             max_repeats: int) -> dict[str, Any]:
    """One cold run of `mode` (repeated while contended); its record with the model's memory."""
    for attempt in range(max_repeats + 1):
        host_dir = tempfile.mkdtemp(prefix="bsh-bench-", dir="/tmp")  # short: AF_UNIX paths
        os.environ["BATCHSCORE_HOST_DIR"] = host_dir  # the command's environment (coldrun.run_env)
        made: list[coldrun.TreeSampler] = []
        try:
            rec = coldrun.timed_run("arrow_lane", w, run_dir=f"{run_dir}-a{attempt}", own_sessions=own, th=th,
                                    config=config, sampler_cls=host_sampler(host_dir, own, made))
        finally:
            os.environ.pop("BATCHSCORE_HOST_DIR", None)
            shutil.rmtree(host_dir, ignore_errors=True)
        rec.update(mode=mode, attempt=attempt, memory=model_memory(made[0]))
        manifest = coldrun.read_manifest(os.path.join(rec["run_dir"], "out")) or {}
        rec["model_loads_by_executor"] = manifest.get("model_loads_by_executor")
        why = "; ".join(rec["contention"]["reasons"])
        _say(f"{mode:8s} {w.rows:>10,} rows a{attempt} {rec['seconds']:7.2f} s "
             f"{'ok' if rec['ok'] else 'FAILED ' + '; '.join(rec['problems'])} "
             f"model RSS {rec['memory']['model_processes_rss_mb']:,.0f} MB" + (f"  contended: {why}" if why else ""))
        if not rec["ok"] or not rec["contention"]["contended"]:
            return rec
    return rec


def compare_outputs(recs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Worker and executor outputs of one point: same ids, largest prediction difference."""
    import numpy as np

    from bench.harness import read_predictions

    (ids_w, p_w), (ids_e, p_e) = (read_predictions(os.path.join(recs[m]["run_dir"], "out")) for m in MODES)
    same = bool(np.array_equal(ids_w, ids_e))
    return {"same_ids": same, "max_abs_diff": float(np.max(np.abs(p_w - p_e))) if same and len(p_w) else None}


def summarize(runs: list[dict[str, Any]], points: tuple[int, ...]) -> dict[str, Any]:
    """Per point and mode: medians of the accepted runs; the executor/worker ratios and verdicts."""
    out: dict[str, Any] = {}
    for rows in points:
        row: dict[str, Any] = {}
        for mode in MODES:
            ok = [r for r in runs if r["rows"] == rows and r["mode"] == mode and r["ok"]]
            if not ok:
                continue
            m = [r["manifest"] or {} for r in ok]
            row[mode] = {
                "runs": len(ok), "contended_runs": sum(r["contention"]["contended"] for r in ok),
                "seconds": statistics.median(r["seconds"] for r in ok),
                "rows_per_second_cold": statistics.median(rows / r["seconds"] for r in ok),
                "rows_per_second_scoring": statistics.median(x.get("rows_per_second") or 0 for x in m),
                "model_loads": statistics.median(r.get("model_loads") or 0 for r in ok),
                "model_loads_by_executor": ok[-1].get("model_loads_by_executor"),
                "model_processes_rss_mb": statistics.median(r["memory"]["model_processes_rss_mb"] for r in ok),
                "model_processes_pss_mb": statistics.median(r["memory"]["model_processes_pss_mb"] for r in ok),
                "host_rss_mb": ok[-1]["memory"]["host_rss_mb"], "worker_rss_mb": ok[-1]["memory"]["worker_rss_mb"],
            }
        if len(row) == 2:
            w, e = row["worker"], row["executor"]
            row["ratio_cold"] = round(e["rows_per_second_cold"] / w["rows_per_second_cold"], 3)
            row["ratio_scoring"] = (round(e["rows_per_second_scoring"] / w["rows_per_second_scoring"], 3)
                                    if w["rows_per_second_scoring"] else None)
            row["memory_ratio"] = round(e["model_processes_rss_mb"] / w["model_processes_rss_mb"], 3)
            row["pss_ratio"] = (round(e["model_processes_pss_mb"] / w["model_processes_pss_mb"], 3)
                                if w["model_processes_pss_mb"] else None)
            row["throughput_target_met"] = row["ratio_cold"] >= TARGET_RATIO
            row["one_copy_per_executor"] = e["model_loads"] == 1 and e["model_loads_by_executor"] == {"driver": 1}
        out[str(rows)] = row
    return out


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [
        "# model.sharing: executor vs worker (cold, local[2])", "",
        f"{res['workload']}; Arrow lane; batch_size {s['batch_size']:,}; {s['runs']} round(s); each run a fresh "
        f"command alone on the machine; figures are medians. Machine: {res['machine'].get('cpu_model', '?')}, "
        f"{res['machine'].get('usable_cores', '?')} cores. Started {res['started_at']}.", "",
        "Model RSS: the sum of the peak resident memory of the processes that hold or serve the model "
        "(`worker`: the Python workers; `executor`: the model host plus the workers that forward "
        "rows to it). RSS counts the pages a worker shares with its daemon (TensorFlow imported before "
        "the fork) in every worker; PSS splits them among the sharers (sampled once a second).", "",
        "| rows | mode | seconds | rows/s (cold) | rows/s (scoring) | model loads | model PSS MB | model RSS MB "
        "(host + workers) |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for rows, row in res["summary"].items():
        for mode in MODES:
            x = row.get(mode)
            if not x:
                continue
            parts = " + ".join(f"{v:,.0f}" for v in [*x["host_rss_mb"], *x["worker_rss_mb"]])
            lines.append(f"| {int(rows):,} | {mode} | {x['seconds']:.2f} | {x['rows_per_second_cold']:,.0f} | "
                         f"{x['rows_per_second_scoring']:,.0f} | {x['model_loads']:g} | "
                         f"{x['model_processes_pss_mb']:,.0f} | {x['model_processes_rss_mb']:,.0f} ({parts}) |")
    lines += ["", "| rows | executor/worker rows/s (cold) | (scoring) | model PSS executor/worker | (RSS) | "
              f"target >= {TARGET_RATIO}x | one copy per executor | outputs equal |",
              "|---:|---:|---:|---:|---:|---|---|---|"]
    for rows, row in res["summary"].items():
        if "ratio_cold" not in row:
            continue
        check = res["output_checks"].get(rows, {})
        lines.append(f"| {int(rows):,} | {row['ratio_cold']:.3f} | {row['ratio_scoring'] or 0:.3f} | "
                     f"{row['pss_ratio'] or 0:.3f} | {row['memory_ratio']:.3f} | "
                     f"{'met' if row['throughput_target_met'] else 'NOT met'} | "
                     f"{'yes' if row['one_copy_per_executor'] else 'no'} | "
                     f"{'yes' if check.get('same_ids') else 'no'} (max diff {check.get('max_abs_diff')}) |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.sharing", description=__doc__.split("\n", 1)[0])
    p.add_argument("--tiny", action="store_true", help="one 20k-row point, one round (a smoke test)")
    p.add_argument("--points", help="comma-separated rows points (default 1000000,2000000)")
    p.add_argument("--runs", type=int, help="rounds (default 3)")
    p.add_argument("--max-repeats", type=int, default=1, help="extra attempts of a contended run")
    p.add_argument("--work", default=WORK, help="data, models and run directories")
    p.add_argument("--out-dir", help="default: bench/results for the default settings, else bench/work/results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    s = TINY if a.tiny else DEFAULTS
    if a.points:
        points = tuple(int(x) for x in a.points.split(","))
        s = replace(s, points=points, rows_per_file=min(s.rows_per_file, *points))
    if a.runs:
        s = replace(s, runs=a.runs)
    default = not a.tiny and not a.points and not a.runs
    out_dir = a.out_dir or (RESULTS if default else os.path.join(a.work, "results"))
    profile = replace(COLD_PROFILES["full"], name="sharing", points=s.points, rows_per_file=s.rows_per_file,
                      batch_size=s.batch_size)
    th = quiet.Thresholds(max_load1=float(len(os.sched_getaffinity(0))))
    res: dict[str, Any] = {"benchmark": "sharing", "settings": {**asdict(s), "points": list(s.points)},
                           "workload": "Tabular MLP 32-256-256-1 (bench/workloads.py)", "machine": machine_summary(),
                           "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "thresholds": asdict(th), "runs": [], "output_checks": {}}
    workloads = {rows: make_workload(profile, rows, work=a.work) for rows in s.points}
    configs = {rows: write_configs(w, os.path.join(a.work, "sharing-configs")) for rows, w in workloads.items()}
    run_root = os.path.join(a.work, "sharing-runs")
    shutil.rmtree(run_root, ignore_errors=True)
    own: set[int] = set()
    for r in range(s.runs):
        for j, rows in enumerate(s.points):
            recs = {mode: run_once(mode, workloads[rows], config=configs[rows][mode], own=own, th=th,
                                   run_dir=os.path.join(run_root, f"{rows}-{mode}-r{r}"), max_repeats=a.max_repeats)
                    for mode in rotation(MODES, r, j)}
            if r == 0 and all(x["ok"] for x in recs.values()):
                res["output_checks"][str(rows)] = compare_outputs(recs)
            for rec in recs.values():
                rec.update(round=r)
                res["runs"].append(rec)
                if rec["ok"]:
                    shutil.rmtree(rec["run_dir"], ignore_errors=True)
    res["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    res["summary"] = summarize(res["runs"], s.points)
    os.makedirs(out_dir, exist_ok=True)
    for ext, text in (("json", json.dumps(res, indent=1, default=str)), ("md", markdown(res))):
        path = os.path.join(out_dir, f"sharing.{ext}")
        with open(path, "w") as fh:
            fh.write(text + ("\n" if ext == "json" else ""))
        _say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
