"""A class-data-sharing archive of Spark's JVM classes: seconds off every local job's start.

A cold Spark job loads and verifies ~20,000 classes before its first task: 7-8 s of a
local run's fixed cost on 2 cores. Java's dynamic Class-Data Sharing archive maps them,
parsed and verified, from one file instead. The archive is keyed by the `java` binary,
the Spark installation and the driver classpath, so a new JDK, pyspark or jar set finds
none (and runs as before) until it is rebuilt; the JVM ignores one that does not match.
Local sessions use it when it exists (`BATCHSCORE_JVM_CACHE=off` turns it off,
`BATCHSCORE_CACHE` moves the folder). `batchscore jvm-cache` builds it (jobs/jvm_cache.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

CACHE_ENV = "BATCHSCORE_CACHE"
SWITCH_ENV = "BATCHSCORE_JVM_CACHE"  # "off": never use the archive
# CDS messages (an archive that does not match, classes it skips) are not the job's business.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def cache_dir() -> str:
    """The folder of batchscore's machine-local caches."""
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "batchscore")
    return os.path.join(base, "jvm")


def java_binary() -> str | None:
    """The `java` Spark's launcher runs: $JAVA_HOME/bin/java, else the first on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.exists(java) else None


def archive_path(class_path: str) -> str | None:
    """Where the archive for a driver classpath (`spark.driver.extraClassPath`) lives; None without java."""
    import pyspark  # noqa: PLC0415 - pyspark is the job's optional [spark] extra

    java = java_binary()
    if java is None:
        return None
    st = os.stat(java)
    spark_home = os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__)
    key = json.dumps([java, st.st_size, int(st.st_mtime), os.path.realpath(spark_home), pyspark.__version__,
                      class_path], sort_keys=True)
    return os.path.join(cache_dir(), f"spark-{pyspark.__version__}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsa")


def java_options(class_path: str) -> str:
    """The driver JVM options that use the archive for this classpath; "" when there is none or it is off."""
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("off", "0", "false", "no"):
        return ""
    path = archive_path(class_path)
    if path is None or not os.path.isfile(path):
        return ""
    return f"-XX:SharedArchiveFile={path} {QUIET}"


def build(*, force: bool = False) -> str | None:
    """Build the archive for the classpath `batchscore.session.builder` gives local sessions; returns its path."""
    from batchscore.session.builder import local_driver_class_path  # noqa: PLC0415 - pyspark is imported there

    path = archive_path(local_driver_class_path())
    if path is None:
        print("jvm-cache: no java found (JAVA_HOME or PATH); nothing built", file=sys.stderr)
        return None
    if os.path.isfile(path) and not force:
        print(f"jvm-cache: {path} (exists)")
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    t = time.time()
    proc = subprocess.run([sys.executable, "-m", "batchscore.jobs.jvm_cache", "--dump", tmp],
                          env={**os.environ, SWITCH_ENV: "off"}, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.path.isfile(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        raise SystemExit(f"jvm-cache: building the archive failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    os.replace(tmp, path)  # readers never see a half-written archive
    print(f"jvm-cache: {path} ({os.path.getsize(path) / 2**20:.0f} MiB, built in {time.time() - t:.0f} s)")
    return path
