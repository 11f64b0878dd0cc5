"""Sample the RSS of the processes doing the work while a contender runs.

A background thread in the driver polls either the Python workers of the local
Spark JVM (every python process below the JVM except the `pyspark.daemon` that
forks them) or one given process (the bare TF subprocess). A window opened
around one run gives that run's peak RSS per process and the processes that
used CPU during it (the workers that did the run).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024
# CPU seconds a process must burn inside a window to count as one that did the run.
ACTIVE_CPU_SECONDS = 0.05
RESCAN_SECONDS = 1.0


@dataclass
class WindowStats:
    """What one window saw."""

    peak_rss_mb: dict[int, float] = field(default_factory=dict)  # pid -> MB
    cpu_start: dict[int, float] = field(default_factory=dict)
    cpu_end: dict[int, float] = field(default_factory=dict)
    tf_pids: set[int] = field(default_factory=set)  # processes with TensorFlow loaded
    samples: int = 0

    def active_pids(self) -> list[int]:
        """Processes that used CPU during the window."""
        return sorted(p for p, end in self.cpu_end.items()
                      if end - self.cpu_start.get(p, 0.0) >= ACTIVE_CPU_SECONDS)

    def model_workers(self) -> list[int]:
        """Active processes with TensorFlow loaded: the ones that scored.

        Python workers that only run light RDD work (e.g. listing or checking files)
        never import TensorFlow and are left out.
        """
        return [p for p in self.active_pids() if p in self.tf_pids]

    def peak_worker_rss_mb(self) -> float | None:
        """Peak RSS of the largest scoring process (all active ones if none holds TF)."""
        pids = self.model_workers() or self.active_pids() or list(self.peak_rss_mb)
        vals = [self.peak_rss_mb[p] for p in pids if p in self.peak_rss_mb]
        return round(max(vals), 1) if vals else None


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def _is_python(p: psutil.Process) -> bool:
    try:
        name = p.name().lower()
        if "python" in name:
            return True
        cmd = p.cmdline()
        return bool(cmd) and "python" in cmd[0].rsplit("/", 1)[-1].lower()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


_TF_KNOWN: set[int] = set()


def has_tensorflow(pid: int) -> bool:
    """True once the process has TensorFlow's runtime library mapped (cached: it stays loaded)."""
    if pid in _TF_KNOWN:
        return True
    try:
        with open(f"/proc/{pid}/maps") as fh:
            found = any("libtensorflow" in line or "_pywrap_tensorflow" in line for line in fh)
    except OSError:
        return False
    if found:
        _TF_KNOWN.add(pid)
    return found


# Set in `sc.environment` per contender (bench.harness.own_python_workers): Spark starts one
# pool of Python workers per environment, and every worker of a pool inherits it.
POOL_VARIABLE = "BATCHSCORE_BENCH_CONTENDER"


def _in_pool(p: psutil.Process, pool: str | None) -> bool:
    if pool is None:
        return True
    try:
        return p.environ().get(POOL_VARIABLE) == pool
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def spark_python_workers(jvm_pid: int, pool: str | None = None) -> list[psutil.Process]:
    """Python worker processes below a local Spark JVM (the forking daemons excluded),
    only those of one contender's pool when `pool` is given."""
    try:
        jvm = psutil.Process(jvm_pid)
        procs = jvm.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    workers = []
    for p in procs:
        if not _is_python(p):
            continue
        try:
            if p.ppid() == jvm_pid and any("pyspark.daemon" in a or "udfs.daemon" in a for a in p.cmdline()):
                continue  # the daemon only forks workers; it does not score
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if _in_pool(p, pool):
            workers.append(p)
    return workers


class WorkerMonitor:
    """A polling thread; `begin(...)`/`end()` bracket one run."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._window: WindowStats | None = None
        self._target: tuple[str, int] | None = None
        self._pool: str | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._workers: list[psutil.Process] = []
        self._last_scan = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss-monitor", daemon=True)
        self._thread.start()

    def _current(self, *, rescan: bool = False) -> list[psutil.Process]:
        assert self._target is not None
        kind, pid = self._target
        if kind == "spark":
            # Walking the process table costs ~10 ms: do it once a second, sample the
            # known workers (~0.2 ms each) every tick.
            now = time.monotonic()
            if rescan or now - self._last_scan >= RESCAN_SECONDS:
                self._workers = spark_python_workers(pid, self._pool)
                self._last_scan = now
            found = self._workers
        else:
            try:
                found = [psutil.Process(pid)]
            except psutil.NoSuchProcess:
                found = []
        out = []
        for p in found:  # keep one Process object per pid so cpu_times stay comparable
            out.append(self._procs.setdefault(p.pid, p))
        return out

    def _sample(self, *, first: bool = False, rescan: bool = False) -> None:
        w = self._window
        if w is None or self._target is None:
            return
        for p in self._current(rescan=rescan or first):
            try:
                rss = p.memory_info().rss / MB
                cpu = cpu_seconds(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            w.peak_rss_mb[p.pid] = max(w.peak_rss_mb.get(p.pid, 0.0), rss)
            if first or p.pid not in w.cpu_start:
                # a worker forked during the run starts from zero CPU
                w.cpu_start.setdefault(p.pid, cpu if first else 0.0)
            w.cpu_end[p.pid] = cpu
        w.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._sample()
            time.sleep(self.interval)

    def begin(self, kind: str, pid: int, pool: str | None = None) -> None:
        """Start a window watching `("spark", jvm_pid)` (the workers of `pool` only, if given)
        or `("process", pid)`."""
        with self._lock:
            self._target = (kind, pid)
            self._pool = pool
            self._window = WindowStats()
            self._sample(first=True)

    def end(self) -> WindowStats:
        with self._lock:
            self._sample(rescan=True)
            w = self._window or WindowStats()
            w.tf_pids = {p for p in w.active_pids() if has_tensorflow(p)}
            self._window = None
            self._target = None
            return w

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
