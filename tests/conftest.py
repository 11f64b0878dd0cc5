"""Session fixtures: one SparkSession, the test models and their input data."""
from __future__ import annotations

import os

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pyarrow as pa  # noqa: E402
import pytest  # noqa: E402

from tests import support  # noqa: E402

DEMO_ROWS = 1200


@pytest.fixture(scope="session")
def spark():  # type: ignore[no-untyped-def]
    """The one SparkSession, built the way the jobs build it (workers use this venv and checkout)."""
    from batchscore.jobs.session import build_session

    session = build_session(
        {
            "spark.master": "local[2]",
            "spark.ui.enabled": False,
            "spark.sql.shuffle.partitions": 2,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.default.parallelism": 2,
        },
        app_name="batchscore-tests",
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# --- the demo-like model: Keras, dict inputs, exported with model.export() ---


@pytest.fixture(scope="session")
def demo_table() -> pa.Table:
    """`jobs.demo_data.make_table` rows: id, as_of_date, 10 numeric, 3 string, label."""
    from batchscore.jobs.demo_data import make_table

    return make_table(DEMO_ROWS, seed=5)


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory, demo_table: pa.Table) -> str:
    from batchscore.jobs.demo_data import train_model

    path = str(tmp_path_factory.mktemp("demo") / "demo_model")
    train_model(demo_table, path, epochs=1, sample=DEMO_ROWS)
    return path


@pytest.fixture(scope="session")
def demo_reference(demo_model: str, demo_table: pa.Table):  # type: ignore[no-untyped-def]
    """Bare TF scores of every demo row, index == id."""
    out = support.tf_predict(demo_model, support.demo_inputs(demo_table))
    return out["output_0"].reshape(-1)


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory: pytest.TempPathFactory, demo_table: pa.Table) -> str:
    """The demo rows as hive-partitioned Parquet (by as_of_date), like `make demo` writes them."""
    from batchscore.jobs.demo_data import write_features

    path = str(tmp_path_factory.mktemp("demo_in") / "features")
    write_features(demo_table, path)
    return path


# --- the multi-input/multi-output model: tf.saved_model.save + custom signature ---


@pytest.fixture(scope="session")
def multi_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return support.build_multi_model(str(tmp_path_factory.mktemp("multi") / "multi_model"))


@pytest.fixture(scope="session")
def multi_table() -> pa.Table:
    return support.multi_table(500)
