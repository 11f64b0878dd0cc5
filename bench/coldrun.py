"""One cold whole-command run: the contenders' commands, the timing, the samplers, the checks.

Every contender is a fresh process started in a session of its own
(`start_new_session`), timed on the harness's `time.perf_counter()` from just
before the start to the process's exit (its output committed), with nothing of
the harness running meanwhile but a sampling thread (RSS and CPU of the run's
processes, every `SAMPLE_S`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from bench import quiet
from bench import report as warm_report
from bench.workloads import Workload

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
RAY_VENV = BENCH_DIR / ".venv-ray"
MB = 1024 * 1024
SAMPLE_S = 0.1
RESCAN_S = 0.5
RUN_TIMEOUT_S = 3600.0

# The Spark settings every Spark contender gets (lanes through their generated YAML).
SPARK_CONF = {
    "spark.master": "local[2]",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "4g",
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.showConsoleProgress": "false",
}
LABELS = {**warm_report.LABELS, "ray_data": "Ray Data (actor pool)"}  # the warm harness's names, plus Ray
CONTENDERS = tuple(LABELS)
LANES = {"dataframe_lane": "dataframe", "arrow_lane": "arrow"}


def run_env() -> dict[str, str]:
    """The environment of every timed command: the checkout importable, quiet TF, local-only Spark."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), path) if p)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("PYSPARK_PYTHON", None)  # each command's own interpreter runs its workers
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


def ray_python() -> str:
    return str(RAY_VENV / "bin" / "python")


def ray_unavailable_reason() -> str | None:
    """None when the Ray venv exists and imports ray, else why not."""
    py = ray_python()
    if not os.path.isfile(py):
        return f"{RAY_VENV} missing (make bench-ray-venv)"
    p = subprocess.run([py, "-c", "import ray, ray.data, tensorflow, pyarrow; print(ray.__version__)"],
                       capture_output=True, text=True, env=run_env(), timeout=300)
    if p.returncode != 0:
        return f"ray venv does not import: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}"
    return None


def lane_config(w: Workload, path: str) -> str:
    """Write the lanes' job YAML for workload `w` (output path and lane come with --set)."""
    import yaml

    spark = {**SPARK_CONF, **w.spark_conf}
    cfg: dict[str, Any] = {
        "spark": spark,
        "input": {"path": w.data_path, "format": "parquet"},
        "model": {"path": w.model_path, "batch_size": w.batch_size},
        "output": {"path": "unset", "mode": "error", "keep_columns": ["id"], "rename": {"output_0": "prediction"}},
    }
    if w.stacked:
        cfg["input"]["columns"] = {w.input_name: list(w.columns)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path


def command(key: str, w: Workload, *, out: str, loads_dir: str, config: str | None = None,
            remote: str | None = None) -> list[str]:
    """The whole command contender `key` runs for workload `w`, writing to `out`.

    `remote` (`sc://host:port`): the lanes and the Spark peers run as Spark Connect clients of
    that server (the server owns the Spark settings, so the peers get no --master/--conf)."""
    if key in LANES:
        assert config is not None
        return [sys.executable, "-m", "batchscore", "score", "--config", config, "--quiet",
                "--set", f"input.lane={LANES[key]}", "--set", f"output.path={out}",
                *(["--remote", remote] if remote else [])]
    kind = {"bare_tf": "bare_tf", "predict_batch_udf": "predict_batch_udf", "pandas_udf": "pandas_udf",
            "ray_data": "ray"}[key]
    py = ray_python() if key == "ray_data" else sys.executable
    argv = [py, "-m", "bench.oneshot", kind, "--data", w.data_path, "--model", w.model_path,
            "--input", w.input_name, "--batch-size", str(w.batch_size), "--out", out, "--loads-dir", loads_dir]
    argv += ["--columns", ",".join(w.columns)] if w.stacked else ["--tensor", w.columns[0], "--shape",
                                                                  ",".join(map(str, w.tensor_shape))]
    if key in ("predict_batch_udf", "pandas_udf") and remote:
        argv += ["--remote", remote]
    elif key in ("predict_batch_udf", "pandas_udf"):
        for k, v in {**SPARK_CONF, **w.spark_conf}.items():
            if k == "spark.master":
                argv += ["--master", v]
            else:
                argv += ["--conf", f"{k}={v}"]
    return argv


# ---------------------------------------------------------------- sampling the run's processes


def _is_worker(cmd: list[str], parent_cmd: list[str], *, root: bool, key: str) -> bool:
    """A process that scores: a forked pyspark worker, a Ray actor, or bare TF's one process."""
    text = " ".join(cmd)
    if "udfs.daemon" in text:  # batchscore's daemon (udfs/daemon.py): its forks score; it and its stand-in do not
        return "udfs.daemon" in " ".join(parent_cmd)
    if "pyspark.daemon" in text or "pyspark.worker" in text:
        return "pyspark.daemon" in " ".join(parent_cmd) or "pyspark.worker" in text
    if text.startswith("ray::"):  # only the actors of the model's map (not Ray's idle or read workers)
        return "Scorer" in text
    return root and key == "bare_tf"


@dataclass
class ProcInfo:
    pid: int
    cmd: str
    worker: bool
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0
    cpu_base: float = 0.0  # CPU seconds it had used when first seen (a long-lived server's processes)


class TreeSampler:
    """A thread sampling the RSS and CPU time of every process of one session (the run's).

    `extra_sessions`: further sessions whose processes serve the run (a Connect server's JVM
    and Python workers); their CPU counts from when the sampler first sees them."""

    def __init__(self, root_pid: int, key: str, *, interval: float = SAMPLE_S, series: bool = False,
                 extra_sessions: frozenset[int] = frozenset()) -> None:
        self.root_pid, self.key, self.interval = root_pid, key, interval
        self.extra_sessions = extra_sessions
        self.procs: dict[int, ProcInfo] = {}
        self._handles: dict[int, psutil.Process] = {}
        self.series: list[dict[str, Any]] | None = [] if series else None
        self.peak_tree_rss_mb = 0.0
        self._t0 = time.perf_counter()
        self._last_scan = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cold-sampler", daemon=True)
        self._thread.start()

    def _scan(self) -> None:
        """Find the run's new processes: same session id as the command (getsid is one cheap syscall)."""
        for pid in psutil.pids():
            known = self.procs.get(pid)
            if known is not None:
                if not known.worker and self.key == "ray_data" and pid in self._handles:
                    try:  # a Ray worker renames itself ray::<actor> once it has started
                        cmd = " ".join(self._handles[pid].cmdline())
                        known.worker = cmd.startswith("ray::") and "Scorer" in cmd
                    except psutil.Error:
                        pass
                continue
            try:
                sid = os.getsid(pid)
                if sid != self.root_pid and sid not in self.extra_sessions:
                    continue
                p = psutil.Process(pid)
                cmd = p.cmdline()
                parent = p.parent()
                parent_cmd = parent.cmdline() if parent is not None else []
                t = p.cpu_times()
            except (OSError, psutil.Error):
                continue
            self._handles[pid] = p
            self.procs[pid] = ProcInfo(pid, " ".join(cmd)[:160],
                                       _is_worker(cmd, parent_cmd, root=pid == self.root_pid, key=self.key),
                                       cpu_base=t.user + t.system if sid != self.root_pid else 0.0)

    def _sample(self) -> None:
        now = time.perf_counter()
        if now - self._last_scan >= RESCAN_S:
            self._scan()
            self._last_scan = now
        tree, workers = 0.0, {}
        for pid, h in list(self._handles.items()):
            try:
                with h.oneshot():
                    rss = h.memory_info().rss / MB
                    t = h.cpu_times()
            except psutil.Error:
                del self._handles[pid]
                continue
            if rss == 0.0:  # a zombie (exited, not yet reaped) reports no memory
                continue
            info = self.procs[pid]
            info.peak_rss_mb = max(info.peak_rss_mb, rss)
            info.cpu_s = max(info.cpu_s, t.user + t.system - info.cpu_base)
            tree += rss
            if info.worker:
                workers[pid] = round(rss, 1)
        self.peak_tree_rss_mb = max(self.peak_tree_rss_mb, tree)
        if self.series is not None:
            self.series.append({"t": round(now - self._t0, 2), "tree_rss_mb": round(tree, 1), "workers": workers})

    def _loop(self) -> None:
        self._last_scan = 0.0
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def own_cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.procs.values())

    def summary(self) -> dict[str, Any]:
        workers = [p for p in self.procs.values() if p.worker]
        scoring = [p for p in workers if p.cpu_s >= 0.5]  # workers that did real work
        return {
            "processes_seen": len(self.procs),
            "workers_seen": len(workers),
            "scoring_workers": len(scoring),
            "peak_worker_rss_mb": round(max((p.peak_rss_mb for p in workers), default=0.0), 1) or None,
            "peak_tree_rss_mb": round(self.peak_tree_rss_mb, 1),
            "own_cpu_s": round(self.own_cpu_s(), 2),
        }


# ---------------------------------------------------------------- one timed run


MANIFEST_KEYS = ("lane", "rows_in", "rows_scored", "rows_quarantined", "seconds_total", "seconds_scoring",
                 "rows_per_second", "model_loads", "python_workers", "peak_worker_rss_mb", "model_calls",
                 "max_rows_per_call", "seconds_by_phase")


def count_output_rows(path: str) -> int | None:
    """Rows in the Parquet files of `path` (footers only); None if unreadable."""
    import pyarrow.dataset as ds

    try:
        return ds.dataset(path, format="parquet").count_rows()
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        del e
        return None


def read_manifest(out: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(out, "_manifest.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _last_line(path: str) -> str:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errs = [ln for ln in lines if ln.startswith("error") or "Error" in ln]
    return ((errs or lines or [""])[-1])[:300]


def timed_run(key: str, w: Workload, *, run_dir: str, own_sessions: set[int], th: quiet.Thresholds,
              config: str | None = None, series: bool = False, timeout_s: float = RUN_TIMEOUT_S,
              sampler_cls: type[TreeSampler] | None = None, remote: str | None = None,
              server_sessions: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Run contender `key` on `w` cold and alone; returns the run's record (see bench/README.md).

    `sampler_cls`: a TreeSampler that also finds processes outside the command's session
    (bench/sharing.py: the model host, detached into a session of its own). `remote`: the
    command is a client of that Spark Connect server, whose sessions `server_sessions` are
    tolerated before the run and sampled as the run's own during it (bench/connect.py)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    out, loads_dir = os.path.join(run_dir, "out"), os.path.join(run_dir, "loads")
    argv = command(key, w, out=out, loads_dir=loads_dir, config=config, remote=remote)
    c = quiet.before_run(own_sessions, th, tolerate=server_sessions)
    snap0, stat0 = quiet.cpu_snapshot(), quiet.proc_stat()
    with open(os.path.join(run_dir, "stdout.log"), "w") as so, open(os.path.join(run_dir, "stderr.log"), "w") as se:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=run_env(), stdout=so, stderr=se,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        own_sessions.add(proc.pid)
        sampler = (sampler_cls(proc.pid, key, series=series) if sampler_cls
                   else TreeSampler(proc.pid, key, series=series, extra_sessions=server_sessions))
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            rc = proc.wait()
        seconds = time.perf_counter() - t0
        sampler.stop()
    stat1, snap1 = quiet.proc_stat(), quiet.cpu_snapshot()
    foreign = quiet.foreign_cpu_seconds(snap0, snap1, own_sessions | server_sessions,
                                        exclude_pids=frozenset({os.getpid()}))
    quiet.after_run(c, th, wall_s=seconds, own_cpu_s=sampler.own_cpu_s(), foreign_cpu_s=foreign,
                    run_busy=quiet.busy_fraction(stat0, stat1))
    rec: dict[str, Any] = {"key": key, "workload": w.name, "rows": w.rows, "seconds": round(seconds, 3),
                           "rc": rc, "pid": proc.pid, "command": argv, "run_dir": run_dir, "contention": c.to_json(),
                           **sampler.summary()}
    if series:
        rec["series"] = sampler.series
    rec.update(_check_output(key, w, out, loads_dir, rc, run_dir))
    return rec


def _check_output(key: str, w: Workload, out: str, loads_dir: str, rc: int, run_dir: str) -> dict[str, Any]:
    """Rows written, model loads, the manifest (lanes); `ok` when all add up."""
    res: dict[str, Any] = {"rows_written": count_output_rows(out) if rc == 0 else None}
    problems = []
    if rc != 0:
        problems.append(f"exit {rc}: {_last_line(os.path.join(run_dir, 'stderr.log'))}")
    elif res["rows_written"] != w.rows:
        problems.append(f"{res['rows_written']} rows written, expected {w.rows}")
    if key in LANES:
        m = read_manifest(out)
        res["manifest"] = {k: m.get(k) for k in MANIFEST_KEYS} if m else None
        if rc == 0 and m is None:
            problems.append("no _manifest.json")
        elif m is not None:
            res["model_loads"] = m.get("model_loads")
            if m.get("lane") != LANES[key]:
                problems.append(f"manifest says lane {m.get('lane')!r}")
            if m.get("rows_in") != (m.get("rows_scored") or 0) + (m.get("rows_quarantined") or 0):
                problems.append("manifest: rows_in != rows_scored + rows_quarantined")
    else:
        res["model_loads"] = len(os.listdir(loads_dir)) if os.path.isdir(loads_dir) else None
    res["ok"] = not problems
    res["problems"] = problems
    return res


def ray_version() -> str | None:
    p = subprocess.run([ray_python(), "-c", "import ray; print(ray.__version__)"], capture_output=True,
                       text=True, env=run_env(), timeout=120)
    return p.stdout.strip() or None if p.returncode == 0 else None
