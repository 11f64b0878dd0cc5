"""The Arrow lane's reader against a real S3 endpoint on loopback (moto_server)."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from batchscore.udfs.batches.arrow_filter import RowFilter
from batchscore.udfs.lanes.arrow import plan_arrow_input, read_task
from tests.support.s3 import BUCKET, put_parquet

pytest_plugins = ["tests.support.s3"]  # the s3_endpoint fixture: moto_server on 127.0.0.1


def test_arrow_lane_reads_partitioned_parquet_from_s3(s3_endpoint) -> None:
    t = pa.table({"id": pa.array(range(100), pa.int64()), "x": pa.array([i / 2 for i in range(100)], pa.float32())})
    for i, d in enumerate(["2026-01-01", "2026-01-02", "2026-01-03"]):
        shifted = t.set_column(0, "id", pa.array(range(i * 100, i * 100 + 100), pa.int64()))
        put_parquet(s3_endpoint, f"features/d={d}/part-0.parquet", shifted)
    put_parquet(s3_endpoint, "features/_SUCCESS", t.slice(0, 0))  # hidden: not data
    schema = pa.schema([("id", pa.int64()), ("x", pa.float32()), ("d", pa.date32())])
    # what batchscore.udfs.batches.arrow_filter makes of "d >= '2026-01-02' AND x < 10" (tests/scoring/test_filter_semantics.py)
    by_date = ds.field("d") >= dt.date(2026, 1, 2)
    row_filter = RowFilter(exact=by_date & (ds.field("x") < pa.scalar(10, pa.float32())), prune=by_date,
                           columns=("d", "x"))
    plan = plan_arrow_input(f"s3a://{BUCKET}/features", schema, ["id", "d", "x"],
                            row_filter=row_filter, target_tasks=4)
    assert plan.files == 3
    paths = {u["path"] for task in plan.tasks for u in task}
    assert paths == {f"{BUCKET}/features/d=2026-01-02/part-0.parquet", f"{BUCKET}/features/d=2026-01-03/part-0.parquet"}
    rows = pa.Table.from_batches([b for task in plan.tasks for b in read_task(task, plan.source, {})])
    got = sorted(zip(rows.column("id").to_pylist(), rows.column("d").to_pylist(), strict=True))
    want = sorted((i * 100 + k, pa.scalar(d).cast(pa.date32()).as_py())
                  for i, d in [(1, "2026-01-02"), (2, "2026-01-03")] for k in range(20))
    assert got == want
    assert rows.schema.field("d").type == pa.date32()


def test_corrupt_object_on_s3_is_named(s3_endpoint) -> None:
    from batchscore.core.errors import InputError

    t = pa.table({"id": pa.array(range(10), pa.int64())})
    put_parquet(s3_endpoint, "mixed/part-0.parquet", t)
    s3_endpoint.put_object(Bucket=BUCKET, Key="mixed/part-1.parquet", Body=b"not parquet at all")
    schema = pa.schema([("id", pa.int64())])
    with pytest.raises(InputError, match=r"part-1.parquet"):
        plan_arrow_input(f"s3://{BUCKET}/mixed", schema, ["id"], target_tasks=8)
    plan = plan_arrow_input(f"s3://{BUCKET}/mixed", schema, ["id"], target_tasks=8,
                            ignore_corrupt_files=True)
    assert plan.corrupt_files == [f"{BUCKET}/mixed/part-1.parquet"]
    assert sum(b.num_rows for task in plan.tasks for b in read_task(task, plan.source, {})) == 10
