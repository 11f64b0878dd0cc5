"""`model.path` may name a `.keras` file: both lanes score it as Keras itself does."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from batchscore.run.steps import run_scoring
from tests import support

ROWS = 600


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, np.ndarray]:
    """(path of a saved `.keras` model, its input rows, Keras's own predictions for them)."""
    import keras

    keras.utils.set_random_seed(7)
    inp = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(h))
    path = str(tmp_path_factory.mktemp("keras") / "model.keras")
    model.save(path)
    x = np.random.default_rng(3).normal(size=(ROWS, 4)).astype(np.float32)
    return path, x, model.predict(x, verbose=0).reshape(-1)


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_keras_file_scores_like_keras(spark, keras_file, tmp_path, lane) -> None:
    path, x, expected = keras_file
    table = pa.table({"id": pa.array(np.arange(ROWS, dtype=np.int64)),
                      **{f"f{i}": pa.array(x[:, i]) for i in range(4)}})
    inp = support.write_parquet(table, str(tmp_path / "in"), files=2)
    cfg = support.job_spec(inp, path, str(tmp_path / "out"), f"input.lane={lane}",
                           "input.columns={x: [f0, f1, f2, f3]}", "output.keep_columns=[id]", "model.batch_size=64")
    manifest = run_scoring(spark, cfg)
    assert manifest.lane == lane
    assert manifest.rows_scored == ROWS and manifest.rows_quarantined == 0
    assert manifest.model.path is not None and manifest.model.path.endswith("model.keras")
    out = support.read_output(str(tmp_path / "out")).sort_by("id")
    assert out.column_names[:2] == ["id", "output_0"]
    assert out.column("id").to_pylist() == list(range(ROWS))
    np.testing.assert_allclose(out.column("output_0").to_numpy(), expected, rtol=1e-5, atol=1e-6)
