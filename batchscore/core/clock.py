"""Wall-clock accounting of a run: named phases from an origin (the process start for a job).

Every time is a wall-clock `time.time()`, so the times Python workers report (their own
start, their first task, the end of their last task) can be placed on the driver's line.
"""
from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field


def process_start_time(pid: int | str = "self") -> float | None:
    """Wall time (epoch seconds) a process started, from /proc (10 ms resolution), else psutil, else None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            # the command name (field 2) may hold spaces: fields after its closing ')'
            fields = fh.read().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        with open("/proc/stat", encoding="ascii") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        import psutil  # noqa: PLC0415 - optional

        return float(psutil.Process(None if pid == "self" else int(pid)).create_time())
    except Exception:  # noqa: BLE001 - no psutil, or no such process: the caller falls back
        return None


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Clock:
    """The run's origin, its named phases (seconds, in order) and when scoring started.

    `phase(name)` closes the phase that ran since the previous mark; a name given twice adds up.
    """

    origin: float = field(default_factory=time.time)
    phases: dict[str, float] = field(default_factory=dict)
    t_score: float = 0.0  # seconds_scoring starts here: the first read of the input
    _last: float = 0.0

    def __post_init__(self) -> None:
        self._last = self._last or self.origin

    @classmethod
    def from_process_start(cls) -> Clock:
        """A clock whose origin is this process's start; the time until now is `interpreter_and_imports`.

        Where the start cannot be read, the origin is now and that phase is 0.
        """
        now = time.time()
        start = process_start_time()
        clock = cls(origin=min(start, now) if start is not None else now)
        clock.phase("interpreter_and_imports", at=now)
        return clock

    @property
    def last_mark(self) -> float:
        """When the last phase closed (wall time)."""
        return self._last

    @property
    def started_at(self) -> str:
        return iso(self.origin)

    def start_scoring(self) -> None:
        self.t_score = time.time()

    def phase(self, name: str, *, at: float | None = None) -> None:
        """Close phase `name` at `at` (default now); never negative."""
        now = time.time() if at is None else at
        self.phases[name] = round(self.phases.get(name, 0.0) + max(0.0, now - self._last), 3)
        self._last = max(self._last, now)

    def split(self, parts: list[tuple[str, float]], *, name_rest: str) -> None:
        """Close the current phase as several: each (name, seconds) in order, the remainder as `name_rest`."""
        now = time.time()
        total = max(0.0, now - self._last)
        for name, secs in parts:
            secs = min(max(0.0, secs), total)
            self.phases[name] = round(self.phases.get(name, 0.0) + secs, 3)
            total -= secs
        self.phases[name_rest] = round(self.phases.get(name_rest, 0.0) + total, 3)
        self._last = now

    def seconds_total(self) -> float:
        return round(time.time() - self.origin, 3)
