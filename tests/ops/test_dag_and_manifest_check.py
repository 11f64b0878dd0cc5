"""The DAG file's shape, the manifest check, and the configs and profiles in conf/ (no Spark, no Airflow)."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchscore.config.loader import REQUIRED, load_config, load_train_config
from batchscore.jobs.check_manifest import ManifestError, check_manifest, main
from batchscore.output.manifest import RunManifest
from tests import support

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def _good_manifest(**changes: Any) -> dict[str, Any]:
    m = {
        "status": "succeeded",
        "run_id": "20260630T020000Z-abcdef12",
        "rows_in": 10,
        "rows_scored": 8,
        "rows_quarantined": 2,
        "model": {"path": "/models/m", "fingerprint": "f00d", "signature": "serving_default"},
        "lane": "dataframe",
    }
    m.update(changes)
    return m


def _write(tmp_path: Path, manifest: Any, name: str = "_manifest.json") -> Path:
    out = tmp_path / "predictions"
    out.mkdir(exist_ok=True)
    path = out / name
    path.write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return path



# --- dags/ (Airflow itself is tested by tests/ops/test_dag_airflow.py under `make test-airflow`) ---

# What the DAG file may import at its top level: the standard library and Airflow, so the
# scheduler parses it fast and without the job's stack (Spark, TensorFlow, the package).
_DAG_IMPORT_ROOTS = {"__future__", "json", "os", "re", "subprocess", "datetime", "pathlib", "typing", "airflow"}


def test_dag_file_is_thin() -> None:
    tree = ast.parse((ROOT / "dags" / "score_nightly.py").read_text())
    roots = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0])
    assert roots <= _DAG_IMPORT_ROOTS, roots - _DAG_IMPORT_ROOTS
    imports = {a.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "airflow.sdk"
               for a in node.names}
    assert {"dag", "task"} <= imports  # the Airflow 3 SDK


def test_dag_spark_submit_wrapper_calls_the_projects_script(tmp_path: Path) -> None:
    wrapper = ROOT / "dags" / "bin" / "spark-submit"
    assert os.access(wrapper, os.X_OK)
    run = subprocess.run([str(wrapper), "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("usage: ./spark-submit.sh")


# --- the manifest check --------------------------------------------------------------


def test_check_manifest_accepts_a_good_run(tmp_path: Path) -> None:
    path = _write(tmp_path, _good_manifest())
    assert check_manifest(str(path)) == RunManifest.from_dict(_good_manifest())
    assert check_manifest(str(path)).model.fingerprint == "f00d"
    assert check_manifest(str(path.parent)).run_id == "20260630T020000Z-abcdef12"  # the directory
    assert check_manifest("file:" + str(path), min_rows=10).rows_in == 10  # a Hadoop-style URI
    assert main([str(path)]) == 0


@pytest.mark.parametrize(("manifest", "match"), [
    (_good_manifest(status="failed"), r"status is 'failed', expected 'succeeded'"),
    (_good_manifest(status=None), r"status is None"),
    (_good_manifest(rows_scored=7), r"rows_in=10 != rows_scored=7 \+ rows_quarantined=2"),
    (_good_manifest(rows_in=11), r"rows_in=11 != rows_scored=8 \+ rows_quarantined=2"),
    (_good_manifest(rows_quarantined=-1, rows_scored=11), r"'rows_quarantined' must be a non-negative integer"),
    (_good_manifest(rows_in="10"), r"'rows_in' must be a non-negative integer, got '10'"),
    (_good_manifest(rows_scored=True), r"'rows_scored' must be a non-negative integer"),
    ({k: v for k, v in _good_manifest().items() if k != "rows_in"}, r"'rows_in' must be"),
    ("{not json", r"is not valid JSON"),
    ("[1, 2]", r"must hold a JSON object"),
])
def test_check_manifest_rejects_a_bad_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          manifest: Any, match: str) -> None:
    path = _write(tmp_path, manifest)
    with pytest.raises(ManifestError, match=match):
        check_manifest(str(path))
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_run_manifest_json_round_trip_keeps_fields_in_order_and_drops_secrets() -> None:
    m = RunManifest.from_dict({
        **_good_manifest(),
        "input": {"path": "s3a://user:hunter2@bucket/in", "format": "parquet", "filter": None},
        "output": {"path": "/o", "mode": "error", "quarantine_path": "/o_quarantine", "columns": ["id", "p"]},
        "quarantine_reasons": {"null_feature": 2},
        "spark": {"version": "4.1.1", "master": "local[2]"},
    })
    data = json.loads(m.to_json())
    assert list(data)[:6] == ["status", "run_id", "rows_in", "rows_scored", "rows_quarantined", "quarantine_reasons"]
    assert data["input"]["path"] == "s3a://***@bucket/in" and "hunter2" not in m.to_json().decode()
    assert data["model"] == {"path": "/models/m", "fingerprint": "f00d", "signature": "serving_default",
                             "distribution": None, "batch_size": None, "sharing": None, "placement": None,
                             "pipeline_stages": None}
    assert data["planning"] == dict.fromkeys(
        ["slots", "slots_source", "input_partitions", "tasks", "rebalanced", "reason"])  # an older run has none
    assert RunManifest.from_json(m.to_json()) == RunManifest.from_dict({**m.to_dict(), "input": data["input"]})
    assert RunManifest.from_dict({**_good_manifest(), "added_by_a_newer_run": 1}) == RunManifest.from_dict(
        _good_manifest())


def test_check_manifest_missing_and_too_few_rows(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"manifest '.*/nothing/_manifest.json' not found"):
        check_manifest(str(tmp_path / "nothing"))
    path = _write(tmp_path, _good_manifest(rows_in=0, rows_scored=0, rows_quarantined=0))
    assert check_manifest(str(path)).rows_in == 0  # an empty day is a success by default
    with pytest.raises(ManifestError, match=r"rows_in=0 is below the minimum of 1"):
        check_manifest(str(path), min_rows=1)
    assert main([str(path), "--min-rows", "1"]) == 2


def test_check_manifest_command_line_exit_codes(tmp_path: Path) -> None:
    good = _write(tmp_path, _good_manifest(), "good.json")
    bad = _write(tmp_path, _good_manifest(rows_scored=1), "bad.json")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "jobs.check_manifest", str(good)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: run 20260630T020000Z-abcdef12 succeeded")
    fail = subprocess.run([sys.executable, "-m", "jobs.check_manifest", str(bad)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert fail.returncode == 2
    assert fail.stderr.strip() == (f"error: {bad}: rows_in=10 != rows_scored=1 + rows_quarantined=2")


# --- conf/ ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")) + sorted(CONF.glob("*.yml")), ids=lambda p: p.name)
def test_every_yaml_config_loads(path: Path) -> None:
    raw = yaml.safe_load(path.read_text()) or {}
    if "train" in raw:  # a training config (batchscore train)
        spec = load_train_config(str(path), [])
        assert spec.train.data and spec.train.label and spec.train.output
        return
    overrides = []
    for key in REQUIRED:  # a file may leave required paths to --set
        section, leaf = key.split(".")
        if not (raw.get(section) or {}).get(leaf):
            overrides.append(f"{key}=/tmp/batchscore-test/{leaf}")
    cfg = load_config(str(path), overrides)
    for key in REQUIRED:
        section, leaf = key.split(".")
        assert isinstance(getattr(getattr(cfg, section), leaf), str) and getattr(getattr(cfg, section), leaf)


def test_databricks_config_reads_the_model_from_a_volume() -> None:
    cfg = load_config(str(CONF / "databricks.yaml"))
    assert cfg.model.path.startswith("/Volumes/")
    assert cfg.model.distribution == "direct"
    assert "spark.master" not in cfg.spark  # the cluster owns its session


_properties = support.spark_properties  # shared with tests/udfs/test_devices.py


PROFILES = sorted(p.name for p in CONF.glob("spark-*.conf"))


@pytest.mark.parametrize("name", PROFILES)
def test_spark_profiles_are_plain_spark_properties(name: str) -> None:
    props = _properties(CONF / name)
    assert props, f"{name} has no properties"
    for key, value in props.items():
        assert key.startswith("spark."), f"{name}: '{key}' is not a Spark property"
        assert value, f"{name}: '{key}' has no value"
        assert "#" not in value, f"{name}: '{key}' has an inline comment, which becomes part of the value"
    assert props["spark.python.worker.reuse"] == "true"  # the engine's model cache needs it


def test_profile_specifics() -> None:
    local = _properties(CONF / "spark-local.conf")
    assert local["spark.master"] == "local[*]" and local["spark.ui.enabled"] == "false"
    assert local["spark.driver.bindAddress"] == "127.0.0.1"
    cpu = _properties(CONF / "spark-cluster-cpu.conf")
    assert int(cpu["spark.executor.cores"]) % int(cpu["spark.task.cpus"]) == 0
    assert "spark.executor.memoryOverhead" in cpu and "spark.executor.pyspark.memory" not in cpu
    gpu = _properties(CONF / "spark-cluster-gpu.conf")
    assert float(gpu["spark.task.resource.gpu.amount"]) <= float(gpu["spark.executor.resource.gpu.amount"])
    assert gpu["spark.executor.resource.gpu.discoveryScript"].endswith("spark-gpu-discovery.sh")
    # One task per executor: the task's cpus are the executor's, so the GPU is never shared by accident.
    assert gpu["spark.task.cpus"] == gpu["spark.executor.cores"]


def _discover(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("BATCHSCORE_FAKE_GPUS", "CUDA_VISIBLE_DEVICES")}
    return subprocess.run([str(CONF / "spark-gpu-discovery.sh")], env={**clean, **env},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("env", "addresses"), [
    ({"BATCHSCORE_FAKE_GPUS": "3"}, ["0", "1", "2"]),
    ({"BATCHSCORE_FAKE_GPUS": "0"}, []),
    ({"BATCHSCORE_FAKE_GPUS": "1", "CUDA_VISIBLE_DEVICES": "5,6"}, ["0"]),  # the fake wins
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["0", "1"]),  # renumbered as CUDA and TF see them
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
])
def test_gpu_discovery_script(env: dict[str, str], addresses: list[str]) -> None:
    result = _discover(**env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": addresses}


def test_gpu_discovery_script_rejects_a_bad_fake_count() -> None:
    result = _discover(BATCHSCORE_FAKE_GPUS="two")
    assert result.returncode == 1
    assert "BATCHSCORE_FAKE_GPUS must be a number" in result.stderr and result.stdout == ""
