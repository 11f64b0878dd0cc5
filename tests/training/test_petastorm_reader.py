"""`train.reader: petastorm` (batchscore/training/petastorm_reader.py): the rows of a Parquet, as TensorFlow batches.

petastorm runs on the lts stack only (`make test-lts`); there the dataset must hold exactly the
Parquet's rows (compared with a pyarrow read, order aside), shards together every row once. On
the current stack the reader must say so in one line.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.core.errors import ConfigError, SchemaError
from batchscore.training.parquet_reader import plan_dataset, tf_dataset
from batchscore.training.petastorm_reader import PARENT_CACHE_CONF, petastorm_dataset
from tests import support

ROWS = 600
SCALARS = ["f0", "f1", "f2", "f3"]


def _petastorm_import_error() -> str | None:
    try:
        from petastorm import spark  # noqa: F401 - the import is the test
    except Exception as e:  # noqa: BLE001 - ImportError, or the AttributeError of a pyarrow it predates
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


PETASTORM_ERROR = _petastorm_import_error()
needs_petastorm = pytest.mark.skipif(
    PETASTORM_ERROR is not None,
    reason=f"petastorm runs only on the lts stack (`make test-lts`); it cannot be imported here ({PETASTORM_ERROR})")


def _table(seed: int = 3) -> pa.Table:
    """Rows told apart by f0 (= id / 2, exact in float32); a float32, an array and a string column."""
    rng = np.random.default_rng(seed)
    ids = np.arange(ROWS)
    return pa.table({
        "id": ids,
        "f0": ids / 2.0,
        "f1": rng.normal(size=ROWS),
        "f2": rng.integers(-5, 5, ROWS).astype(np.int32),
        "f3": rng.random(ROWS, dtype=np.float32),
        "vec": pa.array(list(rng.random((ROWS, 3), dtype=np.float32)), pa.list_(pa.float32())),
        "name": [f"row-{i}" for i in ids],
        "label": (ids % 3).astype(np.int64),
    })


@pytest.fixture(scope="module")
def train_parquet(tmp_path_factory: pytest.TempPathFactory) -> str:
    return support.write_parquet(_table(), str(tmp_path_factory.mktemp("petastorm") / "train"), files=3)


def _expected(path: str, features: list[str]) -> list[tuple[float, ...]]:
    """(features as float32..., label) per row, read with pyarrow, sorted."""
    t = pq.read_table(path)
    if len(features) == 1 and pa.types.is_list(t.schema.field(features[0]).type):
        x = np.stack(t.column(features[0]).to_pylist()).astype(np.float32)  # x: [rows, 3]
    else:
        x = np.stack([t.column(f).to_numpy().astype(np.float32) for f in features], axis=1)  # x: [rows, D]
    return sorted((*row, label) for row, label in zip(x.tolist(), t.column("label").to_pylist(), strict=True))


def _read(spark: Any, path: str, features: list[str], *, batch_size: int, **kw: Any) -> list[tuple[float, ...]]:
    """Every (features..., label) the dataset yields, sorted; checks each batch's shapes and types."""
    rows: list[tuple[float, ...]] = []
    with petastorm_dataset(spark, path=path, features=features, label="label", batch_size=batch_size, **kw) as ds:
        for x, y in ds:
            assert x.dtype.name == "float32" and y.dtype.name == "int64"
            assert x.shape[0] == y.shape[0] <= batch_size and x.shape[1] == (3 if features == ["vec"] else len(features))
            rows.extend((*r, lab) for r, lab in zip(x.numpy().tolist(), y.numpy().tolist(), strict=True))
    return sorted(rows)


@needs_petastorm
def test_scalar_columns_are_stacked_and_every_row_comes_once(spark: Any, train_parquet: str) -> None:
    got = _read(spark, train_parquet, SCALARS, batch_size=64)
    assert got == _expected(train_parquet, SCALARS)
    assert spark.conf.get(PARENT_CACHE_CONF, None) is None  # the converter's setting is not left behind


@needs_petastorm
def test_two_shards_cover_every_row_once(spark: Any, train_parquet: str) -> None:
    shards = [_read(spark, train_parquet, SCALARS, batch_size=50, shard=i, num_shards=2, seed=5) for i in range(2)]
    assert all(shards), "each shard gets row groups"
    assert sorted(shards[0] + shards[1]) == _expected(train_parquet, SCALARS)  # disjoint and complete


@needs_petastorm
def test_the_arrow_and_petastorm_readers_feed_the_same_rows(spark: Any, train_parquet: str) -> None:
    # train.reader arrow (batchscore/training/parquet_reader.py) and petastorm: the same rows, order aside, one shard or two
    plan = plan_dataset(train_parquet, features=SCALARS, label="label", key=None, label_kind="int")
    for shards in (1, 2):
        arrow_rows: list[tuple[float, ...]] = []
        for i in range(shards):
            for x, y in tf_dataset(plan, batch_size=64, shard=i, num_shards=shards, seed=5):
                arrow_rows.extend((*r, lab) for r, lab in zip(x.numpy().tolist(), y.numpy().tolist(), strict=True))
        petastorm_rows = sorted(row for i in range(shards) for row in _read(
            spark, train_parquet, SCALARS, batch_size=64, shard=i, num_shards=shards, seed=5))
        assert sorted(arrow_rows) == petastorm_rows == _expected(train_parquet, SCALARS)


@needs_petastorm
def test_one_array_column_is_used_as_is(spark: Any, train_parquet: str, tmp_path: Path) -> None:
    got = _read(spark, train_parquet, ["vec"], batch_size=128, cache_dir=str(tmp_path / "cache"))
    assert got == _expected(train_parquet, ["vec"])
    assert not any((tmp_path / "cache").iterdir())  # the converter's copy is deleted after the block


@pytest.mark.parametrize(("features", "label", "error", "match"), [
    (["f0", "missing"], "label", SchemaError, r"train.features: column 'missing' is not in"),
    (["f0"], "nope", SchemaError, r"train.label: column 'nope' is not in"),
    (["vec", "f0"], "label", SchemaError, r"'vec' is an array column"),
    (["name"], "label", SchemaError, r"column 'name' is string, not numeric"),
    ([], "label", ConfigError, r"train.features must be a non-empty list"),
    (["f0"], "f0", ConfigError, r"train.label 'f0' is also in train.features"),
])
def test_columns_that_cannot_feed_the_dataset_are_named(spark: Any, train_parquet: str, features: list[str],
                                                        label: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match), petastorm_dataset(spark, path=train_parquet, features=features,
                                                              label=label, batch_size=8):
        pass


def test_bad_shard_is_refused(spark: Any, train_parquet: str) -> None:
    with pytest.raises(ConfigError, match=r"shard must be in \[0, num_shards\), got shard=2 of num_shards=2"), \
            petastorm_dataset(spark, path=train_parquet, features=SCALARS, label="label", batch_size=8,
                              shard=2, num_shards=2):
        pass


@pytest.mark.skipif(PETASTORM_ERROR is None, reason="petastorm imports on this stack (lts): nothing to refuse")
def test_the_current_stack_says_petastorm_needs_the_lts_stack(spark: Any, train_parquet: str) -> None:
    with pytest.raises(ConfigError) as info, petastorm_dataset(spark, path=train_parquet, features=SCALARS,
                                                               label="label", batch_size=8):
        pass
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("train.reader 'petastorm' runs only on the lts stack")
    assert "make test-lts" in message and "use train.reader 'arrow'" in message
