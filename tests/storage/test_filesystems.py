"""The driver's filesystem layer: the same tests against `HadoopFs` (the shared classic session)
and `ArrowFs` (pyarrow, no JVM: what a Spark Connect client uses) on local disk, the publish
protocol through both, and `ArrowFs` against a local S3 endpoint (moto_server). Only the
HadoopFs cases and the two session tests start Spark.
"""
from __future__ import annotations

import json
import os
import socket

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.core.errors import ConfigError
from batchscore.core.storage import pyarrow_hdfs_problem
from batchscore.output import publish
from batchscore.output.arrow_fs import ArrowFs, s3_options
from batchscore.output.filesystem import FileSystem, filesystem_for
from batchscore.output.hadoop_fs import HadoopFs
from tests.support.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server, put_parquet

pytest_plugins = ["tests.support.s3"]  # the s3_server fixture: moto_server on 127.0.0.1


@pytest.fixture(params=["hadoop", "arrow"])
def fs(request: pytest.FixtureRequest) -> FileSystem:
    """Each implementation in turn: HadoopFs on the shared classic session, ArrowFs without one."""
    if request.param == "hadoop":
        return HadoopFs(request.getfixturevalue("spark"))
    return ArrowFs()


def _parquet(path: str, rows: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(range(rows), pa.int64())}), path, row_group_size=7)


# --- the same tests against both, on local disk ---


@pytest.mark.parametrize(("path", "want"), [
    ("/tmp/bs/a/b/", "file:/tmp/bs/a/b"),
    ("/tmp//bs/./a/../c", "file:/tmp/bs/c"),
    ("file:/tmp/bs/a", "file:/tmp/bs/a"),
    ("file:///tmp/bs/a/", "file:/tmp/bs/a"),
    ("/tmp/bs/as_of_date=2026-01-31/a b", "file:/tmp/bs/as_of_date=2026-01-31/a b"),
    ("rel/x", "file:{cwd}/rel/x"),
    ("s3a://bkt/a/b/", "s3a://bkt/a/b"),
    ("s3a://bkt//a/./b/../c", "s3a://bkt/a/c"),
    ("s3a://bkt", "s3a://bkt"),
])
def test_qualify_spells_paths_as_hadoop_does(fs: FileSystem, path: str, want: str) -> None:
    assert fs.qualify(path) == want.format(cwd=os.getcwd())


def test_files_are_written_read_listed_and_deleted(fs: FileSystem, tmp_path) -> None:
    root = fs.qualify(str(tmp_path / "t"))
    assert root == f"file:{tmp_path}/t"
    assert not fs.exists(root) and fs.list(root) == [] and fs.read_bytes(f"{root}/m.json") is None
    fs.write_bytes(f"{root}/a/m.json", b'{"x": 1}')  # parents made
    fs.write_bytes(str(tmp_path / "t" / "a" / "m.json"), b'{"x": 2}')  # a plain path: the same file, replaced
    fs.mkdirs(f"{root}/b/c")
    fs.mkdirs(f"{root}/b/c")  # twice: no error
    assert fs.read_bytes(f"{root}/a/m.json") == b'{"x": 2}'
    assert (tmp_path / "t" / "a" / "m.json").read_bytes() == b'{"x": 2}'
    assert fs.exists(root) and fs.exists(f"{root}/a/m.json") and fs.exists(f"{root}/b/c")
    assert sorted(fs.list(root)) == [("a", True), ("b", True)]
    assert [(n, d) for n, d in fs.list(f"{root}/a") if not n.startswith(".")] == [("m.json", False)]
    fs.write_bytes(f"{root}/a/empty", b"")
    assert fs.read_bytes(f"{root}/a/empty") == b""
    fs.delete(f"{root}/a/m.json")
    assert not fs.exists(f"{root}/a/m.json") and fs.exists(f"{root}/a/empty")
    fs.delete(root)
    fs.delete(root)  # gone already: no error
    assert not fs.exists(root) and not (tmp_path / "t").exists()


def test_rename_moves_a_directory_in_one_step_and_refuses_an_existing_destination(fs: FileSystem, tmp_path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    fs.write_bytes(str(src / "p=1" / "f"), b"one")
    inode = os.stat(src).st_ino
    fs.mkdirs(str(tmp_path / "taken"))
    with pytest.raises(OSError, match="destination exists"):
        fs.rename(str(src), str(tmp_path / "taken"))
    assert (src / "p=1" / "f").read_bytes() == b"one" and not (tmp_path / "taken" / "p=1").exists()
    fs.rename(fs.qualify(str(src)), fs.qualify(str(dst)))
    assert not src.exists() and (dst / "p=1" / "f").read_bytes() == b"one"
    assert os.stat(dst).st_ino == inode, "moved by a rename, not copied"
    with pytest.raises(Exception, match=r"does not exist|No such file"):  # HadoopFs: py4j's error, ArrowFs: OSError
        fs.rename(str(src), str(tmp_path / "elsewhere"))


def test_parquet_rows_reads_the_footer(fs: FileSystem, tmp_path) -> None:
    path = str(tmp_path / "d=1" / "part-0.parquet")
    _parquet(path, 123)
    assert fs.parquet_rows(path) == 123
    assert fs.parquet_rows(fs.qualify(path)) == 123


def test_walk_lists_data_files_by_directory_and_skips_hidden_names(fs: FileSystem, tmp_path) -> None:
    for rel in ["f0", "_SUCCESS", ".f0.crc", "a=1/f1", "a=1/f2", "a=1/b=x/f3", "a=2/_tmp/f4", "_runs/r1/f5",
                ".hidden/f6", "a=3/.f7", "only/sub/f8"]:
        fs.write_bytes(str(tmp_path / "t" / rel), rel.encode())
    fs.mkdirs(str(tmp_path / "t" / "empty" / "deeper"))
    root = fs.qualify(str(tmp_path / "t"))
    want = [("", ["f0"]), ("a=1", ["f1", "f2"]), ("a=1/b=x", ["f3"]), ("only/sub", ["f8"])]
    assert fs.walk(root) == want
    assert fs.walk(str(tmp_path / "t")) == want
    assert fs.files_under(root) == ["a=1/b=x/f3", "a=1/f1", "a=1/f2", "f0", "only/sub/f8"]
    assert fs.leaf_dirs(root) == ["", "a=1", "a=1/b=x", "only/sub"]
    assert fs.walk(str(tmp_path / "missing")) == []


# --- the publish protocol (batchscore/output/publish.py) through both ---


def _stage(staging: str) -> None:
    """A staged run as Spark writes it: ok rows in two partitions, one quarantine reason."""
    _parquet(f"{staging}/bs__reason=ok/bs__column=_/d=1/part-0.parquet", 3)
    _parquet(f"{staging}/bs__reason=ok/bs__column=_/d=2/part-0.parquet", 2)
    _parquet(f"{staging}/bs__reason=null_feature/bs__column=a/d=2/part-0.parquet", 1)
    open(f"{staging}/_SUCCESS", "wb").close()


@pytest.mark.parametrize("mode", ["overwrite", "append", "overwrite_partitions"])
def test_publish_by_renames(fs: FileSystem, tmp_path, mode: str) -> None:
    out, q = fs.qualify(str(tmp_path / "out")), fs.qualify(str(tmp_path / "out_quarantine"))
    _parquet(f"{tmp_path}/out/d=1/old.parquet", 9)
    _parquet(f"{tmp_path}/out/d=3/old.parquet", 4)
    staging = publish.staging_path(out, "r1")
    _stage(staging.removeprefix("file:"))
    assert publish.staged_counts(fs, staging) == {"ok": 5, "null_feature": 1}
    assert publish.partitions_in(fs, staging) == {"d=1", "d=2"}
    new_out = publish.new_output_dir(fs, staging, out, "r1")
    new_q = publish.build_quarantine_tree(fs, staging, "r1", q)
    assert new_q is not None
    assert new_out == publish.sibling(out, "new", "r1") and fs.files_under(new_out) == [
        "d=1/part-0.parquet", "d=2/part-0.parquet"]
    assert fs.files_under(new_q) == ["reason=null_feature/column=a/d=2/part-0.parquet"]
    publish.publish_dir(fs, new_out, out, mode, "r1")
    publish.publish_quarantine(fs, new_q, q, mode, "r1")
    publish.mark_success(fs, out)
    publish.cleanup(fs, staging)
    want = {"overwrite": ["d=1/part-0.parquet", "d=2/part-0.parquet"],
            "append": ["d=1/old.parquet", "d=1/part-0.parquet", "d=2/part-0.parquet", "d=3/old.parquet"],
            "overwrite_partitions": ["d=1/part-0.parquet", "d=2/part-0.parquet", "d=3/old.parquet"]}[mode]
    assert fs.files_under(out) == want
    assert fs.exists(f"{out}/_SUCCESS") and fs.files_under(q) == ["reason=null_feature/column=a/d=2/part-0.parquet"]
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == [], "staging or swap directories left"


def test_commit_run_on_local_disk_keeps_the_named_runs_only(fs: FileSystem, tmp_path) -> None:
    _check_commit_run(fs, fs.qualify(str(tmp_path / "out")))


def _check_commit_run(fs: FileSystem, out: str) -> None:
    """Three runs committed in turn: each commit keeps its own and the previous run's prefix."""
    manifest = f"{out}/_manifest.json"
    for run in ("r1", "r2", "r3"):
        fs.write_bytes(f"{publish.run_dir(out, run)}/part-0.parquet", run.encode())
        body = json.dumps({"run_id": run, "output": {"data_path": publish.run_dir(out, run)}}).encode()
        publish.commit_run(fs, manifest, body, roots=[out], current={publish.run_dir(out, run)})
        assert fs.read_bytes(manifest) == body
    assert [n for n, _ in fs.list(f"{out}/{publish.RUNS_DIR}")] == ["r2", "r3"]
    assert publish.committed_dirs(fs, manifest) == {publish.run_dir(out, "r3")}


def test_filesystem_for_picks_by_the_session_kind(spark) -> None:
    pytest.importorskip("grpc_status", reason="the Spark Connect client's deps are installed on the current stack")
    from pyspark.sql.connect.session import SparkSession as ConnectSession

    assert isinstance(filesystem_for(spark), HadoopFs)
    with socket.socket() as s:  # nothing listens there: building the client connects to nothing yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    connect = ConnectSession.builder.remote(f"sc://127.0.0.1:{port}").create()
    try:
        assert isinstance(filesystem_for(connect), ArrowFs)
    finally:
        connect.client.close()


def test_hdfs_without_libhdfs_is_one_clear_config_error() -> None:
    problem = pyarrow_hdfs_problem("hdfs://127.0.0.1:8020/x")
    if problem is None:
        pytest.skip("pyarrow reaches HDFS here (libhdfs found)")
    fs = ArrowFs()
    for call in (lambda: fs.qualify("hdfs://127.0.0.1:8020/out"), lambda: fs.exists("hdfs://127.0.0.1:8020/out"),
                 lambda: fs.write_bytes("viewfs://cluster/out/_manifest.json", b"{}")):
        with pytest.raises(ConfigError, match=r"HDFS paths need a classic session or pyarrow's libhdfs") as e:
            call()
        assert "\n" not in str(e.value) and "run the job with a classic session" in str(e.value)


# --- ArrowFs on S3 (moto_server): small objects only, pyarrow's multipart upload fails on moto ---


def _conf(s3: S3Server) -> dict[str, str]:
    return {"spark.hadoop.fs.s3a.endpoint": s3.url, "spark.hadoop.fs.s3a.path.style.access": "true",
            "spark.hadoop.fs.s3a.access.key": ACCESS_KEY, "spark.hadoop.fs.s3a.secret.key": SECRET_KEY}


def test_s3_options_come_from_the_s3a_settings(s3_server: S3Server) -> None:
    opts = s3_options(_conf(s3_server).get)
    host = s3_server.url.removeprefix("http://")
    assert opts == {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "endpoint_override": host, "scheme": "http",
                    "region": "us-east-1"}
    conf = {"spark.hadoop.fs.s3a.endpoint": "minio.local:9000", "spark.hadoop.fs.s3a.path.style.access": "false"}
    assert s3_options(lambda k: conf.get(k))["scheme"] == "https"
    assert s3_options(lambda k: None, env={}) == {}  # pyarrow's AWS credential chain, AWS's endpoint
    assert s3_options(lambda k: None, env={"AWS_ENDPOINT_URL_S3": "http://minio:9000", "AWS_REGION": "eu-west-1"}) == {
        "endpoint_override": "minio:9000", "scheme": "http", "region": "eu-west-1"}


def test_s3_endpoint_from_the_session_conf_wins_over_the_environment(s3_server: S3Server, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    fs = ArrowFs(_conf(s3_server).get)
    fs.write_bytes(f"s3a://{BUCKET}/conf/x", b"via conf")
    assert s3_server.client.get_object(Bucket=BUCKET, Key="conf/x")["Body"].read() == b"via conf"
    with pytest.raises(OSError):
        ArrowFs().exists(f"s3a://{BUCKET}/conf/x")  # the environment's (dead) endpoint


def test_s3_files_listed_renamed_counted_and_deleted(s3_server: S3Server) -> None:
    fs = ArrowFs()  # the AWS environment the fixture sets
    root = fs.qualify(f"s3a://{BUCKET}/t/")
    assert root == f"s3a://{BUCKET}/t" and not fs.exists(root) and fs.read_bytes(f"{root}/m") is None
    put_parquet(s3_server.client, "t/stage/d=1/part-0.parquet", pa.table({"id": list(range(17))}))
    fs.write_bytes(f"{root}/stage/d=2/part-0", b"two")
    fs.write_bytes(f"{root}/stage/_SUCCESS", b"")
    fs.mkdirs(f"{root}/empty")
    assert fs.exists(root) and fs.exists(f"{root}/stage/d=2/part-0") and fs.read_bytes(f"{root}/stage/d=2/part-0") == b"two"
    assert fs.list(root) == [("empty", True), ("stage", True)]
    assert fs.walk(f"{root}/stage") == [("d=1", ["part-0.parquet"]), ("d=2", ["part-0"])]
    assert fs.parquet_rows(f"{root}/stage/d=1/part-0.parquet") == 17
    with pytest.raises(OSError, match="destination exists"):
        fs.rename(f"{root}/stage", f"{root}/empty")
    fs.rename(f"{root}/stage", f"s3://{BUCKET}/t/moved")  # s3:// and s3a:// name the same objects
    assert not fs.exists(f"{root}/stage") and fs.files_under(f"{root}/moved") == ["d=1/part-0.parquet", "d=2/part-0"]
    assert fs.exists(f"{root}/moved/_SUCCESS")
    fs.delete(f"{root}/moved")
    assert not fs.exists(f"{root}/moved") and fs.walk(root) == []


def test_s3_commit_run_keeps_the_named_runs_only(s3_server: S3Server) -> None:
    _check_commit_run(ArrowFs(_conf(s3_server).get), f"s3a://{BUCKET}/committed")


def test_for_session_reads_the_sessions_s3a_conf(spark, s3_server: S3Server, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # only the session's conf reaches the server
    key = "spark.hadoop.fs.s3a.endpoint"
    spark.conf.set(key, s3_server.url)
    try:
        fs = ArrowFs.for_session(spark)
        fs.write_bytes(f"s3a://{BUCKET}/session/x", b"via the session")
        assert fs.read_bytes(f"s3a://{BUCKET}/session/x") == b"via the session"
    finally:
        spark.conf.unset(key)
