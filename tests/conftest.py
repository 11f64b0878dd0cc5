"""Session fixtures: one SparkSession, the test models and their input data."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pyarrow as pa
import pytest

from tests import support

# Fixture plugins that test modules also import names from (`pytest_plugins = [...]` there):
# their asserts are rewritten like the tests' own.
pytest.register_assert_rewrite("tests.support.s3")

DEMO_ROWS = 1200


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession, built the way the jobs build it (workers use this venv and checkout)."""
    from batchscore.session.builder import build_session

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


# --- a local Spark Connect server (batchscore/session/connect_server.py) and a client of it ---


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory: pytest.TempPathFactory):
    """The URL of one local Connect server (local[2], on a free port), stopped at the end of the session."""
    from batchscore.core.compat import spark_version

    if spark_version() < (4, 0):
        pytest.skip("Spark Connect runs on the current stack: Spark 3.5's Connect client has no Observation "
                    "(the task counters) and no progress handler")
    from batchscore.session import connect_server as server

    folder = str(tmp_path_factory.mktemp("connect"))
    port = server.free_port()
    url = server.start(port, master="local[2]", folder=folder,
                       conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"})
    yield url
    server.stop(port, folder=folder)


@pytest.fixture(autouse=True)
def _classic_process() -> Iterator[None]:
    """A job run in this process on Spark Connect marks the process as a Connect client
    (SPARK_CONNECT_MODE_ENABLED, as pyspark's builder does); the mark ends with its test, so the
    tests' classic session keeps building classic plans. (Popped, not monkeypatched: a
    monkeypatch of an absent variable records nothing to undo.)"""
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)
    yield
    os.environ.pop("SPARK_CONNECT_MODE_ENABLED", None)


@pytest.fixture
def connect_spark(connect_server: str):
    """A new Spark Connect client session on `connect_server`, closed after the test (the server runs on)."""
    from pyspark.sql.connect.session import SparkSession

    session = SparkSession.builder.remote(connect_server).create()
    yield session
    session.stop()


# --- the demo-like model: Keras, dict inputs, exported with model.export() ---


@pytest.fixture(scope="session")
def demo_table() -> pa.Table:
    """`batchscore.demo_data.make_table` rows: id, as_of_date, 10 numeric, 3 string, label."""
    from batchscore.demo_data import make_table

    return make_table(DEMO_ROWS, seed=5)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable[[str], object]], str]:
    """The one model fixture: `saved_model(name, build)` returns the path of test model `name`,
    built once per session by `build(path)` (a SavedModel directory or a .keras file)."""
    root = tmp_path_factory.mktemp("models")

    def get(name: str, build: Callable[[str], object]) -> str:
        path = str(root / name)
        if not os.path.exists(path):
            tmp = str(root / f".{name}.tmp")
            build(tmp)
            os.replace(tmp, path)  # a half-built model is never handed out
        return path

    return get


@pytest.fixture(scope="session")
def demo_model(saved_model: Callable[..., str], demo_table: pa.Table) -> str:
    from batchscore.demo_data import train_model

    return saved_model("demo_model", lambda path: train_model(demo_table, path, epochs=1, sample=DEMO_ROWS))


@pytest.fixture(scope="session")
def demo_reference(demo_model: str, demo_table: pa.Table):
    """Bare TF scores of every demo row, index == id."""
    out = support.tf_predict(demo_model, support.demo_inputs(demo_table))
    return out["output_0"].reshape(-1)


@pytest.fixture(scope="session")
def demo_input(tmp_path_factory: pytest.TempPathFactory, demo_table: pa.Table) -> str:
    """The demo rows as hive-partitioned Parquet (by as_of_date), like `make demo` writes them."""
    from batchscore.demo_data import write_features

    path = str(tmp_path_factory.mktemp("demo_in") / "features")
    write_features(demo_table, path)
    return path


# --- the multi-input/multi-output model: tf.saved_model.save + custom signature ---


@pytest.fixture(scope="session")
def multi_model(saved_model: Callable[..., str]) -> str:
    return saved_model("multi_model", support.build_multi_model)


# --- the reliability models (tests/support/reliability.py): every quarantine reason, unfeedable signatures ---


@pytest.fixture(scope="session")
def rel_model(saved_model: Callable[..., str]) -> str:
    from tests.support import reliability as rs

    return saved_model("rel_model", rs.build_rel_model)


@pytest.fixture(scope="session")
def odd_model(saved_model: Callable[..., str]) -> str:
    from tests.support import reliability as rs

    return saved_model("odd_model", rs.build_unfeedable_model)


@pytest.fixture(scope="session")
def multi_table() -> pa.Table:
    return support.multi_table(500)
