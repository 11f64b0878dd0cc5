"""The scoring job on HDFS: `hdfs://` input and output on a MiniDFSCluster, published by Hadoop renames."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batchscore.core.storage import pyarrow_hdfs_problem
from batchscore.demo_data import NUMERIC
from batchscore.jobs.score import main
from tests import support

pytest_plugins = ["tests.support.hdfs"]  # the hdfs_uri fixture (skips without `make jars`)

TOL = 1e-5
DEMO_COLUMNS = "input.columns.numeric=[" + ", ".join(NUMERIC) + "]"


def _hadoop(spark: Any, uri: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def copy_to_hdfs(spark: Any, local: str, uri: str) -> str:
    """The local directory's files, byte for byte, at `uri` (Hadoop's copyFromLocalFile)."""
    fs, dst = _hadoop(spark, uri)
    fs.copyFromLocalFile(False, True, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(local), dst)
    return uri


def copy_from_hdfs(spark: Any, uri: str, local: Path) -> str:
    """An HDFS directory copied to a local one (no .crc files), for pyarrow to read."""
    fs, src = _hadoop(spark, uri)
    fs.copyToLocalFile(False, src, spark.sparkContext._jvm.org.apache.hadoop.fs.Path(str(local)), True)
    return str(local)


@pytest.fixture(scope="module")
def hdfs_demo_input(spark: Any, hdfs_uri: str, demo_input: str) -> str:
    """The demo features (hive-partitioned by as_of_date) on HDFS."""
    return copy_to_hdfs(spark, demo_input, f"{hdfs_uri}/in/features")


@pytest.mark.parametrize("lane", ["auto", "dataframe"])
def test_score_job_reads_and_writes_hdfs(spark: Any, hdfs_uri: str, hdfs_demo_input: str, demo_model: str,
                                         demo_table: pa.Table, demo_reference: np.ndarray, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
                                         lane: str) -> None:
    out_uri = f"{hdfs_uri}/out/{lane}/predictions"
    overrides = [f"input.path={hdfs_demo_input}", f"model.path={demo_model}", f"output.path={out_uri}",
                 DEMO_COLUMNS, "output.keep_columns=[id]", "output.partition_by=[as_of_date]",
                 f"input.lane={lane}", "model.batch_size=128"]
    args = ["--config", str(_job_file(tmp_path))]
    for o in overrides:
        args += ["--set", o]
    with caplog.at_level(logging.INFO, logger="batchscore"):
        code = main(args, spark=spark)
    err = capsys.readouterr().err
    assert code == 0, err

    # auto: exactly one log line says why the Arrow lane is not used (no libhdfs here)
    fallback = [r.getMessage() for r in caplog.records if "input.lane auto" in r.getMessage()]
    problem = pyarrow_hdfs_problem(hdfs_demo_input)
    if lane == "auto" and problem is not None:
        assert fallback == [f"input.lane auto: using the DataFrame lane (input.path '{hdfs_demo_input}' "
                            f"is on HDFS and {problem})"]
    else:
        assert fallback == []

    # published by rename: no staging or sibling left beside the output
    fs, parent = _hadoop(spark, f"{hdfs_uri}/out/{lane}")
    assert sorted(st.getPath().getName() for st in fs.listStatus(parent)) == ["predictions"]
    local = copy_from_hdfs(spark, out_uri, tmp_path / "copy")
    out = support.read_output(local)
    assert sorted(out.column_names) == ["as_of_date", "id", "output_0"]
    ids = out.column("id").to_numpy()
    np.testing.assert_array_equal(ids, np.sort(demo_table.column("id").to_numpy()))
    assert support.max_abs_diff(out.column("output_0").to_numpy(), demo_reference[ids]) <= TOL
    by_id = dict(zip(demo_table.column("id").to_pylist(), demo_table.column("as_of_date").to_pylist(), strict=True))
    assert [str(d) for d in out.column("as_of_date").to_pylist()] == [str(by_id[i]) for i in ids.tolist()]

    manifest = json.loads(Path(local, "_manifest.json").read_text())
    assert manifest["status"] == "succeeded"
    assert (manifest["rows_in"], manifest["rows_scored"], manifest["rows_quarantined"]) == (len(ids), len(ids), 0)
    assert manifest["lane"] == ("dataframe" if problem is not None or lane == "dataframe" else "arrow")
    assert manifest["output"]["path"] == out_uri
    assert manifest["input"]["path"] == hdfs_demo_input
    assert Path(local, "_SUCCESS").is_file()


def test_arrow_lane_on_hdfs_without_libhdfs_is_a_config_error(spark: Any, hdfs_demo_input: str, demo_model: str,
                                                               hdfs_uri: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    problem = pyarrow_hdfs_problem(hdfs_demo_input)
    if problem is None:
        pytest.skip("pyarrow's HDFS client loads here: the Arrow lane reads HDFS")
    out_uri = f"{hdfs_uri}/out/arrow/predictions"
    args = ["--config", str(_job_file(tmp_path)), "--quiet"]
    for o in (f"input.path={hdfs_demo_input}", f"model.path={demo_model}", f"output.path={out_uri}",
              DEMO_COLUMNS, "input.lane=arrow"):
        args += ["--set", o]
    assert main(args, spark=spark) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: input.lane 'arrow': input.path '{hdfs_demo_input}' is on HDFS and {problem}; "
                    "use input.lane dataframe or auto")
    fs, out = _hadoop(spark, out_uri)
    assert not fs.exists(out)


def _job_file(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text("spark:\n  spark.master: local[2]\n")
    return path
