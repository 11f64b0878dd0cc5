"""A local S3 endpoint for tests: `moto_server` on 127.0.0.1, credentials in the standard AWS
environment variables while a module uses it, stopped after.

Use it in a test module with

    pytest_plugins = ["tests.support.s3"]

    def test_x(s3_server: S3Server) -> None:
        s3_server.client.put_object(Bucket=s3_server.bucket, Key="k", Body=b"...")

`s3_endpoint` is the same server's boto3 client alone. The credentials are made up
(moto accepts any) and distinctive, so a test can assert they appear in no log or file.
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

BUCKET = "batchscore-test"
ACCESS_KEY = "AKIABATCHSCORETEST42"
SECRET_KEY = "bs-test-secret-4f1c9e2a7b"


@dataclass(frozen=True)
class S3Server:
    url: str  # http://127.0.0.1:PORT
    bucket: str  # created empty
    client: Any  # boto3 S3 client for the server
    env: dict[str, str]  # the AWS environment variables set while the module runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_until_up(client: Any, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(50):  # up to 10 s
        try:
            client.list_buckets()
            return
        except Exception:  # noqa: BLE001 - not up yet
            assert proc.poll() is None, "moto_server exited"
            time.sleep(0.2)
    pytest.fail("moto_server did not answer on 127.0.0.1 within 10 s")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto_server on 127.0.0.1 (a free port) with one bucket; AWS_* set for pyarrow, boto3 and S3A."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    assert exe, "moto_server is installed by requirements.txt"
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=url)
        _wait_until_up(client, proc)
        client.create_bucket(Bucket=BUCKET)
        yield S3Server(url, BUCKET, client, env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_endpoint(s3_server: S3Server) -> Any:
    """The server's boto3 client (bucket `BUCKET`)."""
    return s3_server.client


def put_parquet(client: Any, key: str, table: pa.Table, *, bucket: str = BUCKET, row_group_size: int = 40) -> None:
    """Upload `table` as one Parquet object (boto3: pyarrow's multipart upload fails on moto)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group_size)
    client.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
