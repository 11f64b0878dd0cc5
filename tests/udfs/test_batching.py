"""batchscore.udfs.batches.batching: StreamScorer re-chunks rows to the model batch size with a plain numpy model."""
from __future__ import annotations

import math
from collections.abc import Collection

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.core.columns import BAD_COLUMN, REASON_COLUMN
from batchscore.udfs.batches.batching import StreamScorer
from batchscore.udfs.batches.binding import bind_inputs
from batchscore.udfs.model.signature import ModelSignature, TensorSpec

# --- re-chunking: StreamScorer with a plain numpy model ---

X_SIG = ModelSignature(
    "/m", "serving_default",
    (TensorSpec("x", "float64", ()),),
    (TensorSpec("vec", "float64", (2,)), TensorSpec("y", "float64", ())),
    "f" * 16,
)


class RecordingModel:
    """y = 2x and vec = [x, -x]; remembers every call's row count."""

    def __init__(self, fail_below: float | None = None) -> None:
        self.calls: list[int] = []
        self.fail_below = fail_below

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(len(x))
        if self.fail_below is not None and (x < self.fail_below).any():
            raise ValueError("model rejects negative x")
        return {"y": 2 * x, "vec": np.stack([x, -x], axis=1)}


def _batches(lengths: list[int], *, nulls: Collection[int] = frozenset()) -> list[pa.RecordBatch]:
    out, start = [], 0
    for n in lengths:
        ids = np.arange(start, start + n, dtype=np.int64)
        x = [None if i in nulls else float(i) * 0.5 - 3 for i in ids]
        out.append(pa.RecordBatch.from_pydict({"id": pa.array(ids), "x": pa.array(x, pa.float64())}))
        start += n
    return out


def _scorer(model: RecordingModel, batch_size: int) -> StreamScorer:
    feeds = bind_inputs(X_SIG, pa.schema([("id", pa.int64()), ("x", pa.float64())]))
    return StreamScorer(X_SIG, feeds, model, batch_size, ["id"], ["vec", "y"])


def _check_stream(lengths: list[int], batch_size: int) -> None:
    model = RecordingModel()
    scorer = _scorer(model, batch_size)
    inputs = _batches(lengths)
    outputs = list(scorer.score(iter(inputs)))
    total = sum(lengths)
    # Every call is at most batch_size rows; all but the last are full (re-chunked across batches).
    assert all(0 < c <= batch_size for c in model.calls)
    assert all(c == batch_size for c in model.calls[:-1])
    assert sum(model.calls) == total
    assert len(model.calls) == math.ceil(total / batch_size)
    assert scorer.stats.model_calls == len(model.calls)
    assert scorer.stats.max_call_rows == max(model.calls, default=0)
    assert scorer.stats.rows == total and scorer.stats.rows_bad == 0
    # One output batch per non-empty input batch, same rows in the same order.
    assert [b.num_rows for b in outputs] == [n for n in lengths if n]
    out = pa.Table.from_batches(outputs, schema=outputs[0].schema) if outputs else None
    if out is None:
        assert total == 0
        return
    assert out.column_names == ["id", "vec", "y", REASON_COLUMN, BAD_COLUMN]
    ids = out.column("id").to_numpy()
    np.testing.assert_array_equal(ids, np.arange(total))
    x = ids * 0.5 - 3
    np.testing.assert_array_equal(out.column("y").to_numpy(), 2 * x)
    np.testing.assert_array_equal(np.asarray(out.column("vec").to_pylist()), np.stack([x, -x], axis=1))
    assert set(out.column(REASON_COLUMN).to_pylist()) == {"ok"}


@pytest.mark.parametrize("batch_size", [1, 3, 7, 1000])
def test_stream_scorer_rechunks_across_arrow_batches(batch_size: int) -> None:
    _check_stream([5, 1, 0, 13, 2, 0, 8], batch_size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=25), min_size=0, max_size=8),
    batch_size=st.integers(min_value=1, max_value=40),
)
def test_stream_scorer_rechunking_property(lengths: list[int], batch_size: int) -> None:
    _check_stream(lengths, batch_size)


def test_stream_scorer_with_no_rows_calls_nothing() -> None:
    model = RecordingModel()
    assert list(_scorer(model, 4).score(iter([]))) == []
    assert list(_scorer(model, 4).score(iter(_batches([0, 0])))) == []
    assert model.calls == []


@pytest.mark.parametrize("nulls", [{0, 5, 6, 11}, {0, 1, 2, 9}, set(range(12))], ids=["scattered", "whole-batch", "all"])
def test_stream_scorer_skips_bad_rows_and_keeps_identity(nulls: set[int]) -> None:
    model = RecordingModel()
    scorer = _scorer(model, 4)
    out = pa.Table.from_batches(list(scorer.score(iter(_batches([3, 7, 2], nulls=nulls)))))
    assert out.column("id").to_pylist() == list(range(12))
    assert sum(model.calls) == 12 - len(nulls) and all(c <= 4 for c in model.calls)
    reasons = out.column(REASON_COLUMN).to_pylist()
    y = out.column("y").to_pylist()
    for i in range(12):
        if i in nulls:
            assert (reasons[i], out.column(BAD_COLUMN)[i].as_py(), y[i]) == ("null_feature", "x", None)
        else:
            assert (reasons[i], y[i]) == ("ok", 2 * (i * 0.5 - 3))
    assert scorer.stats.rows_bad == len(nulls)


def test_stream_scorer_isolates_rows_the_model_rejects() -> None:
    model = RecordingModel(fail_below=-2.0)  # x = 0.5*id - 3 < -2 for ids 0 and 1
    scorer = _scorer(model, 5)
    out = pa.Table.from_batches(list(scorer.score(iter(_batches([4, 6])))))
    assert out.column("id").to_pylist() == list(range(10))
    assert out.column(REASON_COLUMN).to_pylist() == ["model_error"] * 2 + ["ok"] * 8
    assert out.column("y").to_pylist()[:2] == [None, None]
    assert out.column("y").to_pylist()[2:] == [2 * (i * 0.5 - 3) for i in range(2, 10)]
    assert max(model.calls) <= 5


def test_stream_scorer_raises_when_the_model_rejects_every_row() -> None:
    """A model that never works is broken, not fed bad rows: the error surfaces."""
    model = RecordingModel(fail_below=float("inf"))
    with pytest.raises(ValueError, match="model rejects"):
        list(_scorer(model, 4).score(iter(_batches([3, 2]))))


def test_stream_scorer_rejects_a_non_positive_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        _scorer(RecordingModel(), 0)
