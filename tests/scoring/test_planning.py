"""Data-parallel planning: scoring tasks follow the task slots; too few or skewed input partitions are rebalanced."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchscore.run.lane_choice import temporary_conf
from batchscore.run.planning import Slots, slots_per_executor, task_slots
from batchscore.run.steps import run_scoring
from batchscore.udfs.lanes.arrow import plan_arrow_input, read_task
from tests import support
from tests.support import placement as ps

TOL = 1e-5
COLS = [f"f{i}" for i in range(ps.MLP_FEATURES)]


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> str:
    return ps.build_mlp(str(tmp_path_factory.mktemp("planning") / "mlp.keras"))


def _table(n: int, seed: int = 3) -> pa.Table:
    x = np.random.default_rng(seed).normal(size=(n, ps.MLP_FEATURES)).astype(np.float32)
    return pa.table({"id": pa.array(np.arange(n, dtype=np.int64)), **{c: x[:, i] for i, c in enumerate(COLS)}})


def _expected(mlp: str, table: pa.Table) -> np.ndarray:
    import keras

    x = np.stack([table.column(c).to_numpy() for c in COLS], axis=1)
    return keras.saving.load_model(mlp).predict(x, verbose=0).reshape(-1)


def _score(spark, table: pa.Table, inp: str, mlp: str, out: str, *overrides: str):
    spec = support.job_spec(inp, mlp, out, f"input.columns={COLS}", "output.keep_columns=[id]",
                            "model.batch_size=64", *overrides)
    manifest = run_scoring(spark, spec)
    got = support.read_output(out)
    ids = got.column("id").to_numpy()
    np.testing.assert_array_equal(ids, np.sort(table.column("id").to_numpy()))  # every row exactly once
    expected = dict(zip(table.column("id").to_pylist(), _expected(mlp, table), strict=True))
    assert support.max_abs_diff(got.column("output_0").to_numpy(), [expected[i] for i in ids]) <= TOL
    return manifest, got


def test_slots_follow_cores_task_cpus_and_gpus() -> None:
    assert slots_per_executor({"spark.executor.cores": "8"}) == 8
    assert slots_per_executor({"spark.executor.cores": "8", "spark.task.cpus": "2"}) == 4
    gpus = {"spark.executor.cores": "8", "spark.executor.resource.gpu.amount": "1",
            "spark.task.resource.gpu.amount": "0.25"}
    assert slots_per_executor(gpus) == 4  # four tasks share one GPU
    assert slots_per_executor({**gpus, "spark.executor.resource.gpu.amount": "4", "spark.task.resource.gpu.amount": "1"}) == 4
    assert slots_per_executor({**gpus, "spark.executor.cores": "2"}) == 2  # cores bound it first


def test_the_sessions_slots_are_its_two_local_cores(spark) -> None:
    assert task_slots(spark) == Slots(2, "executors")


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_one_file_input_is_spread_over_both_slots(spark, mlp, tmp_path, lane) -> None:
    table = _table(1200)
    inp = support.write_parquet(table, str(tmp_path / "in"), files=1)  # one file, one row group
    assert pq.ParquetFile(os.path.join(inp, "part-00000.parquet")).num_row_groups == 1
    manifest, _ = _score(spark, table, inp, mlp, str(tmp_path / "out"), f"input.lane={lane}")
    p = manifest.planning
    assert manifest.lane == lane
    assert (p.slots, p.slots_source, p.input_partitions) == (2, "executors", 1)
    assert p.rebalanced and p.tasks >= 2, p
    assert manifest.rows_scored == 1200


def test_one_file_with_a_filter_reads_each_row_range_once(spark, mlp, tmp_path) -> None:
    table = _table(1000)
    inp = support.write_parquet(table, str(tmp_path / "in"), files=1)
    manifest, got = _score(spark, table.filter(pc.greater_equal(table.column("id"), 300)), inp, mlp,
                           str(tmp_path / "out"), "input.lane=arrow", "input.filter=id >= 300")
    assert manifest.planning.rebalanced and manifest.planning.tasks == 2
    assert got.num_rows == 700


def test_a_partition_holding_every_row_is_rebalanced_in_the_dataframe_lane(spark, mlp, tmp_path) -> None:
    # one row group of 6000 rows cut by Spark into 16 KB byte ranges: the range holding the
    # group's midpoint reads every row, the others none (bytes look even, rows do not)
    table = _table(6000)
    inp = str(tmp_path / "in")
    os.makedirs(inp)
    pq.write_table(table, os.path.join(inp, "part-00000.parquet"), row_group_size=6000)
    with temporary_conf(spark, {"spark.sql.files.maxPartitionBytes": "16k"}):
        manifest, _ = _score(spark, table, inp, mlp, str(tmp_path / "out"), "input.lane=dataframe")
    p = manifest.planning
    assert p.input_partitions > 2
    assert p.rebalanced and "largest input partition" in p.reason, p
    assert p.tasks == max(4, p.input_partitions)


def test_even_partitions_are_left_alone(spark, mlp, tmp_path) -> None:
    table = _table(2000)
    inp = support.write_parquet(table, str(tmp_path / "in"), files=4)  # Spark packs them into two partitions
    manifest, _ = _score(spark, table, inp, mlp, str(tmp_path / "out"), "input.lane=dataframe")
    p = manifest.planning
    assert p.input_partitions >= 2 and (p.tasks, p.rebalanced) == (p.input_partitions, False), p
    assert "even enough" in p.reason


def test_arrow_lane_splits_a_file_much_larger_than_the_rest(tmp_path) -> None:
    root = str(tmp_path / "in")
    os.makedirs(root)
    big = _table(4000)
    pq.write_table(big, os.path.join(root, "big.parquet"), row_group_size=1000)
    small = [_table(100, seed=i) for i in range(4)]
    for i, t in enumerate(small):
        t = t.set_column(0, "id", pa.array(np.arange(4000 + 100 * i, 4100 + 100 * i, dtype=np.int64)))
        pq.write_table(t, os.path.join(root, f"small-{i}.parquet"))
    schema = big.schema
    plan = plan_arrow_input(root, schema, ["id"], target_tasks=4, slots=2)
    assert plan.rebalance is not None and plan.rebalance.startswith("1 of 5 file(s) split"), plan.rebalance
    rows = [sum(b.num_rows for b in read_task(task, plan.source, {})) for task in plan.tasks]
    assert len(plan.tasks) == 4 and max(rows) <= 1500, rows  # whole files would leave 4000 rows in one task
    ids = np.sort(np.concatenate([b.column("id").to_numpy() for task in plan.tasks
                                  for b in read_task(task, plan.source, {})]))
    np.testing.assert_array_equal(ids, np.arange(4400))


def test_row_ranges_cover_a_one_group_file_exactly_once(tmp_path) -> None:
    root = support.write_parquet(_table(777), str(tmp_path / "in"), files=1)
    plan = plan_arrow_input(root, _table(1).schema, ["id"], target_tasks=6, slots=3)
    pieces = [u for task in plan.tasks for u in task]
    assert len(plan.tasks) == 3 and all(u.get("rows") for u in pieces), plan.tasks
    ids = np.concatenate([b.column("id").to_numpy() for task in plan.tasks for b in read_task(task, plan.source, {})])
    np.testing.assert_array_equal(np.sort(ids), np.arange(777))
