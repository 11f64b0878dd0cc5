"""A run's fixed cost: the driver's TF-free signature reader, the phase accounting, the warm-up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core.clock import Clock, process_start_time
from batchscore.run.steps import run_scoring
from batchscore.udfs.lanes import warmup
from batchscore.udfs.model.saved_model_proto import DTYPE_NAMES, dtype_name, parse_saved_model
from batchscore.udfs.model.signature import read_signature
from tests import support
from tests.udfs.test_padding import build_token_model

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_COLUMNS = support.demo_columns_override()
TOL = 1e-5


# --- the signature without TensorFlow ---


@pytest.fixture(scope="module")
def token_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_token_model(str(tmp_path_factory.mktemp("tokens") / "token_model"))


def _tf_view(path: str) -> dict:
    """Every signature's tensors as TensorFlow's own protobuf classes parse them."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.framework import dtypes

    sm = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
        sm.ParseFromString(fh.read())
    return _view(sm, lambda n: dtypes.as_dtype(n).name if n else "dtype_0")


def _view(sm: Any, name_of: Callable[[int], str]) -> dict:
    """`sm`: TensorFlow's SavedModel message or ours (batchscore's parser): the same fields."""
    out = {}
    for i, mg in enumerate(sm.meta_graphs):
        for key, sig in mg.signature_def.items():
            out[(i, key)] = {
                role: {k: (t.name, name_of(t.dtype), [d.size for d in t.tensor_shape.dim], t.tensor_shape.unknown_rank)
                       for k, t in getattr(sig, role).items()}
                for role in ("inputs", "outputs")
            } | {"method_name": sig.method_name}
    return out


@pytest.mark.parametrize("model", ["multi_model", "demo_model", "token_model"])
def test_protobuf_reader_equals_tensorflows_parse(model: str, request: pytest.FixtureRequest) -> None:
    # multi-input with string and int64 inputs (tf.Module), a Keras export with string
    # inputs, and [None, None] token/mask inputs
    path = request.getfixturevalue(model)
    with open(os.path.join(path, "saved_model.pb"), "rb") as fh:
        ours = _view(parse_saved_model(fh.read()), dtype_name)
    theirs = _tf_view(path)
    assert ours == theirs
    assert any(v["inputs"] for v in ours.values())


def test_dtype_names_are_tensorflows() -> None:
    from tensorflow.python.framework import dtypes

    for number, name in DTYPE_NAMES.items():
        assert dtypes.as_dtype(number).name == name
        assert dtype_name(number + 100) == dtypes.as_dtype(number + 100).name


def test_the_driver_reads_a_signature_without_importing_tensorflow(multi_model: str) -> None:
    code = ("import sys; from batchscore.udfs.model.signature import read_signature; "
            f"s = read_signature({multi_model!r}); "
            "print(sorted(i.name for i in s.inputs), 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['category',", "'count',", "'image',", "'numeric']", "False"]


def test_read_signature_types_and_shapes(multi_model: str, token_model: str) -> None:
    sig = read_signature(multi_model)
    assert [(i.name, i.dtype, i.shape) for i in sig.inputs] == [
        ("category", "string", ()), ("count", "int64", ()), ("image", "float32", (8, 8, 3)),
        ("numeric", "float32", (4,))]
    assert [(o.name, o.dtype, o.shape) for o in sig.outputs] == [
        ("doubled", "int64", ()), ("embedding", "float32", (4,)), ("grid", "float32", (2, 3)),
        ("label", "string", ()), ("score", "float32", ())]
    tokens = read_signature(token_model)
    assert [(i.name, i.dtype, i.shape) for i in tokens.inputs] == [
        ("mask", "int32", (None,)), ("tokens", "int64", (None,))]


# --- phases ---


def test_process_start_time_is_this_process() -> None:
    import time

    start = process_start_time()
    assert start is not None and start <= time.time()
    child = subprocess.run([sys.executable, "-c", "import time; from batchscore.core.clock import "
                            "process_start_time as p; print(time.time() - p())"],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert 0 <= float(child.stdout) < 60  # the child started moments ago, not at boot


def test_clock_phases_add_up_to_the_total() -> None:
    clock = Clock(origin=1000.0)
    clock.phase("a", at=1001.5)
    clock.phase("b", at=1001.0)  # a mark before the last one adds nothing
    clock.phase("a", at=1002.0)
    assert clock.phases == {"a": 2.0, "b": 0.0}
    assert clock.last_mark == 1002.0


EXPECTED_PHASES = ["interpreter_and_imports", "session_start", "signature", "input_and_schema",
                   "sample_and_checks", "python_worker_start", "tf_import_and_model_load", "scoring",
                   "commit", "count", "publish", "manifest"]


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_a_job_accounts_for_every_second_from_its_process_start(
        demo_table: pa.Table, demo_model: str, demo_reference: np.ndarray, tmp_path, lane: str) -> None:
    in_path = support.write_parquet(demo_table, str(tmp_path / "in"), files=2)
    out = str(tmp_path / "out")
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"spark": {"spark.master": "local[2]"}, "output": {"keep_columns": ["id"]}}))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.score", "--config", str(job), "--set", f"input.path={in_path}",
         "--set", f"model.path={demo_model}", "--set", f"output.path={out}", "--set", f"input.lane={lane}",
         "--set", DEMO_COLUMNS], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "session stopped in" in proc.stderr
    with open(os.path.join(out, "_manifest.json")) as fh:
        m = json.load(fh)
    phases = m["seconds_by_phase"]
    assert list(phases) == EXPECTED_PHASES
    assert all(v >= 0 for v in phases.values())
    assert phases["interpreter_and_imports"] > 0.1  # the interpreter's start and imports are counted
    assert abs(sum(phases.values()) - m["seconds_total"]) < 0.05
    assert 0 < m["seconds_scoring"] < m["seconds_total"]
    # every worker reports its start and its TF import and model load; the workers fork from the
    # daemon started while the JVM started (udfs/daemon.py), which imported TF once for them
    scoring = [w for w in m["workers"].values() if w["loads"]]
    assert m["model_loads"] == m["python_workers"] == len(scoring) >= 1
    for w in m["workers"].values():
        assert 0 < w["started_s"] < m["seconds_total"]
        assert w["loads"] in (0, 1)
        assert w["daemon_prestarted"] == 1 and w["daemon_tf_import_s"] > 0
        assert w.get("warmup_tf_import_s", 0) + w.get("tf_import_s", 0) == 0
    assert all(w["model_load_s"] > 0 for w in scoring)
    ids = demo_table.column("id").to_numpy()
    got = support.read_output(out)
    np.testing.assert_array_equal(got.column("id").to_numpy(), np.sort(ids))
    assert support.max_abs_diff(got.column("output_0").to_numpy(), demo_reference[np.sort(ids)]) <= TOL


# --- the warm-up ---


def _run(spark, demo_table: pa.Table, demo_model: str, tmp_path, *overrides: str):
    in_path = support.write_parquet(demo_table, str(tmp_path / "in"), files=4)
    model = support.fresh_copy(demo_model, str(tmp_path))  # a new fingerprint: no worker has it yet
    out = str(tmp_path / "out")
    cfg = support.job_spec(in_path, model, out, DEMO_COLUMNS, "output.keep_columns=[id]", *overrides)
    return run_scoring(spark, cfg), support.read_output(out)


def _assert_scored(out: pa.Table, demo_table: pa.Table, demo_reference: np.ndarray) -> None:
    ids = np.sort(demo_table.column("id").to_numpy())
    np.testing.assert_array_equal(out.column("id").to_numpy(), ids)
    assert support.max_abs_diff(out.column("output_0").to_numpy(), demo_reference[ids]) <= TOL


@pytest.fixture
def fresh_worker_pool(spark):
    """A Python worker pool of this test's own: Spark keys pools by the workers' environment, so
    idle workers left by earlier tests (a third one after some test's concurrent tasks) stay out."""
    env = spark.sparkContext.environment
    env["BATCHSCORE_TEST_POOL"] = uuid.uuid4().hex
    yield
    env.pop("BATCHSCORE_TEST_POOL", None)


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_the_warmup_runs_in_the_workers_that_score_and_loads_nothing(
        spark, demo_table, demo_model, demo_reference, tmp_path, lane, fresh_worker_pool):
    manifest, out = _run(spark, demo_table, demo_model, tmp_path, f"input.lane={lane}", "model.warmup=true")
    _assert_scored(out, demo_table, demo_reference)
    scoring = {w: v for w, v in manifest.workers.items() if v["loads"]}
    assert manifest.model_loads == manifest.python_workers == len(scoring) <= 2  # once per scoring worker
    # local[2]: two warm-up tasks; the scoring tasks ran in those same workers (same pool)
    warmed = {w for w, v in manifest.workers.items() if "warmup_tf_import_s" in v}
    assert warmed and set(scoring) <= warmed, manifest.workers
    assert all(v["model_load_s"] > 0 for v in scoring.values())  # the model is loaded by scoring, not the warm-up


def test_without_the_warmup_scoring_tasks_do_it_all(spark, demo_table, demo_model, demo_reference, tmp_path):
    manifest, out = _run(spark, demo_table, demo_model, tmp_path)  # the default: no warm-up
    _assert_scored(out, demo_table, demo_reference)
    assert manifest.model_loads == manifest.python_workers == len(manifest.workers) >= 1
    assert all("warmup_tf_import_s" not in w and w["model_load_s"] > 0 for w in manifest.workers.values())


@pytest.mark.parametrize("fault", ["raise", "exit"])
def test_a_failing_warmup_does_not_fail_the_run(
        spark, demo_table, demo_model, demo_reference, tmp_path, monkeypatch, fault):
    # The warm-up's task function is shipped by value from this process (batchscore.udfs.lanes.warmup reads
    # `warm_worker` when it starts): here it raises, or kills its Python worker.
    def failing_warm_worker() -> dict:
        if fault == "exit":
            os._exit(3)
        raise RuntimeError("warm-up broken on purpose")

    monkeypatch.setattr(warmup, "warm_worker", failing_warm_worker)
    manifest, out = _run(spark, demo_table, demo_model, tmp_path, "input.lane=arrow", "model.warmup=true")
    _assert_scored(out, demo_table, demo_reference)
    assert manifest.model_loads == manifest.python_workers == len(manifest.workers) >= 1
    assert all("warmup_tf_import_s" not in w for w in manifest.workers.values())


# --- the input's schema from its footer (no inference job) ---


def test_footer_schema_equals_sparks_inference(spark, tmp_path) -> None:
    from batchscore.config.job_spec import InputSpec
    from batchscore.run.inputs import footer_schema

    t = pa.table({
        "i8": pa.array([1, None], pa.int8()), "i16": pa.array([1, 2], pa.int16()), "i32": pa.array([1, 2], pa.int32()),
        "i64": pa.array([1, 2], pa.int64()), "f": pa.array([1.0, None], pa.float32()), "d": pa.array([1.0, 2.0]),
        "b": pa.array([True, False]), "s": pa.array(["a", None]), "bin": pa.array([b"x", b"y"]),
        "fl": pa.array([[1.0, None], None], pa.list_(pa.float32())),
        "nested": pa.array([[[1, 2]], []], pa.list_(pa.list_(pa.int64()))),
        "strs": pa.array([["a"], ["b", None]], pa.list_(pa.string())),
    })
    t = t.cast(t.schema.set(3, pa.field("i64", pa.int64(), nullable=False)))  # Spark reads it as nullable
    path = support.write_parquet(t, str(tmp_path / "plain"), files=2)
    ours = footer_schema(spark, InputSpec(path=path))
    assert ours is not None and ours == spark.read.parquet(path).schema
    assert spark.read.schema(ours).parquet(path).collect() == spark.read.parquet(path).collect()


def test_footer_schema_leaves_other_inputs_to_spark(spark, tmp_path) -> None:
    import pyarrow.dataset as ds

    from batchscore.config.job_spec import InputSpec
    from batchscore.run.inputs import footer_schema

    part = str(tmp_path / "part")
    ds.write_dataset(pa.table({"x": [1.0, 2.0], "k": [1, 2]}), part, format="parquet", partitioning=["k"],
                     partitioning_flavor="hive")
    assert footer_schema(spark, InputSpec(path=part)) is None  # partition column types are Spark's to infer
    ts = support.write_parquet(pa.table({"t": pa.array([1, 2], pa.timestamp("us"))}), str(tmp_path / "ts"))
    assert footer_schema(spark, InputSpec(path=ts)) is None
    u = support.write_parquet(pa.table({"u": pa.array([1, 2], pa.uint32())}), str(tmp_path / "u"))
    assert footer_schema(spark, InputSpec(path=u)) is None
    plain = support.write_parquet(pa.table({"x": [1.0]}), str(tmp_path / "plain"))
    assert footer_schema(spark, InputSpec(path=plain, ignore_corrupt_files=True)) is None
