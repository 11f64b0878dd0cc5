"""`batchscore train`: the config, the arrow reader, each strategy, the exported signature, failure and resume."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
import yaml

from batchscore.config.loader import load_train_config
from batchscore.core.errors import ConfigError
from batchscore.jobs import train as train_job
from batchscore.training import parquet_reader
from tests import support
from tests.support import train as ts

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUALITY_AUC = 0.8


def write_config(tmp_path, data: str, output: str, **train: object) -> str:
    """A training config file: the synthetic set's columns, small and quick by default."""
    section = {"data": data, "features": ts.FEATURES, "label": "label", "key": "id", "validation": 0.2,
               "epochs": 3, "batch_size": 128, "learning_rate": 0.01, "hidden": [16], "shuffle_buffer": 1000,
               "output": output, **train}
    path = tmp_path / f"train-{abs(hash(json.dumps(section, default=str))) % 10**8}.yaml"
    path.write_text(yaml.safe_dump({"spark": {"spark.master": "local[2]"}, "train": section}))
    return str(path)


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory):
    """3,000 training rows in 3 files of 250-row groups, and 2,000 held-out rows."""
    root = tmp_path_factory.mktemp("train_data")
    train = ts.write_dataset(ts.synthetic_table(3000, seed=1), str(root / "train"))
    held_out = ts.synthetic_table(2000, seed=2, start_id=10_000)
    return train, held_out


def saved_model_outputs(model_dir: str, x: np.ndarray) -> dict[str, np.ndarray]:
    return support.tf_predict(model_dir, {"features": x})


def assert_quality(model_dir: str, held_out: pa.Table) -> float:
    scores = saved_model_outputs(model_dir, ts.features_of(held_out))["probability"]
    value = ts.auc(held_out.column("label").to_numpy(), scores)
    assert value >= QUALITY_AUC, f"held-out AUC {value:.3f} < {QUALITY_AUC}"
    return value


# --- config ---


@pytest.mark.parametrize(("override", "key"), [
    ("train.epoch=3", "unknown config key 'train.epoch'"),
    ("train.task=ranking", "'train.task' must be one of binary, multiclass, regression"),
    ("train.strategy=horovod", "'train.strategy' must be one of default, mirrored, multi_worker"),
    ("train.reader=spark", "'train.reader' must be one of arrow, petastorm"),
    ("train.epochs=0", "'train.epochs' must be a positive integer"),
    ("train.workers=two", "'train.workers' must be a positive integer"),
    ("train.validation=1.5", "'train.validation' must be a fraction"),
    ("train.model=resnet", "'train.model' must be mlp, cnn or 'package.module:function'"),
    ("train.model=cnn", "'train.input_shape' is required for model cnn"),
    ("train.input_shape=[0, 3]", "'train.input_shape' must be a list of positive dimensions"),
    ("train.learning_rate=-1", "'train.learning_rate' must be a positive number"),
    ("trainer.epochs=1", "unknown config key 'trainer'"),
])
def test_config_errors_are_one_line_naming_the_key(override, key):
    base = ["train.data=/d", "train.features=[a, b]", "train.label=y", "train.output=/m"]
    with pytest.raises(ConfigError) as e:
        load_train_config(None, [*base, override])
    assert key in str(e.value)
    assert "\n" not in str(e.value)


def test_required_keys_and_defaults():
    with pytest.raises(ConfigError, match=r"config key 'train\.data' is required"):
        load_train_config(None, ["train.features=[a]", "train.label=y", "train.output=/m"])
    spec = load_train_config(None, ["train.data=/d", "train.features=pixels", "train.label=y", "train.output=/m/"])
    assert (spec.train.features, spec.train.strategy, spec.train.reader, spec.train.epochs) == ("pixels", "default",
                                                                                                "arrow", 2)
    assert spec.checkpoint_dir == "/m_checkpoints"


def test_cli_config_error_exits_2_with_one_line(tmp_path):
    config = write_config(tmp_path, "/nowhere", str(tmp_path / "m"), optimizer="sgd")
    out = subprocess.run([sys.executable, "-m", "batchscore", "train", "--config", config],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert "unknown config key 'train.optimizer'" in out.stderr


def test_missing_column_exits_2_naming_it(tmp_path, binary_data, capsys):
    config = write_config(tmp_path, binary_data[0], str(tmp_path / "m"), label="defaulted")
    assert train_job.main(["--config", config, "--quiet"]) == 2
    assert "column 'defaulted' not found" in capsys.readouterr().err


# --- the arrow reader ---


def test_arrow_shards_cover_every_row_exactly_once(tmp_path):
    table = ts.synthetic_table(2000, seed=3)
    table = table.set_column(1, "f0", pa.array(table.column("id").to_numpy().astype(np.float32)))  # f0 = id
    path = ts.write_dataset(table, str(tmp_path / "d"), files=3, row_group_rows=150)
    plan = parquet_reader.plan_dataset(path, features=ts.FEATURES, label="label", key="id")
    assert plan.rows == 2000 and len(plan.units) == 15  # 3 files x 5 row groups (667 rows: 150 x 4 + 67)
    everything = np.arange(2000)
    for n in (1, 2, 3, 4):
        ids, units = [], []
        for shard in range(n):
            stats = parquet_reader.ReaderStats()
            for x, _ in parquet_reader.iter_shard(plan, shard=shard, num_shards=n, seed=5, epoch=1,
                                                 buffer_rows=300, stats=stats):
                ids.append(x[:, 0])
            units += stats.units_read
        np.testing.assert_array_equal(np.sort(np.concatenate(ids)).astype(np.int64), everything)
        assert len(units) == len(set(units)) == len(plan.units)  # each row group read by one worker
    # the split: train and validation partition the rows the same way every time, about 20% held out
    parts = {s: np.sort(np.concatenate([x[:, 0] for x, _ in parquet_reader.iter_shard(
        plan, subset=s, validation=0.2, seed=9, shuffle=False)])) for s in ("train", "validation")}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))), everything)
    assert 300 < len(parts["validation"]) < 500
    held = parquet_reader.in_validation(table.column("id"), fraction=0.2, seed=9)
    np.testing.assert_array_equal(parts["validation"], np.flatnonzero(held))


def test_arrow_reader_memory_stays_bounded_and_shuffles_by_seed(tmp_path):
    table = ts.synthetic_table(12_000, seed=4)
    table = table.set_column(1, "f0", pa.array(table.column("id").to_numpy().astype(np.float32)))
    path = ts.write_dataset(table, str(tmp_path / "big"), files=2, row_group_rows=3000)
    plan = parquet_reader.plan_dataset(path, features=ts.FEATURES, label="label", key="id")

    def read(epoch: int, seed: int = 1) -> tuple[np.ndarray, parquet_reader.ReaderStats]:
        stats = parquet_reader.ReaderStats()
        chunks = list(parquet_reader.iter_shard(plan, seed=seed, epoch=epoch, buffer_rows=1000, piece_rows=256,
                                                stats=stats))
        assert max(len(x) for x, _ in chunks) <= 1000 + 256
        return np.concatenate([x[:, 0] for x, _ in chunks]), stats

    order, stats = read(epoch=0)
    assert stats.rows == 12_000 and plan.rows > 10 * 1000  # the data is 12x the buffer
    assert stats.peak_buffer_rows <= 1000 + 256  # the buffer plus one piece being added
    np.testing.assert_array_equal(np.sort(order), np.arange(12_000))
    assert not np.array_equal(order, np.sort(order))
    np.testing.assert_array_equal(read(epoch=0)[0], order)  # same seed and epoch: same order
    assert not np.array_equal(read(epoch=1)[0], order)  # a new epoch: a new order


def test_arrow_tf_dataset_has_a_fixed_signature_and_every_row(tmp_path):
    import tensorflow as tf

    table = ts.synthetic_table(1000, seed=6)
    path = ts.write_dataset(table, str(tmp_path / "d"), files=2, row_group_rows=128)
    plan = parquet_reader.plan_dataset(path, features=ts.FEATURES, label="label", key="id")
    dataset = parquet_reader.tf_dataset(plan, batch_size=64, seed=1, buffer_rows=200)
    assert dataset.element_spec == (tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None], tf.float32))
    sizes = [int(y.shape[0]) for _, y in dataset]
    assert sizes == [64] * 15 + [40]
    got = np.sort(np.concatenate([x.numpy()[:, 1] for x, _ in dataset]))
    np.testing.assert_array_equal(got, np.sort(table.column("f1").to_numpy()))


# --- strategies, the signature, the manifest ---


def test_default_strategy_trains_to_quality_and_exports_the_design_signature(tmp_path, binary_data, capsys):
    import tensorflow as tf

    data, held_out = binary_data
    output = str(tmp_path / "model")
    assert train_job.main(["--config", write_config(tmp_path, data, output), "--quiet"]) == 0
    m = ts.read_manifest(output)
    rows, val_rows = m["history"][0]["rows"], m["history"][0]["val_rows"]
    assert f"batchscore train: 3 epoch(s) on {rows:,} rows (+{val_rows:,} validation) (default" in capsys.readouterr().out
    fn = tf.saved_model.load(output).signatures["serving_default"]
    assert list(fn.structured_input_signature[1]) == ["features"]
    assert fn.structured_input_signature[1]["features"].shape.as_list() == [None, 8]
    assert {k: v.shape.as_list() for k, v in fn.structured_outputs.items()} == {"probability": [None]}
    assert_quality(output, held_out)
    assert (m["status"], m["strategy"], m["workers"], m["replicas"], m["epochs_run"]) == ("succeeded", "default",
                                                                                       1, 1, 3)
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m["history"][-1]["loss"] < m["history"][0]["loss"]
    assert m["history"][-1]["val_auc"] >= QUALITY_AUC
    assert m["history"][0]["rows"] + m["history"][0]["val_rows"] == 3000
    assert m["data"]["fingerprint"] and m["rows_per_second"] > 0 and m["versions"]["tensorflow"]
    assert not os.path.exists(output + "_checkpoints")  # a finished run keeps no checkpoints


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_multiclass_and_regression_signatures(tmp_path, task):
    data = ts.write_dataset(ts.synthetic_table(900, seed=7, task=task), str(tmp_path / "d"))
    held_out = ts.synthetic_table(300, seed=8, start_id=5000, task=task)
    output = str(tmp_path / "model")
    assert train_job.main(["--config", write_config(tmp_path, data, output, task=task, epochs=4), "--quiet"]) == 0
    out = saved_model_outputs(output, ts.features_of(held_out))
    y = held_out.column("label").to_numpy()
    if task == "multiclass":
        assert list(out) == ["probabilities"] and out["probabilities"].shape == (300, 3)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
        assert (out["probabilities"].argmax(axis=1) == y).mean() > 0.6  # 3 classes: chance is ~1/3
        assert ts.read_manifest(output)["model"]["outputs"] == {"probabilities": [None, 3]}
    else:
        assert list(out) == ["prediction"] and out["prediction"].shape == (300,)
        assert np.corrcoef(out["prediction"], y)[0, 1] > 0.9
        assert "val_rmse" in ts.read_manifest(output)["final"]


def test_cnn_on_an_array_column_takes_the_input_shape(tmp_path):
    import tensorflow as tf

    t = ts.synthetic_table(600, seed=9)
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ts.features_of(t), 2, axis=1).reshape(-1)), 16)
    data = ts.write_dataset(t.append_column("pixels", pixels), str(tmp_path / "d"))
    output = str(tmp_path / "cnn")
    config = write_config(tmp_path, data, output, features="pixels", model="cnn", input_shape=[4, 4, 1], epochs=1)
    assert train_job.main(["--config", config, "--quiet"]) == 0
    fn = tf.saved_model.load(output).signatures["serving_default"]
    assert fn.structured_input_signature[1]["features"].shape.as_list() == [None, 4, 4, 1]
    x = np.repeat(ts.features_of(t), 2, axis=1).reshape(-1, 4, 4, 1)
    assert saved_model_outputs(output, x)["probability"].shape == (600,)


def test_mirrored_over_two_logical_cpus_trains_to_quality(tmp_path, binary_data):
    """In its own process: logical CPU devices are set before TensorFlow starts."""
    data, held_out = binary_data
    output = str(tmp_path / "mirrored")
    config = write_config(tmp_path, data, output, strategy="mirrored", devices=2)
    out = subprocess.run([sys.executable, "-m", "batchscore", "train", "--config", config, "--quiet"],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    m = ts.read_manifest(output)
    assert (m["strategy"], m["replicas"]) == ("mirrored", 2)
    assert_quality(output, held_out)


# --- multi-worker on Spark barrier tasks ---


@pytest.mark.slow
def test_multi_worker_model_is_scored_exactly_by_the_scoring_job(spark, tmp_path, binary_data, capsys):
    from batchscore.jobs import score

    data, held_out = binary_data
    output = str(tmp_path / "mw")
    config = write_config(tmp_path, data, output, strategy="multi_worker", workers=2)
    assert train_job.main(["--config", config, "--quiet"], spark=spark) == 0, capsys.readouterr().err
    m = ts.read_manifest(output)
    assert (m["strategy"], m["workers"], m["replicas"]) == ("multi_worker", 2, 2)
    assert m["history"][0]["rows"] + m["history"][0]["val_rows"] == 3000  # both shards, every row once
    assert_quality(output, held_out)
    # the scoring job reads the export with `input.columns: {features: [...]}` and nothing else. It
    # scores one row per model call, as the bare calls below do: oneDNN's float sums can differ in the
    # last bit between calls of different batch sizes (seen: 5 of 2,000 rows 1 ulp apart at 1,024)
    inputs = ts.write_dataset(held_out, str(tmp_path / "score_in"), files=2)
    predictions = str(tmp_path / "predictions")
    assert score.main(["--config", write_score_config(tmp_path, inputs, output, predictions), "--quiet"],
                      spark=spark) == 0
    got = support.read_output(predictions, ["id", "probability"])
    np.testing.assert_array_equal(got.column("id").to_numpy(), held_out.column("id").to_numpy())
    import tensorflow as tf

    serve = tf.saved_model.load(output).signatures["serving_default"]
    x = ts.features_of(held_out)
    expected = np.concatenate([serve(features=tf.constant(x[i:i + 1]))["probability"].numpy() for i in range(len(x))])
    np.testing.assert_array_equal(got.column("probability").to_numpy(), expected)


def write_score_config(tmp_path, inputs: str, model: str, output: str) -> str:
    path = tmp_path / "score.yaml"
    path.write_text(yaml.safe_dump({
        "spark": {"spark.master": "local[2]"},
        "input": {"path": inputs, "columns": {"features": ts.FEATURES}},
        "model": {"path": model, "batch_size": 1}, "output": {"path": output, "keep_columns": ["id"]},
    }))
    return str(path)


@pytest.mark.slow
def test_failed_worker_fails_cleanly_and_a_rerun_resumes_from_the_checkpoint(spark, tmp_path, binary_data, capsys):
    data, held_out = binary_data
    output = str(tmp_path / "resumed")
    config = write_config(tmp_path, data, output, strategy="multi_worker", workers=2, epochs=2,
                          model="tests.support.train:fragile_mlp")
    plan = parquet_reader.plan_dataset(data, features=ts.FEATURES, label="label", key="id")
    shard_rows = [sum(len(y) for _, y in parquet_reader.iter_shard(plan, shard=i, num_shards=2, subset="train",
                                                                   validation=0.2, seed=7, shuffle=False))
                  for i in range(2)]
    steps_per_epoch = max(math.ceil(r / 64) for r in shard_rows)  # 128 rows a step over 2 replicas
    with open(ts.FAULT_FILE, "w") as fh:
        fh.write(str(steps_per_epoch + 1))  # worker 1 dies in epoch 2, after epoch 1's checkpoint
    try:
        assert train_job.main(["--config", config, "--quiet"], spark=spark) == 1
    finally:
        os.remove(ts.FAULT_FILE)
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err]
    assert err.startswith(f"error: training worker 1 failed (exit {ts.CRASH_EXIT}): fault: worker 1 crashed")
    assert not os.path.exists(output)
    checkpoints = output + "_checkpoints"
    assert json.load(open(os.path.join(checkpoints, "history.json")))[0]["epoch"] == 1

    assert train_job.main(["--config", config, "--quiet"], spark=spark) == 0
    m = ts.read_manifest(output)
    assert (m["resumed_from_epoch"], m["epochs_run"], [h["epoch"] for h in m["history"]]) == (1, 1, [1, 2])
    assert_quality(output, held_out)
    assert not os.path.exists(checkpoints)


def test_petastorm_reader_outside_the_lts_stack_exits_2(tmp_path, binary_data, capsys):
    try:
        import petastorm  # noqa: F401
        pytest.skip("petastorm is installed: the lts stack's tests cover its reader")
    except ImportError:
        pass
    from batchscore.training.run import petastorm_reader

    spec = load_train_config(write_config(tmp_path, binary_data[0], str(tmp_path / "m"), reader="petastorm"))
    with pytest.raises(ConfigError, match=r"'petastorm' runs only on the lts stack .*make test-lts"):
        petastorm_reader(None, spec)


def test_dataset_fingerprint_follows_the_files(tmp_path):
    path = ts.write_dataset(ts.synthetic_table(300, seed=1), str(tmp_path / "d"))
    first = parquet_reader.plan_dataset(path, features=ts.FEATURES, label="label", key="id").fingerprint
    assert parquet_reader.plan_dataset(path, features=ts.FEATURES, label="label", key="id").fingerprint == first
    ts.write_dataset(ts.synthetic_table(301, seed=1), path)
    assert parquet_reader.plan_dataset(path, features=ts.FEATURES, label="label", key="id").fingerprint != first
    assert ds.dataset(path).count_rows() == 301


def test_filter_is_evaluated_as_spark_evaluates_it(spark, tmp_path, binary_data, capsys):
    data = binary_data[0]
    output = str(tmp_path / "filtered")
    predicate = "f1 > 0.25 AND id NOT IN (1, 2, 3) OR f2 IS NULL"
    assert train_job.main(["--config", write_config(tmp_path, data, output, epochs=1, filter=predicate),
                           "--quiet"], spark=spark) == 0
    first = ts.read_manifest(output)["history"][0]
    assert first["rows"] + first["val_rows"] == spark.read.parquet(data).where(predicate).count()
    capsys.readouterr()
    for bad, message in [("no_such_column > 1", "train.filter 'no_such_column > 1' is not valid"),
                         ("id % 3 <> 0", "train.filter: the Arrow lane does not evaluate Remainder")]:
        assert train_job.main(["--config", write_config(tmp_path, data, output, filter=bad), "--quiet"],
                              spark=spark) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")  # after pyspark's own log


def test_tensorflow_binds_a_reserved_port_only_with_tf_grpc_reuse_port():
    """The race-free port: the barrier task holds it (SO_REUSEPORT) while TensorFlow's gRPC server
    binds it too, which TensorFlow allows only with TF_GRPC_REUSE_PORT=1 (its default is off)."""
    from batchscore.training.multiworker import reserved_port

    child = "import tensorflow as tf; print(tf.distribute.MultiWorkerMirroredStrategy().num_replicas_in_sync)"
    with reserved_port() as port:
        results = {}
        for reuse in ("0", "1"):
            tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
            env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_GRPC_REUSE_PORT": reuse}
            results[reuse] = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True,
                                            timeout=180)
    assert results["0"].returncode != 0 and "Could not start gRPC server" in results["0"].stderr
    assert results["1"].returncode == 0 and results["1"].stdout.strip() == "1"


def test_more_workers_than_task_slots_exits_2_naming_the_key(spark, tmp_path, binary_data, capsys):
    config = write_config(tmp_path, binary_data[0], str(tmp_path / "m"), strategy="multi_worker", workers=3)
    assert train_job.main(["--config", config, "--quiet"], spark=spark) == 2  # local[2]: two slots
    assert capsys.readouterr().err.strip() == ("error: config key 'train.workers' 3 is more than the cluster's 2 task "
                                               "slots (barrier tasks all run at once)")


def test_multi_worker_under_spark_connect_exits_2_saying_what_to_use(tmp_path, binary_data, connect_server, capsys):
    data, _ = binary_data
    config = write_config(tmp_path, data, str(tmp_path / "model"), strategy="multi_worker", workers=2)
    assert train_job.main(["--config", config, "--remote", connect_server, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "multi_worker needs a classic Spark session" in err[0], err
    assert "train.strategy default or mirrored" in err[0]
    assert not os.path.exists(tmp_path / "model")
