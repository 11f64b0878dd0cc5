"""`model.placement: split`: a model's stages on the task's devices, pipelined over micro-batches.

The devices are fake GPUs (`BATCHSCORE_FAKE_GPUS`: logical CPU devices, set up once per
process before TensorFlow starts), so the splits run in fresh processes
(`tests/support/placement.py`, and a score job in a subprocess).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core.errors import ModelError
from batchscore.udfs.model import devices as worker_devices
from batchscore.udfs.model import placement
from tests import support
from tests.support import placement as ps

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-5
BATCH = 64
ROWS = 300  # 4 full calls of 64 and a short one of 44


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("placement")
    return {"mlp": ps.build_mlp(str(root / "mlp.keras")), "cnn": ps.build_cnn(str(root / "cnn.keras")),
            "staged": ps.build_staged_model(str(root / "staged")),
            "one_layer": ps.build_one_layer(str(root / "one.keras"))}


def _fresh_process_env(devices: int) -> dict[str, str]:
    return {**os.environ, worker_devices.FAKE_GPUS_ENV: str(devices), "PYTHONPATH": PROJECT_ROOT,
            "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module", params=[2, 3], ids=["2-devices", "3-devices"])
def split_run(request: pytest.FixtureRequest, models: dict[str, str]) -> tuple[int, dict]:
    """(devices, what the checker reports) for every test model split over `devices` fake GPUs."""
    n = request.param
    spec = {"keras": {"mlp": models["mlp"], "cnn": models["cnn"]}, "staged": {"staged": models["staged"]},
            "batch_size": BATCH, "rows": ROWS}
    proc = subprocess.run([sys.executable, "-m", "tests.support.placement", json.dumps(spec)], cwd=PROJECT_ROOT,
                          env=_fresh_process_env(n), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return n, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_keras_split_equals_replicate_with_variables_on_the_planned_devices(split_run, name) -> None:
    n, report = split_run
    devices = [f"CPU:{i + 1}" for i in range(n)]  # the stand-ins of gpus 0..n-1; CPU:0 stays the CPU
    assert report["devices"] == devices
    got = report[name]
    assert got["diff"] <= TOL
    stages = got["stages"]
    assert [s["device"] for s in stages] == devices  # one stage per device, in order
    assert all(s["layers"] for s in stages)
    for s in stages:  # each stage's variables sit on its own device, and nowhere else
        assert s["variable_devices"] in ([s["device"]], []), s
    assert sum(s["params"] for s in stages) == got["params"]
    assert any(s["variables"] for s in stages[1:])  # not all weights left on the first device
    m = got["micro_batches"]
    assert m == placement.micro_batch_count(BATCH, n) and m > 1
    # the pipelined graph runs each stage's kernels once per micro-batch, on the stage's device
    assert got["kernel_ops"] == {s["device"]: m * s["kernels"] for s in stages if s["kernels"]}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_layers_are_cut_in_order_balanced_by_estimated_compute(split_run, models, name) -> None:
    from batchscore.udfs.model.cache import load_keras_file

    n, report = split_run
    nodes = placement.model_nodes(load_keras_file(models[name]))
    assert len(nodes) == {"mlp": 4, "cnn": 8}[name]  # every layer call once
    bounds = placement.balanced_cuts([placement.node_cost(node) for node in nodes], n)
    want = [[node.operation.name for node in nodes[a:b]] for a, b in itertools.pairwise(bounds)]
    assert [s["layers"] for s in report[name]["stages"]] == want


def test_saved_model_stages_split_equals_replicate(split_run) -> None:
    n, report = split_run
    got = report["staged"]
    assert got["diff"] <= TOL
    # three stage objects over n devices: 2 devices -> [2, 1] stages, 3 -> one each
    groups = [s["layers"] for s in got["stages"]]
    assert list(itertools.chain(*groups)) == ["stage_0", "stage_1", "stage_2"]
    assert len(groups) == n
    m = got["micro_batches"]
    assert m > 1
    for s in got["stages"]:
        assert s["variable_devices"] == [s["device"]] and s["variables"] == 2 * len(s["layers"])
    assert got["stage_calls"] == {s["device"]: m * len(s["layers"]) for s in got["stages"]}


def test_balanced_cuts_minimise_the_largest_stage() -> None:
    rng = np.random.default_rng(5)
    for _ in range(60):
        costs = list(rng.integers(0, 20, rng.integers(1, 9)).astype(float))
        for k in range(1, len(costs) + 1):
            bounds = placement.balanced_cuts(costs, k)
            assert bounds[0] == 0 and bounds[-1] == len(costs) and len(bounds) == k + 1
            assert all(a < b for a, b in itertools.pairwise(bounds))  # no empty stage
            got = max(sum(costs[a:b]) for a, b in itertools.pairwise(bounds))
            best = min(max(sum(costs[a:b]) for a, b in itertools.pairwise([0, *cuts, len(costs)]))
                       for cuts in itertools.combinations(range(1, len(costs)), k - 1))
            assert got == best, (costs, k, bounds)


def test_micro_batches_per_call() -> None:
    assert placement.micro_batch_count(1024, 3) == 12
    assert placement.micro_batch_count(64, 2) == 4  # no micro-batch under 16 rows
    assert placement.micro_batch_count(8, 2) == 1


def test_nothing_to_split_is_a_model_error_naming_the_model(models, multi_model) -> None:
    two = ["/device:CPU:0", "/device:CPU:0"]
    with pytest.raises(ModelError, match=r"one\.keras' has nothing to split: it needs at least two layers"):
        placement.load_split_keras(models["one_layer"], two, batch_size=BATCH)
    with pytest.raises(ModelError, match=rf"'{multi_model}' has nothing to split: it needs stage children stage_0"):
        placement.load_split_saved_model(multi_model, (), two, batch_size=BATCH)


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_score_job_with_split_scores_like_keras(models, tmp_path, lane) -> None:
    """The score job on local[2], each Python worker with 3 fake GPUs (no task is assigned one, so a
    task splits over all of its worker's): the MLP runs in 3 stages."""
    import keras

    x = np.random.default_rng(9).normal(size=(500, ps.MLP_FEATURES)).astype(np.float32)
    cols = [f"f{i}" for i in range(ps.MLP_FEATURES)]
    table = pa.table({"id": pa.array(np.arange(500, dtype=np.int64)), **{c: x[:, i] for i, c in enumerate(cols)}})
    inp = support.write_parquet(table, str(tmp_path / "in"), files=2)
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({
        "spark": {"spark.master": "local[2]", "spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1",
                  "spark.driver.bindAddress": "127.0.0.1", f"spark.executorEnv.{worker_devices.FAKE_GPUS_ENV}": "3"},
        "input": {"path": inp, "columns": cols, "lane": lane},
        "model": {"path": models["mlp"], "placement": "split", "batch_size": BATCH},
        "output": {"path": str(out), "keep_columns": ["id"]},
    }))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT}
    env.pop(worker_devices.FAKE_GPUS_ENV, None)
    proc = subprocess.run([sys.executable, "-m", "jobs.score", "--config", str(cfg), "--quiet"], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "_manifest.json") as fh:
        manifest = json.load(fh)
    assert manifest["model"]["placement"] == "split" and manifest["model"]["pipeline_stages"] == 3
    assert manifest["lane"] == lane and manifest["rows_scored"] == 500
    got = support.read_output(str(out))
    assert got.column("id").to_pylist() == list(range(500))
    expected = keras.saving.load_model(models["mlp"]).predict(x, verbose=0).reshape(-1)
    assert support.max_abs_diff(got.column("output_0").to_numpy(), expected) <= TOL


@pytest.mark.parametrize("which", ["one_layer", "no_stages"])
def test_split_of_a_model_with_nothing_to_split_fails_on_the_driver(spark, models, multi_model, tmp_path,
                                                                    which) -> None:
    from batchscore.run.steps import run_scoring

    path = models["one_layer"] if which == "one_layer" else multi_model
    inp = support.write_parquet(pa.table({"id": pa.array([1, 2], pa.int64())}), str(tmp_path / "in"))
    spec = support.job_spec(inp, path, str(tmp_path / "out"), "model.placement=split")
    with pytest.raises(ModelError, match=rf"'{re.escape(path)}' has nothing to split: it needs "):
        run_scoring(spark, spec)
    assert not os.path.exists(tmp_path / "out")
