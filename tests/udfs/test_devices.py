"""batchscore.udfs.model.devices: each task on the GPU Spark assigned it, tested on CPU with fake GPUs
(BATCHSCORE_FAKE_GPUS: the discovery script's addresses, TF logical devices), and the GPU
profiles in conf/."""
from __future__ import annotations

import glob
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchscore.config.job_spec import parse_job_spec
from batchscore.core.errors import ConfigError
from batchscore.core.spark_errors import translate_spark_error
from batchscore.run.steps import run_scoring
from batchscore.udfs.lanes.stats import merged_stats
from batchscore.udfs.model import devices
from tests import support

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TOL = 1e-5
MULTI_SET = ["input.columns.image=pixels", "input.columns.numeric=[f0, f1, f2, f3]",
             "input.columns.category=cat", "input.columns.count=n", "output.keep_columns=[id]"]


def assert_multi_like_tf(model: str, out: pa.Table, table: pa.Table) -> None:
    """`out` (sorted by id) holds every row of `table` once, scored like bare TF."""
    np.testing.assert_array_equal(out.column("id").to_numpy(), table.column("id").to_numpy())
    expected = support.tf_predict(model, support.multi_inputs(table))
    assert support.max_abs_diff(out.column("score").to_numpy(), expected["score"]) <= TOL
    assert support.max_abs_diff(out.column("embedding").to_pylist(), expected["embedding"]) <= TOL
    assert out.column("label").to_pylist() == [s.decode() for s in expected["label"]]


# --- model.gpu_memory_mb -------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -512, "lots", 1.5])
def test_gpu_memory_mb_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ConfigError) as e:
        parse_job_spec({"input": {"path": "in"}, "output": {"path": "out"},
                        "model": {"path": "m", "gpu_memory_mb": value}})
    assert str(e.value) == ("config key 'model.gpu_memory_mb' must be a positive integer (MB of GPU memory per "
                            f"process), got {value!r}")
    spec = parse_job_spec({"input": {"path": "in"}, "output": {"path": "out"}, "model": {"path": "m", "gpu_memory_mb": 512}})
    assert spec.model.gpu_memory_mb == 512


class RecordingConfig:
    """`tf.config` as `configure_gpu_memory` calls it, recording each call. TF refuses any GPU
    setting on a machine without a GPU, so this records what reaches it; the real TF calls
    run on fake GPUs (test_a_reused_worker_moves_to_its_new_device)."""

    def __init__(self, tf: Any) -> None:
        self.LogicalDeviceConfiguration = tf.config.LogicalDeviceConfiguration
        self.calls: list[tuple[str, str, Any]] = []
        self.experimental = SimpleNamespace(
            set_memory_growth=lambda gpu, on: self.calls.append(("memory_growth", gpu.name, on)))

    def set_logical_device_configuration(self, gpu: Any, configs: list[Any]) -> None:
        self.calls.append(("logical_devices", gpu.name, configs))


def test_gpu_memory_mb_reaches_the_tf_configuration_call() -> None:
    import tensorflow as tf

    gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    capped = RecordingConfig(tf)
    devices.configure_gpu_memory(capped, gpus, memory_mb=512)
    assert capped.calls == [("logical_devices", f"/physical_device:GPU:{i}",
                             [tf.config.LogicalDeviceConfiguration(memory_limit=512)]) for i in range(2)]
    growing = RecordingConfig(tf)
    devices.configure_gpu_memory(growing, gpus, memory_mb=None)
    assert growing.calls == [("memory_growth", f"/physical_device:GPU:{i}", True) for i in range(2)]


def test_gpu_memory_mb_is_accepted_by_a_run_and_cpu_tasks_record_their_device(spark, multi_model, tmp_path) -> None:
    table = support.multi_table(300)
    in_path = support.write_parquet(table, str(tmp_path / "in"), files=2)
    out_path = str(tmp_path / "out")
    manifest = run_scoring(spark, support.job_spec(in_path, multi_model, out_path, *MULTI_SET,
                                                   "model.gpu_memory_mb=512", "input.lane=arrow"))
    assert_multi_like_tf(multi_model, support.read_output(out_path), table)
    # local[2] assigns no GPUs: each worker scores where TF puts it, CPU:0 on this machine
    assert manifest.devices and set(manifest.devices) == set(manifest.workers)
    assert set(manifest.devices.values()) == {"CPU:0"}
    assert json.loads(Path(out_path, "_manifest.json").read_text())["devices"] == manifest.devices


def test_devices_of_a_worker_are_joined_across_its_tasks() -> None:
    total = merged_stats([{"devices": {"h:1": "GPU:0"}}, {"devices": {"h:1": "GPU:1", "h:2": "GPU:1"}},
                          {"devices": {"h:1": "GPU:0"}}])
    assert total == {"devices": {"h:1": "GPU:0; GPU:1", "h:2": "GPU:1"}}


def test_a_worker_configures_its_devices_once_and_says_what_it_could_not_apply(monkeypatch) -> None:
    for name, fresh in (("_worker", None), ("_said", set()), ("_last_label", None), ("_fake_gpus", 0)):
        monkeypatch.setattr(devices, name, fresh)  # this process plays a fresh worker (TF has no GPU here)
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]  # collect, print nothing
    logger = logging.getLogger("batchscore")
    logger.addHandler(handler)
    try:
        for memory_mb in (512, 1024, 1024, 512):
            device = devices.pin_task(["0"], memory_mb=memory_mb)
    finally:
        logger.removeHandler(handler)
    assert device == devices.TaskDevice("/device:CPU:0", "CPU:0 (gpu 0 assigned, not visible)", ("/device:CPU:0",))
    assert devices.last_label() == device.label
    assert len(said) == 2, said  # the fallback once, the cap it could not apply once
    assert said[0].startswith("Spark assigned gpu 0 to this task, but TensorFlow has no such device")
    assert said[1].startswith("model.gpu_memory_mb 1024 not applied in this Python worker")
    assert "configured its GPUs with 512" in said[1]


@pytest.mark.parametrize(("raw", "want"), [(None, 0), ("", 0), ("0", 0), ("3", 3), ("two", None), ("-1", None),
                                         (" 2", None)])
def test_fake_gpus_is_a_whole_number_read_once_per_process(monkeypatch, raw: str | None, want: int | None) -> None:
    monkeypatch.setattr(devices, "_fake_gpus", None)  # this process plays a fresh worker
    if raw is None:
        monkeypatch.delenv(devices.FAKE_GPUS_ENV, raising=False)
    else:
        monkeypatch.setenv(devices.FAKE_GPUS_ENV, raw)
    if want is None:  # the discovery script's rule and wording (test_dag_and_manifest_check.py)
        with pytest.raises(ConfigError) as e:
            devices.fake_gpus()
        assert str(e.value) == f"BATCHSCORE_FAKE_GPUS must be a number of GPUs, got {raw!r}"
        # raised in a task, it reaches the driver as the same one line
        task_failure = Exception("Job aborted due to stage failure: ... Traceback (most recent call last):\n"
                                 f"  ...\nbatchscore.core.errors.ConfigError: {e.value}\n\tat org.apache.spark...")
        translated = translate_spark_error(task_failure)
        assert isinstance(translated, ConfigError) and str(translated) == str(e.value)
        return
    assert devices.fake_gpus() == want
    monkeypatch.setenv(devices.FAKE_GPUS_ENV, "5")
    assert devices.fake_gpus() == want  # read once: the worker's devices were set up from the first value


# --- a reused worker moves with its task ---------------------------------------------


def test_a_reused_worker_moves_to_its_new_device(multi_model) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), devices.FAKE_GPUS_ENV: "2"}
    addresses = ["0", "0", "1", "7", "7", "1"]
    proc = subprocess.run([sys.executable, "-m", "tests.support.device_switch", multi_model, *addresses],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tasks = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [t["address"] for t in tasks] == addresses

    # address i -> logical CPU:i+1; 7 has no device -> CPU:0, said once
    names = ["/device:CPU:1", "/device:CPU:1", "/device:CPU:2", "/device:CPU:0", "/device:CPU:0", "/device:CPU:2"]
    assert [t["name"] for t in tasks] == names
    assert [t["label"] for t in tasks] == [
        "CPU:1 (stands in for gpu 0)", "CPU:1 (stands in for gpu 0)", "CPU:2 (stands in for gpu 1)",
        "CPU:0 (gpu 7 assigned, not visible)", "CPU:0 (gpu 7 assigned, not visible)", "CPU:2 (stands in for gpu 1)"]
    fallback_lines = [line for line in proc.stderr.splitlines() if "has no such device" in line]
    assert len(fallback_lines) == 1 and "gpu 7" in fallback_lines[0], proc.stderr[-3000:]

    # a new device is a new load; the same device is a cache hit
    assert [t["loads"] for t in tasks] == [1, 1, 2, 3, 3, 4]
    for t in tasks:
        assert t["cached"] == [t["name"]]  # one copy, on the task's device
        if "variables" in t:  # the copy this task loaded has its variables on the task's device
            assert [v.rsplit("/", 1)[-1] for v in t["variables"]] == [t["name"].rsplit("/", 1)[-1]]
        assert len(t["alive"]) == 1 and t["alive"][0].startswith(t["name"] + "#")  # the old copy is gone
    assert sum("variables" in t for t in tasks) == 4

    expected = support.tf_predict(multi_model, support.multi_inputs(support.multi_table(40)))
    for t in tasks:
        assert support.max_abs_diff(t["score"], expected["score"]) <= TOL
        assert t["label_out"] == [s.decode() for s in expected["label"]]


# --- fake GPUs on a local cluster, with the GPU profile --------------------------------


def _spark_home(tmp_path: Path) -> str:
    """A SPARK_HOME of links into pyspark's own: the local-cluster worker writes its work dir
    (the executors' logs) under SPARK_HOME, here under tmp_path rather than in the venv."""
    import pyspark

    real = os.path.dirname(pyspark.__file__)
    home = tmp_path / "spark_home"
    home.mkdir()
    for name in os.listdir(real):
        if name != "work":  # another local-cluster run's executor logs, if one ran with pyspark's own home
            (home / name).symlink_to(os.path.join(real, name))
    return str(home)


def fake_gpu_command(job_yaml: Path) -> list[str]:
    """docs/gpu-on-a-laptop.md: two fake GPUs on local-cluster[1,2,1024], one per task, with
    conf/spark-cluster-gpu.conf (`local[2]` would not do: Spark 4.1's local mode never starts a task
    that asks for a GPU). BATCHSCORE_FAKE_GPUS comes from the environment (see the test)."""
    discovery = str(CONF / "spark-gpu-discovery.sh")
    confs = {
        "spark.worker.resource.gpu.amount": "2", "spark.worker.resource.gpu.discoveryScript": discovery,
        "spark.executor.resource.gpu.discoveryScript": discovery,
        "spark.executor.resource.gpu.amount": "2", "spark.task.resource.gpu.amount": "1",
        "spark.executor.cores": "2", "spark.task.cpus": "1", "spark.executor.memory": "1g",
    }
    cmd = [str(ROOT / "spark-submit.sh"), "--master", "local-cluster[1,2,1024]",
           "--properties-file", str(CONF / "spark-cluster-gpu.conf"), "--driver-memory", "2g"]
    for k, v in confs.items():
        cmd += ["--conf", f"{k}={v}"]
    return [*cmd, str(ROOT / "jobs" / "score.py"), "--config", str(job_yaml), "--quiet"]


@pytest.mark.slow
def test_fake_gpus_on_a_local_cluster_pin_each_task_to_its_address(multi_model, tmp_path) -> None:
    table = support.multi_table(300)
    in_path = support.write_parquet(table, str(tmp_path / "in"), files=2)  # two tasks, at the same time
    out_path = str(tmp_path / "out")
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({  # JSON is YAML
        "input": {"path": in_path, "lane": "arrow", "columns": {"image": "pixels", "numeric": ["f0", "f1", "f2", "f3"],
                                                                 "category": "cat", "count": "n"}},
        "model": {"path": multi_model, "batch_size": 64},
        "output": {"path": out_path, "keep_columns": ["id"]},
    }))
    home = _spark_home(tmp_path)
    env = {**os.environ, "SPARK_HOME": home, "BATCHSCORE_FAKE_GPUS": "2", "PYTHON": sys.executable,
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "BATCHSCORE_JVM_CACHE": "off"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    proc = subprocess.run(fake_gpu_command(job), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    assert_multi_like_tf(multi_model, support.read_output(out_path), table)
    manifest = json.loads(Path(out_path, "_manifest.json").read_text())
    assert manifest["spark"]["master"] == "local-cluster[1,2,1024]"
    # two concurrent tasks, two workers: each pinned to the stand-in device of its own address
    # (one variable reached the worker's discovery script and, through the executor, the Python workers)
    assert manifest["python_workers"] == 2 and manifest["model_loads"] == 2
    assert sorted(manifest["devices"].values()) == ["CPU:1 (stands in for gpu 0)", "CPU:2 (stands in for gpu 1)"]
    assert set(manifest["devices"]) == set(manifest["workers"])

    logs = "".join(Path(p).read_text() for p in glob.glob(os.path.join(home, "work", "app-*", "*", "stderr")))
    assert logs and "has no such device" not in logs, logs[-3000:]  # no task fell back to CPU:0


# --- the profiles in conf/ -----------------------------------------------------------

# Keys Spark reads by pattern, not as registered config entries.
_PATTERN_KEYS = re.compile(r"spark\.(executorEnv|yarn\.appMasterEnv)\.\w+"
                           r"|spark\.(executor|task|worker|driver)\.resource\.gpu\.(amount|discoveryScript|vendor)"
                           r"|spark\.master")
# Spark's config registries outside core, loaded so their entries are known.
_CONFIG_OBJECTS = ("org.apache.spark.internal.config.package$", "org.apache.spark.internal.config.Python$",
                   "org.apache.spark.deploy.yarn.config.package$", "org.apache.spark.deploy.k8s.Config$",
                   "org.apache.spark.sql.internal.SQLConf$")


def test_every_spark_profile_has_only_keys_spark_knows(spark) -> None:
    jvm = spark.sparkContext._jvm
    loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
    for name in _CONFIG_OBJECTS:
        jvm.java.lang.Class.forName(name, True, loader)
    profiles = sorted(CONF.glob("spark-*.conf"))
    assert {p.name for p in profiles} >= {"spark-cluster-gpu.conf", "spark-cluster-gpu-shared.conf"}
    for path in profiles:
        for key in support.spark_properties(path):
            known = _PATTERN_KEYS.fullmatch(key) or jvm.org.apache.spark.internal.config.ConfigEntry.findEntry(key)
            assert known, f"{path.name}: '{key}' is not a Spark setting"


@pytest.mark.parametrize(("name", "slots_per_gpu"), [("spark-cluster-gpu.conf", 1), ("spark-cluster-gpu-shared.conf", 4)])
def test_gpu_profiles_agree_on_their_task_slots(name: str, slots_per_gpu: int) -> None:
    props = support.spark_properties(CONF / name)
    gpus, per_task = float(props["spark.executor.resource.gpu.amount"]), float(props["spark.task.resource.gpu.amount"])
    cores, cpus = int(props["spark.executor.cores"]), int(props["spark.task.cpus"])
    assert gpus / per_task == cores // cpus == slots_per_gpu  # neither the GPU nor the cores strand slots
    assert props["spark.python.worker.reuse"] == "true"
    assert props["spark.executor.resource.gpu.discoveryScript"].endswith("/spark-gpu-discovery.sh")
    assert props["spark.executorEnv.TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert props["spark.executorEnv.TF_GPU_ALLOCATOR"] == "cuda_malloc_async"
    assert int(props["spark.sql.execution.arrow.maxRecordsPerBatch"]) > 0
    assert "spark.executor.pyspark.memory" not in props
