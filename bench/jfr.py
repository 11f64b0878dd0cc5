"""Hot methods of some JVM threads, from a Java Flight Recorder file (the JDK's `jfr` tool).

`bench.floor --jfr` records the Spark JVM with JFR's `profile` settings (a stack
sample of every running Java thread about every 10-20 ms) and summarises the samples of
the task threads here: the methods found on top of the stack (self) and anywhere
in it (inclusive), as shares of the samples. No extra package: JFR and `jfr` ship
with the JDK that runs Spark.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from collections import Counter

Stack = list[str]  # frames, innermost first, as "package.Class.method"


JAVA_OPTIONS = "-XX:StartFlightRecording=settings=profile"  # record from JVM start; dump() writes it out


def _jdk_tool(name: str) -> str:
    tool = shutil.which(name)
    if tool is None:
        raise RuntimeError(f"the JDK's `{name}` tool is not on PATH")
    return tool


def dump(pid: int, path: str) -> None:
    """Write what JVM `pid` has recorded so far to `path` (the pyspark JVM outlives spark.stop())."""
    subprocess.run([_jdk_tool("jcmd"), str(pid), "JFR.dump", f"filename={path}"], check=True, capture_output=True)


def _frame(f: dict) -> str:
    m = f["method"]
    return f"{m['type']['name'].replace('/', '.')}.{m['name']}"


def _when(ts: str) -> dt.datetime:
    # "2026-11-28T01:50:51.174279709Z": keep microseconds for fromisoformat
    head, _, frac = ts.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


def thread_samples(path: str, thread_prefix: str, since: dt.datetime | None = None) -> list[Stack]:
    """Stack samples of the threads whose Java name starts with `thread_prefix` (taken after `since`)."""
    out = subprocess.run([_jdk_tool("jfr"), "print", "--json", "--events", "jdk.ExecutionSample", path],
                         check=True, capture_output=True, text=True).stdout
    stacks = []
    for e in json.loads(out)["recording"]["events"]:
        v = e["values"]
        name = (v.get("sampledThread") or {}).get("javaName") or ""
        if not name.startswith(thread_prefix) or not v.get("stackTrace"):
            continue
        if since is not None and _when(v["startTime"]) < since:
            continue
        stacks.append([_frame(f) for f in v["stackTrace"]["frames"]])
    return stacks


def hot_methods(stacks: list[Stack]) -> tuple[Counter[str], Counter[str]]:
    """(self, inclusive) sample counts per method."""
    top: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for s in stacks:
        if s:
            top[s[0]] += 1
            inclusive.update(set(s))
    return top, inclusive


def markdown(stacks: list[Stack], rows: int = 15) -> list[str]:
    """Two Markdown tables: methods on top of the stack, and methods anywhere in it."""
    top, inclusive = hot_methods(stacks)
    n = max(1, len(stacks))
    lines = [f"{len(stacks):,} stack samples of the task threads.", "",
             "| self % | method (on top of the stack) |", "|---:|---|"]
    lines += [f"| {100 * c / n:.1f} | `{m}` |" for m, c in top.most_common(rows)]
    lines += ["", "| inclusive % | method (anywhere in the stack) |", "|---:|---|"]
    lines += [f"| {100 * c / n:.1f} | `{m}` |" for m, c in inclusive.most_common(rows * 2)]
    return lines
