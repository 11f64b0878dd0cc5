"""The scoring job on S3 through S3A (moto_server on 127.0.0.1): both lanes s3a -> s3a, and the
object-store publish protocol (batchscore/output/publish.py) surviving a run killed while publishing.

The in-process runs use the shared session, pointed at the server the way `batchscore.session.builder`
points a job's own session (`s3a_env_conf` of the AWS environment, set on its Hadoop
configuration); the killed run is a job of its own (`tests.support.fault_launcher`), whose session
gets the endpoint and the keys from the AWS environment alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core.compat import s3a_profile_provider
from batchscore.core.storage import is_object_store, pyarrow_uri
from batchscore.jobs.check_manifest import check_manifest
from batchscore.jobs.score import main
from batchscore.output.manifest import RunManifest
from batchscore.session.builder import S3A, jars_folder, s3a_env_conf
from tests import support
from tests.support.fault_launcher import DIED
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, S3Server, put_parquet

pytest_plugins = ["tests.support.s3"]  # the s3_server fixture: moto_server on 127.0.0.1

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
MULTI_SETS = ["input.columns.image=pixels", "input.columns.numeric=[f0, f1, f2, f3]",
              "input.columns.category=cat", "input.columns.count=n", "output.keep_columns=[id]",
              "model.batch_size=16"]
BAD = {7: "null_feature", 50: "bad_shape", 99: "non_finite"}  # id -> quarantine reason

needs_jars = pytest.mark.skipif(not any(Path(jars_folder()).glob("hadoop-aws-*.jar")),
                                reason=f"no hadoop-aws jar under {jars_folder()} (run `make jars` / `make jars-lts`)")


def test_s3a_conf_comes_from_the_aws_environment_without_keys() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "eu-west-1"}
    assert s3a_env_conf(env) == {S3A + "endpoint": "http://127.0.0.1:9", S3A + "path.style.access": "true",
                                 S3A + "endpoint.region": "eu-west-1",
                                 "spark.executorEnv.AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    # AWS_ENDPOINT_URL_S3 wins over the general one; a profile without keys is read through the SDK
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_PROFILE": "dev"}
    conf = s3a_env_conf(env)
    assert conf[S3A + "endpoint"] == "http://b:2" and conf[S3A + "endpoint.region"] == "us-east-1"
    assert conf[S3A + "aws.credentials.provider"] == s3a_profile_provider()
    # real AWS with keys or a role: S3A's own defaults, nothing set
    assert s3a_env_conf({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}) == {}


def test_object_stores_are_told_by_the_scheme() -> None:
    for path in ("s3a://b/p", "S3://b/p", "gs://b/p", "abfss://c@a.dfs.core.windows.net/p", "wasbs://c@a/p"):
        assert is_object_store(path), path
    for path in ("/data/p", "file:/data/p", "hdfs://nn:8020/p", "dbfs:/p", "relative/p", "C:/p"):
        assert not is_object_store(path), path


# --- the shared session on S3 ---


@pytest.fixture(scope="module")
def s3a(spark: Any, s3_server: S3Server) -> Iterator[S3Server]:
    """The shared session's Hadoop configuration given `s3a_env_conf(os.environ)`, put back after
    (and the cached S3A filesystem for the bucket closed, so none outlives the server).

    The shared session's JVM (and the Python workers it starts) began before the server's
    AWS_* variables were set, so they cannot read them from their environment as a job's own
    session does: here the keys go in S3A's own key settings and the variables in the
    workers' environment (`sc.environment`: a worker pool of their own, dropped after).
    A job run in its own process below gets none of this.
    """
    sc = spark.sparkContext
    hconf = sc._jsc.hadoopConfiguration()
    conf = {k.removeprefix("spark.hadoop."): v for k, v in s3a_env_conf(os.environ).items()
            if k.startswith("spark.hadoop.")}
    conf |= {"fs.s3a.access.key": ACCESS_KEY, "fs.s3a.secret.key": SECRET_KEY}
    saved = {k: hconf.get(k) for k in conf}
    for k, v in conf.items():
        hconf.set(k, v)
    workers_env = dict(sc.environment)
    sc.environment.update(s3_server.env)
    try:
        yield s3_server
    finally:
        sc.environment.clear()
        sc.environment.update(workers_env)
        jvm = spark.sparkContext._jvm
        jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI(f"s3a://{s3_server.bucket}/"), hconf).close()
        for k, v in saved.items():
            if v is None:
                hconf.unset(k)
            else:
                hconf.set(k, v)


def bad_rows_table(n: int, *, seed: int, start_id: int = 0) -> pa.Table:
    """`support.multi_table` rows with the three rows of `BAD` (shifted by start_id) made bad."""
    table = support.multi_table(n, seed=seed, start_id=start_id)
    pixels, f1 = table.column("pixels").to_pylist(), table.column("f1").to_numpy().copy()
    pixels[7] = None
    pixels[50] = pixels[50][:100]
    f1[99] = np.inf
    return table.set_column(1, "pixels", pa.array(pixels, pa.list_(pa.float32()))).set_column(3, "f1", pa.array(f1))


def upload(server: S3Server, prefix: str, table: pa.Table, files: int = 2) -> str:
    """`table` as `files` Parquet objects under `prefix`; returns its s3a:// URI."""
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        put_parquet(server.client, f"{prefix}/part-{i:05d}.parquet", table.slice(bounds[i], bounds[i + 1] - bounds[i]),
                    bucket=server.bucket)
    return f"s3a://{server.bucket}/{prefix}"


def read_manifest(server: S3Server, output_prefix: str) -> tuple[RunManifest, bytes]:
    raw = server.client.get_object(Bucket=server.bucket, Key=f"{output_prefix}/_manifest.json")["Body"].read()
    return RunManifest.from_json(raw), raw


def keys_under(server: S3Server, prefix: str) -> list[str]:
    pages = server.client.get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def run_prefixes(server: S3Server, output_prefix: str) -> set[str]:
    """The run ids with objects under `<output>/_runs/` (S3A's directory markers left out)."""
    return {k.split("/")[3] for k in keys_under(server, f"{output_prefix}/_runs/") if k.split("/")[3]}


def assert_scored_like_tf(model: str, table: pa.Table, manifest: RunManifest) -> None:
    """What the manifest points at holds every row of `table` once: the good ones in the output
    with bare TF's scores, the bad ones in the quarantine with their reasons."""
    start = table.column("id")[0].as_py()
    bad = {start + i: reason for i, reason in BAD.items()}
    good = np.array([i for i in table.column("id").to_pylist() if i not in bad])
    data_path, quarantine_path = manifest.output.data_path, manifest.output.quarantine_data_path
    assert data_path is not None and quarantine_path is not None, manifest.output  # S3: the run's own prefixes
    out = support.read_output(pyarrow_uri(data_path))  # pyarrow's S3 filesystem, same endpoint
    np.testing.assert_array_equal(out.column("id").to_numpy(), good)
    expected = support.tf_predict(model, support.multi_inputs(table.take(good - start)))
    assert support.max_abs_diff(out.column("score").to_numpy(), expected["score"]) <= TOL
    assert support.max_abs_diff(out.column("embedding").to_pylist(), expected["embedding"]) <= TOL
    assert out.column("label").to_pylist() == [s.decode() for s in expected["label"]]
    q = support.read_output(pyarrow_uri(quarantine_path))
    assert dict(zip(q.column("id").to_pylist(), q.column("reason").to_pylist(), strict=True)) == bad
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (table.num_rows, len(good), 3)


def assert_no_credentials(*texts: str | bytes) -> None:
    for text in texts:
        text = text.decode() if isinstance(text, bytes) else text
        assert SECRET_KEY not in text and ACCESS_KEY not in text


@pytest.fixture(scope="module")
def job_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("s3a_job") / "job.yaml"
    path.write_text("spark:\n  spark.master: local[2]\n  spark.ui.enabled: false\n")
    return str(path)


def run_here(spark: Any, job_file: str, *overrides: str, quiet: bool = False) -> int:
    """`jobs.score.main` in this process, on the shared session."""
    args = ["--config", job_file, *(["--quiet"] if quiet else [])]
    for o in overrides:
        args += ["--set", o]
    return main(args, spark=spark)


@needs_jars
@pytest.mark.parametrize("lane", ["dataframe", "arrow"])
def test_both_lanes_score_s3a_to_s3a(spark, s3a: S3Server, multi_model, job_file, lane, capfd) -> None:
    table = bad_rows_table(120, seed=4)
    in_uri = upload(s3a, f"{lane}/in", table)
    out = f"s3a://{s3a.bucket}/{lane}/out"
    assert run_here(spark, job_file, f"input.path={in_uri}", f"model.path={multi_model}", f"output.path={out}",
                    f"input.lane={lane}", *MULTI_SETS) == 0
    manifest, raw = read_manifest(s3a, f"{lane}/out")
    assert manifest.lane == lane
    assert manifest.output.data_path == f"{out}/_runs/{manifest.run_id}"
    assert manifest.output.quarantine_data_path == f"{out}_quarantine/_runs/{manifest.run_id}"
    assert_scored_like_tf(multi_model, table, manifest)
    # nothing but the commit object and the run's prefix at the output; the manifest check passes
    assert {k.split("/")[2] for k in keys_under(s3a, f"{lane}/out/")} == {"_manifest.json", "_runs"}
    assert check_manifest(out, min_rows=120).run_id == manifest.run_id
    # Spark reads the run through S3A too
    rows = spark.read.parquet(manifest.output.data_path).select("id").collect()
    assert sorted(r.id for r in rows) == [i for i in range(120) if i not in BAD]
    assert_no_credentials(raw, *capfd.readouterr())


@needs_jars
def test_object_store_output_modes_are_error_and_overwrite(spark, s3a: S3Server, multi_model, job_file,
                                                           capsys) -> None:
    in_uri = upload(s3a, "modes/in", support.multi_table(20, seed=1), files=1)
    base = [f"input.path={in_uri}", f"model.path={multi_model}", f"output.path=s3a://{s3a.bucket}/modes/out",
            *MULTI_SETS]
    for mode in ("append", "overwrite_partitions"):
        assert run_here(spark, job_file, *base, f"output.mode={mode}") == 2
        assert f"output.mode '{mode}' is not supported on an object store" in capsys.readouterr().err
    assert run_here(spark, job_file, *base, quiet=True) == 0  # output.mode error, nothing committed yet
    assert run_here(spark, job_file, *base, quiet=True) == 2
    assert "holds a committed run and output.mode is 'error'" in capsys.readouterr().err


# --- a run killed while publishing ---


def run_job(job_file: str, overrides: list[str], fault: str | None) -> subprocess.CompletedProcess[str]:
    """The scoring job in a process of its own (`tests.support.fault_launcher` with a fault), its own
    session given S3A's endpoint by `batchscore.session.builder` from the AWS environment alone."""
    launcher = ["tests.support.fault_launcher", fault] if fault else ["jobs.score"]
    cmd = [sys.executable, "-m", *launcher, "--config", job_file]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@needs_jars
@pytest.mark.slow
def test_run_killed_while_publishing_leaves_the_previous_output(spark, s3a: S3Server, multi_model, job_file,
                                                                capfd) -> None:
    out = f"s3a://{s3a.bucket}/kill/out"
    first_table, second_table = bad_rows_table(120, seed=4), bad_rows_table(120, seed=9, start_id=1000)
    first_in, second_in = upload(s3a, "kill/in1", first_table), upload(s3a, "kill/in2", second_table)
    common = [f"model.path={multi_model}", f"output.path={out}", "output.mode=overwrite", *MULTI_SETS]
    assert run_here(spark, job_file, f"input.path={first_in}", *common, quiet=True) == 0
    first, _ = read_manifest(s3a, "kill/out")

    # killed just before its commit: all of its rows copied under its own prefixes, nothing committed
    killed = run_job(job_file, [f"input.path={second_in}", *common], "die-at:commit_run")
    assert killed.returncode == DIED, killed.stderr[-3000:]
    assert "killed at publish.commit_run" in killed.stderr
    orphans = run_prefixes(s3a, "kill/out") - {first.run_id}
    assert len(orphans) == 1, "the killed run had placed its rows"
    after_kill, _ = read_manifest(s3a, "kill/out")
    assert after_kill == first  # readers still see the first run, whole
    assert check_manifest(out).run_id == first.run_id
    assert_scored_like_tf(multi_model, first_table, after_kill)

    # the rerun publishes cleanly and deletes the killed run's files (the first run's stay one more run)
    assert run_here(spark, job_file, f"input.path={second_in}", *common) == 0
    second, raw = read_manifest(s3a, "kill/out")
    assert second.run_id not in (first.run_id, *orphans)
    assert_scored_like_tf(multi_model, second_table, second)
    assert run_prefixes(s3a, "kill/out") == run_prefixes(s3a, "kill/out_quarantine") == {first.run_id, second.run_id}
    assert check_manifest(out).run_id == second.run_id
    logs = capfd.readouterr()
    assert_no_credentials(raw, killed.stdout, killed.stderr, *logs)
    assert "INFO batchscore" in killed.stderr  # not --quiet: real logs were read
