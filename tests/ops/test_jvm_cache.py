"""The JVM class-data archive (batchscore/session/jvm_cache.py): keyed by JDK, Spark and classpath, used by
local sessions when it exists, ignored by the JVM when it does not match, built for real."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from batchscore.session import jvm_cache
from tests import support

ROOT = Path(__file__).resolve().parents[2]


def test_the_archive_is_keyed_by_classpath_and_used_only_when_present(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jvm_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(jvm_cache.SWITCH_ENV, raising=False)
    a, b = jvm_cache.archive_path("/x.jar"), jvm_cache.archive_path("/x.jar:/y.jar")
    assert a and b and a != b and a.startswith(str(tmp_path))
    assert jvm_cache.java_options("/x.jar") == ""  # not built: the JVM starts as before
    Path(a).parent.mkdir(parents=True)
    Path(a).write_bytes(b"")
    assert jvm_cache.java_options("/x.jar") == f"-XX:SharedArchiveFile={a} {jvm_cache.QUIET}"
    assert jvm_cache.java_options("/x.jar:/y.jar") == ""
    monkeypatch.setenv(jvm_cache.SWITCH_ENV, "off")
    assert jvm_cache.java_options("/x.jar") == ""


def test_the_jvm_ignores_an_archive_that_does_not_match_and_says_nothing(tmp_path: Path) -> None:
    java = jvm_cache.java_binary()
    assert java, "Spark needs java"
    bad = tmp_path / "bad.jsa"
    bad.write_bytes(b"not an archive" * 100)
    proc = subprocess.run([java, f"-XX:SharedArchiveFile={bad}", *jvm_cache.QUIET.split(), "-version"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert "archive" not in (proc.stdout + proc.stderr).lower()


@pytest.mark.slow
def test_built_archive_is_used_by_a_cold_job_with_the_same_results(tmp_path: Path, demo_table: pa.Table,
                                                                   demo_model: str, demo_reference) -> None:
    env = {**os.environ, jvm_cache.CACHE_ENV: str(tmp_path / "cache"), "SPARK_LOCAL_IP": "127.0.0.1",
           "PYTHONPATH": str(ROOT)}
    env.pop(jvm_cache.SWITCH_ENV, None)
    built = subprocess.run([sys.executable, "-m", "batchscore", "jvm-cache"], env=env, capture_output=True,
                           text=True, check=False, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    archive = built.stdout.split("jvm-cache: ", 1)[1].split(" ", 1)[0]
    assert os.path.getsize(archive) > 10 * 2**20
    listed = subprocess.run([sys.executable, "-m", "batchscore", "jvm-cache", "--path"], env=env,
                            capture_output=True, text=True, check=True)
    assert listed.stdout.strip() == archive
    in_path = support.write_parquet(demo_table, str(tmp_path / "in"), files=2)
    out = tmp_path / "out"
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"spark": {"spark.master": "local[2]"}, "output": {"keep_columns": ["id"]}}))
    proc = subprocess.run(
        [sys.executable, "-m", "batchscore", "score", "--config", str(job), "--set", f"input.path={in_path}",
         "--set", f"model.path={demo_model}", "--set", f"output.path={out}", "--set", support.demo_columns_override()],
        env=env, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "archive" not in proc.stderr.lower()  # CDS says nothing in a job's log
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["spark"]["class_archive"] == archive
    got = support.read_output(str(out))
    ids = got.column("id").to_numpy()
    assert sorted(ids) == sorted(demo_table.column("id").to_pylist())
    assert support.max_abs_diff(got.column("output_0").to_numpy(), demo_reference[ids]) <= 1e-5
