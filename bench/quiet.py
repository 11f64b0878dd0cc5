"""Keeping a timed run alone on the machine, and saying when it was not.

- `stray_processes`: Spark JVMs, pyspark daemons/workers, Ray processes and other
  benchmark commands alive on the machine, each marked as the harness's own (its
  session id is one the harness started: every timed command runs in a new session,
  so its leftovers keep that id even once re-parented) or foreign.
- `clear_own_leftovers`: wait for the harness's own leftovers to exit, then end them
  by pid (SIGTERM, then SIGKILL); foreign processes are never touched.
- `ProcStat` / `cpu_snapshot`: machine CPU busy from /proc/stat and CPU seconds per
  process from psutil, so a run's foreign CPU use (everything outside the timed
  command's session) can be measured.
- `Contention`: what was seen before and during one run, and whether it counts as
  contended (with the reasons).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

# Command-line fragments that mark a process a benchmark run must not share the machine with.
MARKERS = {
    "spark_jvm": ("org.apache.spark",),
    "pyspark_worker": ("pyspark.daemon", "pyspark.worker", "batchscore.udfs.daemon", "batchscore.udfs.host.model_host"),
    "ray": ("raylet", "gcs_server", "ray::", "ray/_private", "ray/dashboard"),
    "bench": ("bench.oneshot", "bench.run", "bench.soak", "batchscore score", "jobs.score", "bench.cold_probe"),
}


@dataclass(frozen=True)
class Stray:
    pid: int
    kind: str
    own: bool  # started by this harness (its session id is one of ours)
    cmd: str


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def classify(cmdline: list[str]) -> str | None:
    """The MARKERS kind of a command line, or None."""
    text = " ".join(cmdline)
    if not text:
        return None
    for kind, frags in MARKERS.items():
        if any(f in text for f in frags):
            return kind
    return None


def stray_processes(own_sessions: set[int], *, exclude: set[int] | None = None,
                    tolerate: frozenset[int] = frozenset()) -> list[Stray]:
    """Processes of the MARKERS kinds alive now (this process and its ancestors excluded, and
    the processes of the sessions `tolerate`: a benchmark's own Connect server while it runs)."""
    skip = {os.getpid(), *(p.pid for p in psutil.Process().parents()), *(exclude or set())}
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.pid in skip or p.status() == psutil.STATUS_ZOMBIE:
                continue
            kind = classify(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        sid = _sid(p.pid) if kind else None
        if kind and (sid is None or sid not in tolerate):
            found.append(Stray(p.pid, kind, sid in own_sessions, " ".join(p.info["cmdline"])[:200]))
    return found


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def clear_own_leftovers(own_sessions: set[int], *, wait_s: float = 10.0) -> list[Stray]:
    """Wait up to `wait_s` for the harness's leftovers to exit, then end them by pid
    (SIGTERM, then SIGKILL after 2 s).

    Returns:
        The leftovers that had to be ended (empty when everything had exited by itself).
    """
    deadline = time.monotonic() + wait_s
    while True:
        own = [s for s in stray_processes(own_sessions) if s.own]
        if not own or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [s for s in own if _alive(s.pid) and _sid(s.pid) in own_sessions]
        for s in alive:
            try:
                os.kill(s.pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 2.0
        while alive and time.monotonic() < end and any(_alive(s.pid) for s in alive):
            time.sleep(0.1)
    return own


# ---------------------------------------------------------------- CPU accounting


def proc_stat() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat's first line."""
    hz = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already inside user
    return (total - idle) / hz, total / hz


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float:
    """Share of all cores' time spent busy between two `proc_stat()` readings (0..1)."""
    d_total = after[1] - before[1]
    return (after[0] - before[0]) / d_total if d_total > 0 else 0.0


def cpu_snapshot() -> dict[int, tuple[float, int | None, float]]:
    """pid -> (CPU seconds, session id, create time) for every process now."""
    snap = {}
    for p in psutil.process_iter(["pid", "cpu_times", "create_time"]):
        t = p.info["cpu_times"]
        if t is None:
            continue
        snap[p.pid] = (t.user + t.system, _sid(p.pid), p.info["create_time"] or 0.0)
    return snap


def foreign_cpu_seconds(before: dict[int, tuple[float, int | None, float]],
                        after: dict[int, tuple[float, int | None, float]], ours: set[int],
                        *, exclude_pids: frozenset[int] = frozenset()) -> float:
    """CPU seconds used between two snapshots by processes outside the sessions `ours`
    (and other than `exclude_pids`, e.g. the harness itself).

    A process that appeared in between counts with all its CPU time; one that exited
    in between is missed (the machine-wide busy figure still holds it).
    """
    total = 0.0
    for pid, (cpu, sid, created) in after.items():
        if sid in ours or pid in exclude_pids:
            continue
        prev = before.get(pid)
        if prev is not None and prev[2] == created:
            total += max(0.0, cpu - prev[0])
        else:
            total += cpu
    return total


# ---------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Thresholds:
    """When a run counts as contended.

    The 1-minute load average still carries the harness's own previous run (it
    decays with a one-minute time constant: after a 40 s run on 2 busy cores it
    reads above 1 for another minute of an idle machine), so it is recorded and
    waited for (up to `settle_max_s`) but never by itself makes a run contended.
    The CPU sample before the run and the foreign CPU during it are the checks.
    """

    max_load1: float = 1.5  # the settle wait's target; information only
    max_pre_busy: float = 0.15  # share of all cores busy in the quiet sample before the run
    max_foreign_cores: float = 0.15  # foreign CPU seconds per wall second during the run
    settle_s: float = 2.0  # length of the quiet sample
    settle_max_s: float = 15.0  # how long to wait for load1 to fall under max_load1


@dataclass
class Contention:
    """What one run's checks saw."""

    load1_before: float = 0.0
    load5_before: float = 0.0
    load1_after: float = 0.0
    pre_busy: float = 0.0  # 0..1, machine, quiet sample before the run
    run_busy: float = 0.0  # 0..1, machine, over the run
    own_cpu_s: float = 0.0
    foreign_cpu_s: float = 0.0
    foreign_cores: float = 0.0
    # machine busy minus the run's own CPU, in cores: information only (the run's processes that
    # exit between two samples, e.g. Hadoop's chmod calls, are missing from own_cpu_s)
    foreign_cores_machine: float = 0.0
    foreign_strays: list[str] = field(default_factory=list)
    killed_leftovers: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def contended(self) -> bool:
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["contended"] = self.contended
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()}


def before_run(own_sessions: set[int], th: Thresholds, *, leftover_wait_s: float = 10.0,
               tolerate: frozenset[int] = frozenset()) -> Contention:
    """Clear own leftovers, wait for load1 (bounded), take the quiet CPU sample; note foreign strays.

    Contended when the machine was busy in the sample or a foreign Spark/Ray/benchmark
    process is alive (the sessions `tolerate` excepted); load1 is recorded only (see `Thresholds`).
    """
    c = Contention()
    c.killed_leftovers = [f"{s.pid} {s.kind}" for s in clear_own_leftovers(own_sessions, wait_s=leftover_wait_s)]
    deadline = time.monotonic() + th.settle_max_s
    while os.getloadavg()[0] > th.max_load1 and time.monotonic() < deadline:
        time.sleep(1.0)
    a = proc_stat()
    time.sleep(th.settle_s)
    c.pre_busy = busy_fraction(a, proc_stat())
    c.load1_before, c.load5_before, _ = os.getloadavg()
    c.foreign_strays = [f"{s.pid} {s.kind}: {s.cmd[:80]}" for s in stray_processes(own_sessions, tolerate=tolerate)
                        if not s.own]
    if c.pre_busy > th.max_pre_busy:
        c.reasons.append(f"machine {c.pre_busy:.0%} busy before the start")
    if c.foreign_strays:
        c.reasons.append(f"{len(c.foreign_strays)} foreign Spark/Ray/benchmark process(es) alive")
    return c


def after_run(c: Contention, th: Thresholds, *, wall_s: float, own_cpu_s: float, foreign_cpu_s: float,
              run_busy: float) -> Contention:
    """Add the run's own figures and the foreign-CPU verdict."""
    c.load1_after = os.getloadavg()[0]
    c.run_busy, c.own_cpu_s, c.foreign_cpu_s = run_busy, own_cpu_s, foreign_cpu_s
    c.foreign_cores = foreign_cpu_s / wall_s if wall_s > 0 else 0.0
    if wall_s > 0:
        c.foreign_cores_machine = max(0.0, run_busy * (os.cpu_count() or 1) - own_cpu_s / wall_s)
    if c.foreign_cores > th.max_foreign_cores:
        c.reasons.append(f"foreign CPU {c.foreign_cores:.2f} cores during the run")
    return c
