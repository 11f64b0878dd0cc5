"""The distribution: one import root, a console command, and a wheel that works on its own.

The slow test builds the wheel with `python -m build`, installs it with the
`spark` and `cpu` extras into a fresh virtualenv (pip resolves against the
project's pins), and scores a small dataset there with `batchscore score`, run
outside the checkout so nothing of it is importable.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests import support

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False, **kw)


def test_cli_lists_its_commands_and_rejects_an_unknown_one() -> None:
    ok = _run([sys.executable, "-m", "batchscore", "--help"], cwd=ROOT)
    assert ok.returncode == 0
    for command in ("score", "check-manifest", "evaluate", "demo", "train"):
        assert command in ok.stdout
    bad = _run([sys.executable, "-m", "batchscore", "scroe"], cwd=ROOT)
    assert bad.returncode == 2 and "invalid choice: 'scroe'" in bad.stderr
    version = _run([sys.executable, "-m", "batchscore", "--version"], cwd=ROOT)
    import batchscore

    assert version.stdout.strip() == f"batchscore {batchscore.__version__}"


def test_subcommand_help_is_the_jobs_own() -> None:
    out = _run([sys.executable, "-m", "batchscore", "score", "--help"], cwd=ROOT)
    assert out.returncode == 0 and "--config" in out.stdout and "--set" in out.stdout
    out = _run([sys.executable, "-m", "batchscore", "check-manifest", "--help"], cwd=ROOT)
    assert out.returncode == 0 and "--min-rows" in out.stdout
    out = _run([sys.executable, "-m", "batchscore", "train", "--help"], cwd=ROOT)
    assert out.returncode == 0 and "--config" in out.stdout and "--set" in out.stdout


def _small_model(path: Path) -> str:
    import tensorflow as tf

    class Tiny(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.array([0.5, -2.0, 1.5], dtype=np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="features")])
        def serve(self, features):
            return {"probability": tf.sigmoid(tf.reduce_sum(features * self.w, axis=1))}  # [batch]

    m = Tiny()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return str(path)


def _assert_ships_every_module(names: list[str]) -> None:
    """Every module of the checkout is in the wheel, each subpackage included (pyproject lists them one by one)."""
    shipped = {n for n in names if n.endswith(".py")}
    checkout = {f"batchscore/{p.relative_to(ROOT / 'batchscore')}" for p in (ROOT / "batchscore").rglob("*.py")}
    for top in ("jobs", "udfs"):
        checkout |= {f"batchscore/{top}/{p.relative_to(ROOT / top)}" for p in (ROOT / top).rglob("*.py")}
    assert shipped == {n for n in checkout if "__pycache__" not in n}
    assert "batchscore/conf/demo.yaml" in names


@pytest.mark.slow
def test_wheel_installs_alone_and_scores(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)])
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("batchscore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/", 1)[0] for n in names} == {"batchscore", wheel.name.split("-py")[0] + ".dist-info"}
    _assert_ships_every_module(names)

    # Nothing of this checkout may leak in: the tests' Spark session put it on PYTHONPATH, where
    # pip would find this project's metadata and skip installing the wheel as "already satisfied".
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "VIRTUAL_ENV")}
    clean_env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = str(env_dir / "bin" / "python")
    pins = tmp_path / "constraints.txt"  # the project's pins, so pip takes the tested stack
    pins.write_text("\n".join(re.sub(r"\[.*?\]", "", line)  # constraints take no extras
                              for line in (ROOT / "requirements.txt").read_text().splitlines()
                              if "==" in line and not line.startswith("#")))
    install = _run([py, "-m", "pip", "install", "--quiet", "--no-compile", "-c", str(pins), f"{wheel}[spark,cpu]"],
                   cwd=tmp_path, env=clean_env)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (env_dir / "bin" / "batchscore").is_file(), install.stdout[-2000:]

    for top in ("jobs", "udfs"):
        probe = _run([py, "-c", f"import {top}"], cwd=tmp_path, env=clean_env)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, top

    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 3)).astype(np.float32)
    data = tmp_path / "features"
    data.mkdir()
    pq.write_table(pa.table({"id": np.arange(300, dtype=np.int64), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}),
                   data / "part-0.parquet")
    model = _small_model(tmp_path / "model")
    config = tmp_path / "job.yaml"
    config.write_text(
        f"spark: {{spark.master: 'local[2]', spark.ui.enabled: false}}\n"
        f"input: {{path: {data}, columns: {{features: [a, b, c]}}}}\n"
        f"model: {{path: {model}, batch_size: 64}}\n"
        f"output: {{path: {tmp_path / 'out'}, keep_columns: [id]}}\n"
    )
    scored = _run([str(env_dir / "bin" / "batchscore"), "score", "--config", str(config), "--quiet"],
                  cwd=tmp_path, env=clean_env)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "300 rows in, 300 scored, 0 quarantined" in scored.stdout

    got = support.read_output(str(tmp_path / "out"))
    want = support.tf_predict(model, {"features": x})["probability"]
    assert got.column("id").to_pylist() == list(range(300))
    assert support.max_abs_diff(got.column("probability").to_numpy(), want) < 1e-6
    check = _run([str(env_dir / "bin" / "batchscore"), "check-manifest", str(tmp_path / "out")],
                 cwd=tmp_path, env=clean_env)
    assert check.returncode == 0 and check.stdout.startswith("ok: run "), check.stderr
