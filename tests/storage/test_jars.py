"""`make jars`: Spark's connectors (S3A, Delta) on the session's classpath, and a MiniDFSCluster Spark writes to.

The connectors must be on the JVM's classpath when it starts, so `batchscore.session.builder.build_session`
adds them (and the shared `spark` fixture, built by it, has them). HDFS needs no extra jar.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from batchscore.core import compat
from batchscore.session import builder as session_mod

pytest_plugins = ["tests.support.hdfs"]  # the hdfs_uri fixture (skips without `make jars`)

ROOT = Path(__file__).resolve().parents[2]
SPARK_JARS = Path(session_mod.jars_folder())  # this pyspark's: jars/lib/spark (Spark 4) or jars/lib-spark3.5/spark
POM = ROOT / "jars" / compat.jars_pom_name()
# The AWS SDK of hadoop-aws: v2 (one `bundle`) from Hadoop 3.4 on, v1 (`aws-java-sdk-bundle`) before.
AWS_SDK = ({"software.amazon.awssdk.services.s3.S3Client": "bundle-{aws}.jar"} if compat.spark_version() >= (4, 0)
           else {"com.amazonaws.services.s3.AmazonS3Client": "aws-java-sdk-bundle-{aws}.jar"})
CLASSES = {  # class -> the pinned jar it must come from
    "org.apache.hadoop.fs.s3a.S3AFileSystem": "hadoop-aws-{hadoop}.jar",
    **AWS_SDK,
    "io.delta.sql.DeltaSparkSessionExtension": "delta-spark_{scala}-{delta}.jar",
    "io.delta.tables.DeltaTable": "delta-spark_{scala}-{delta}.jar",
}

needs_jars = pytest.mark.skipif(not any(SPARK_JARS.glob("hadoop-aws-*.jar")),
                                reason=f"no connector jars under {SPARK_JARS} (run `make jars` / `make jars-lts`)")


def _pom_versions() -> dict[str, str]:
    pom = POM.read_text()
    tags = {"hadoop": "hadoop.version", "aws": "aws.sdk.version", "delta": "delta.version",
            "scala": "scala.binary.version", "spark": "spark.binary.version"}
    found = {name: re.search(rf"<{tag}>([^<]+)</{tag}>", pom) for name, tag in tags.items()}
    missing = [tags[name] for name, m in found.items() if m is None]
    assert not missing, f"{POM} has no {missing}"
    return {name: m.group(1) for name, m in found.items() if m is not None}


def test_pom_pins_the_hadoop_inside_pyspark() -> None:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    (api,) = jars.glob("hadoop-client-api-*.jar")
    versions = _pom_versions()
    assert api.name == f"hadoop-client-api-{versions['hadoop']}.jar"
    assert len(list(jars.glob(f"scala-library-{versions['scala']}.*.jar"))) == 1  # delta-spark_<scala>
    assert pyspark.__version__.startswith(versions["spark"] + ".")  # the Spark the pinned delta-spark is built on


def test_connector_jars_opt_out_and_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "b.jar").write_bytes(b"")
    (tmp_path / "a.jar").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.setenv("BATCHSCORE_JARS", str(tmp_path))
    assert session_mod.connector_jars() == [str(tmp_path / "a.jar"), str(tmp_path / "b.jar")]
    conf = {"spark.driver.extraClassPath": "/opt/x.jar"}
    session_mod._with_connector_jars(conf, "local[2]")
    assert conf == {"spark.driver.extraClassPath": os.pathsep.join(["/opt/x.jar", *session_mod.connector_jars()]),
                    "spark.executor.extraClassPath": os.pathsep.join(session_mod.connector_jars())}
    conf = {}
    session_mod._with_connector_jars(conf, "yarn")
    assert conf == {"spark.jars": f"{tmp_path}/a.jar,{tmp_path}/b.jar"}
    monkeypatch.setenv("BATCHSCORE_JARS", "none")
    assert session_mod.connector_jars() == []
    monkeypatch.setenv("BATCHSCORE_JARS", str(tmp_path / "missing"))
    assert session_mod.connector_jars() == []


def _class_jar(spark: Any, name: str) -> str:
    """Load `name` through py4j in the driver JVM; the file name of the jar it came from."""
    jvm = spark.sparkContext._jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    cls = jvm.java.lang.Class.forName(name, True, loader)
    assert cls.getName() == name
    return Path(cls.getProtectionDomain().getCodeSource().getLocation().getPath()).name


@needs_jars
def test_session_loads_s3a_and_delta_classes(spark: Any) -> None:
    versions = _pom_versions()
    for name, jar in CLASSES.items():
        assert _class_jar(spark, name) == jar.format(**versions), name
    jvm = spark.sparkContext._jvm
    hadoop_conf = spark.sparkContext._jsc.hadoopConfiguration()
    s3a = jvm.org.apache.hadoop.fs.FileSystem.getFileSystemClass("s3a", hadoop_conf)
    assert s3a.getName() == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert jvm.org.apache.hadoop.util.VersionInfo.getVersion() == versions["hadoop"]


@pytest.mark.slow
@needs_jars
def test_spark_submit_sh_puts_the_jars_on_the_classpath(tmp_path: Path) -> None:
    app = tmp_path / "probe.py"
    app.write_text(textwrap.dedent(f"""
        import json
        from pyspark.sql import SparkSession
        spark = SparkSession.builder.getOrCreate()
        jvm = spark.sparkContext._jvm
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        found = {{}}
        for name in {sorted(CLASSES)!r}:
            try:
                found[name] = jvm.java.lang.Class.forName(name, True, loader).getName() == name
            except Exception:
                found[name] = False
        print("PROBE " + json.dumps(found))
        spark.stop()
    """))
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHON": sys.executable}
    env.pop("BATCHSCORE_JARS", None)
    run = subprocess.run([str(ROOT / "spark-submit.sh"), "--master", "local[1]", str(app)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("PROBE ")]
    assert json.loads(line[6:]) == dict.fromkeys(CLASSES, True)
    # BATCHSCORE_JARS=none: a cluster that has its own connectors gets none of ours.
    run = subprocess.run([str(ROOT / "spark-submit.sh"), "--master", "local[1]", str(app)], cwd=ROOT,
                         env={**env, "BATCHSCORE_JARS": "none"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("PROBE ")]
    assert json.loads(line[6:]) == dict.fromkeys(CLASSES, False)


DELTA_PROBE = """
import json, sys
from batchscore.session.builder import build_session
spark = build_session({"spark.master": "local[1]", "spark.ui.enabled": False,
                       "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
                       "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"})
df = spark.createDataFrame([(i, i * 0.25) for i in range(20)], "id long, score double")
df.write.format("delta").mode("overwrite").save(sys.argv[1])
df.where("id >= 10").write.format("delta").mode("overwrite").save(sys.argv[1])  # version 1
back = spark.read.format("delta").load(sys.argv[1])
v0 = spark.read.format("delta").option("versionAsOf", 0).load(sys.argv[1])
print("PROBE " + json.dumps({"now": sorted(tuple(r) for r in back.collect()),
                             "v0": sorted(tuple(r) for r in v0.collect())}))
spark.stop()
"""


@pytest.mark.slow
@needs_jars
def test_delta_round_trip_in_a_session_with_the_extension(tmp_path: Path) -> None:
    """Delta's extension and catalog are static settings: a session of its own (a subprocess)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("BATCHSCORE_JARS", None)
    run = subprocess.run([sys.executable, "-c", DELTA_PROBE, str(tmp_path / "delta")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [x for x in run.stdout.splitlines() if x.startswith("PROBE ")]
    rows = [[i, i * 0.25] for i in range(20)]
    assert json.loads(line[6:]) == {"now": rows[10:], "v0": rows}
    assert (tmp_path / "delta" / "_delta_log" / "00000000000000000001.json").is_file()


def test_spark_writes_and_reads_parquet_on_minidfs(spark: Any, hdfs_uri: str) -> None:
    from pyspark.testing import assertDataFrameEqual

    assert re.fullmatch(r"hdfs://127\.0\.0\.1:\d+", hdfs_uri)
    rows = [(i, f"row-{i}", i * 0.5) for i in range(100)]
    df = spark.createDataFrame(rows, "id long, name string, score double").repartition(3)
    path = f"{hdfs_uri}/smoke/table.parquet"
    df.write.mode("overwrite").parquet(path)
    back = spark.read.parquet(path)
    assertDataFrameEqual(back, df)
    jvm = spark.sparkContext._jvm
    fs = jvm.org.apache.hadoop.fs.Path(path).getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    assert fs.getClass().getName() == "org.apache.hadoop.hdfs.DistributedFileSystem"
    assert fs.exists(jvm.org.apache.hadoop.fs.Path(f"{path}/_SUCCESS"))
