"""The numeric core without Spark: binding, conversion, re-chunking, outputs, model cache, config."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import uuid

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.jobs.config import load_config
from batchscore.jobs.evaluate import roc_auc
from tests import support
from batchscore.udfs import convert, model_cache
from batchscore.udfs.batching import BAD_COLUMN, REASON_COLUMN, StreamScorer
from batchscore.udfs.binding import bind_inputs, required_columns
from batchscore.udfs.distribution import ModelSource, _unpack_once, make_model_source, pack_model
from batchscore.udfs.errors import ConfigError, ModelError, SchemaError
from batchscore.udfs.signature import ModelSignature, TensorSpec, model_fingerprint, read_signature

# The multi model's signature, written out by hand so binding tests need no TensorFlow.
MULTI_SIG = ModelSignature(
    path="/models/multi",
    signature="serving_default",
    inputs=(
        TensorSpec("category", "string", ()),
        TensorSpec("count", "int64", ()),
        TensorSpec("image", "float32", (8, 8, 3)),
        TensorSpec("numeric", "float32", (4,)),
    ),
    outputs=(TensorSpec("score", "float32", ()),),
    fingerprint="0" * 16,
)

GOOD_FIELDS = {
    "id": pa.int64(),
    "pixels": pa.list_(pa.float32()),
    "f0": pa.float32(),
    "f1": pa.float64(),
    "f2": pa.int32(),
    "f3": pa.float32(),
    "cat": pa.string(),
    "n": pa.int64(),
}


def schema_with(**changes: pa.DataType | None) -> pa.Schema:
    """The multi model's input schema with some columns retyped (or dropped with None)."""
    fields = {**GOOD_FIELDS, **changes}
    return pa.schema([(k, v) for k, v in fields.items() if v is not None])


# --- binding: signature inputs -> columns, checked before any task runs ---


def test_bind_inputs_maps_every_input_and_lists_required_columns() -> None:
    feeds = bind_inputs(MULTI_SIG, schema_with(), support.MULTI_COLUMNS)
    by_name = {f.name: f for f in feeds}
    assert by_name["image"].columns == ("pixels",) and by_name["image"].depth == 1
    assert by_name["numeric"].columns == ("f0", "f1", "f2", "f3") and by_name["numeric"].stacked
    assert by_name["category"].columns == ("cat",) and by_name["category"].depth == 0
    assert required_columns(feeds) == ["cat", "n", "pixels", "f0", "f1", "f2", "f3"]


def test_bind_inputs_defaults_to_the_input_name() -> None:
    sig = ModelSignature("/m", "serving_default", (TensorSpec("x", "float64", ()),), (), "f" * 16)
    (feed,) = bind_inputs(sig, pa.schema([("x", pa.float32()), ("y", pa.string())]), None)
    assert feed.columns == ("x",) and not feed.stacked


@pytest.mark.parametrize(
    ("columns", "schema", "message"),
    [
        pytest.param(
            {**support.MULTI_COLUMNS, "category": "cat"}, schema_with(cat=None),
            r"column 'cat' \(for model input 'category'\) not found", id="missing-column",
        ),
        pytest.param(
            {k: v for k, v in support.MULTI_COLUMNS.items() if k != "image"}, schema_with(),
            r"column 'image' \(for model input 'image'\) not found", id="missing-default-column",
        ),
        pytest.param(
            {**support.MULTI_COLUMNS, "numeric": ["f0", "f1", "f2", "nope"]}, schema_with(),
            r"column 'nope' \(for model input 'numeric'\) not found", id="missing-stacked-column",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(f1=pa.string()),
            r"column 'f1' is string, but model input 'numeric' wants float32", id="string-for-float",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(n=pa.float64()),
            r"column 'n' is double, but model input 'count' wants int64", id="float-for-int",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(cat=pa.int32()),
            r"column 'cat' is int, but model input 'category' wants string", id="int-for-string",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(pixels=pa.list_(pa.string())),
            r"column 'pixels' is array<string>, but model input 'image' wants float32 values",
            id="string-array-for-float-tensor",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(pixels=pa.list_(pa.list_(pa.float32()))),
            r"column 'pixels' is array<array<float>> \(arrays nested 2 deep\), but model input 'image' "
            r"wants shape \[batch, 8, 8, 3\]", id="wrong-list-depth",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(pixels=pa.float32()),
            r"column 'pixels' is a scalar float, but model input 'image' wants shape \[batch, 8, 8, 3\]",
            id="scalar-for-tensor",
        ),
        pytest.param(
            support.MULTI_COLUMNS, schema_with(pixels=pa.list_(pa.float32(), 100)),
            r"column 'pixels' holds arrays of fixed length 100, but model input 'image' wants 192",
            id="fixed-size-list-length",
        ),
        pytest.param(
            support.MULTI_COLUMNS,
            schema_with(pixels=pa.list_(pa.list_(pa.list_(pa.float32(), 4), 8), 8)),
            r"column 'pixels' holds arrays of fixed length 4, but model input 'image' wants 3",
            id="fixed-size-nested-inner-length",
        ),
        pytest.param(
            {**support.MULTI_COLUMNS, "numeric": ["f0", "f1", "f2"]}, schema_with(),
            r"model input 'numeric' has shape \[batch, 4\]; it cannot be stacked from 3 columns",
            id="stacking-count",
        ),
        pytest.param(
            {**support.MULTI_COLUMNS, "numeric": ["f0", "f1", "f2", "pixels"]}, schema_with(),
            r"column 'pixels' is array<float>; columns stacked into model input 'numeric' must be scalars",
            id="stacking-an-array",
        ),
        pytest.param(
            {**support.MULTI_COLUMNS, "nope": "f0"}, schema_with(),
            r"input.columns names 'nope', which is not an input of signature 'serving_default'",
            id="unknown-input",
        ),
        pytest.param(
            ["f0", "f1", "f2", "f3"], schema_with(),
            r"input.columns is a list, but the signature has 4 inputs", id="bare-list-many-inputs",
        ),
    ],
)
def test_bind_inputs_rejects(columns, schema: pa.Schema, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SchemaError, match=message):
        bind_inputs(MULTI_SIG, schema, columns)


@pytest.mark.parametrize(
    "pixels_type",
    [
        pa.list_(pa.float32()),
        pa.large_list(pa.float64()),
        pa.list_(pa.float32(), 192),
        pa.list_(pa.list_(pa.list_(pa.float32(), 3), 8), 8),
        pa.list_(pa.list_(pa.list_(pa.float32()))),
    ],
    ids=["list", "large-list-double", "fixed-192", "fixed-nested", "nested"],
)
def test_bind_inputs_accepts_flat_and_nested_arrays(pixels_type: pa.DataType) -> None:
    feeds = bind_inputs(MULTI_SIG, schema_with(pixels=pixels_type), support.MULTI_COLUMNS)
    image = next(f for f in feeds if f.name == "image")
    assert image.columns == ("pixels",)


# --- conversion: Arrow batch -> [batch, *shape] numpy inputs ---


def _multi_feeds(schema: pa.Schema | None = None):  # type: ignore[no-untyped-def]
    feeds = bind_inputs(MULTI_SIG, schema or schema_with(), support.MULTI_COLUMNS)
    return feeds, required_columns(feeds)


def test_batch_to_inputs_shapes_dtypes_and_values() -> None:
    table = support.multi_table(9)
    feeds, cols = _multi_feeds(table.schema)
    inputs, flags = convert.batch_to_inputs(table.to_batches()[0], feeds, cols)
    expected = support.multi_inputs(table)
    assert flags.good.all()
    assert inputs["image"].shape == (9, 8, 8, 3) and inputs["image"].dtype == np.float32
    assert inputs["numeric"].shape == (9, 4) and inputs["numeric"].dtype == np.float32
    assert inputs["count"].shape == (9,) and inputs["count"].dtype == np.int64
    assert inputs["category"].shape == (9,) and inputs["category"].dtype == object
    for k, v in expected.items():
        np.testing.assert_array_equal(inputs[k], v, err_msg=k)
    # The flat array is reshaped row-major: pixel (r, c, ch) is value r*24 + c*3 + ch.
    flat = np.asarray(table.column("pixels")[4].as_py(), dtype=np.float32)
    assert inputs["image"][4, 2, 5, 1] == flat[2 * 24 + 5 * 3 + 1]


def test_batch_to_inputs_nested_and_fixed_size_columns_give_the_same_tensor() -> None:
    table = support.multi_table(6)
    pixels = np.asarray(table.column("pixels").to_pylist(), dtype=np.float32)
    expected = pixels.reshape(6, 8, 8, 3)
    variants = {
        "nested": pa.array(expected.tolist(), type=pa.list_(pa.list_(pa.list_(pa.float32())))),
        "fixed": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 192),
    }
    for name, arr in variants.items():
        t = table.set_column(table.schema.get_field_index("pixels"), "pixels", arr)
        feeds, cols = _multi_feeds(t.schema)
        inputs, flags = convert.batch_to_inputs(t.combine_chunks().to_batches()[0], feeds, cols)
        assert flags.good.all(), name
        np.testing.assert_array_equal(inputs["image"], expected, err_msg=name)


@settings(max_examples=60, deadline=None)
@given(cells=st.lists(st.lists(st.sampled_from([0.5, -2.0, 7.25, None, math.nan, math.inf]), min_size=3, max_size=3),
                      min_size=1, max_size=30),
       dtype=st.sampled_from([pa.float32(), pa.float64()]))
def test_packed_stacked_columns_give_the_inputs_and_flags_of_separate_columns(cells, dtype) -> None:  # type: ignore[no-untyped-def]
    """The DataFrame lane packs D stacked columns into one array column: same tensor, same reasons, same column."""
    sig = ModelSignature("/m", "serving_default", (TensorSpec("x", "float32", (3,)),), (), "f" * 16)
    names = ["a", "b", "c"]
    separate = pa.record_batch({n: pa.array([row[j] for row in cells], dtype) for j, n in enumerate(names)})
    feeds = bind_inputs(sig, separate.schema, {"x": names})
    packed_feeds = (dataclasses.replace(feeds[0], packed="bs__packed_0"),)
    packed = pa.record_batch({"bs__packed_0": pa.array(cells, pa.list_(dtype))})
    want_inputs, want = convert.batch_to_inputs(separate, feeds, names)
    got_inputs, got = convert.batch_to_inputs(packed, packed_feeds, names)
    np.testing.assert_array_equal(got.reason, want.reason)
    np.testing.assert_array_equal(got.column, want.column)
    np.testing.assert_array_equal(got_inputs["x"], want_inputs["x"])
    assert got_inputs["x"].dtype == np.float32


def test_batch_to_inputs_scalar_column_feeds_a_batch_by_one_input() -> None:
    sig = ModelSignature("/m", "serving_default", (TensorSpec("x", "float32", (1,)),), (), "f" * 16)
    batch = pa.record_batch({"x": pa.array([1.5, 2.5, 3.5], pa.float64())})
    feeds = bind_inputs(sig, batch.schema)
    inputs, _ = convert.batch_to_inputs(batch, feeds, ["x"])
    assert inputs["x"].shape == (3, 1) and inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(inputs["x"][:, 0], [1.5, 2.5, 3.5])


def test_batch_to_inputs_flags_bad_rows_and_keeps_good_rows_in_order() -> None:
    table = support.multi_table(8)
    pixels = table.column("pixels").to_pylist()
    pixels[1] = None  # null array
    pixels[4] = pixels[4][:-1]  # 191 values
    f1 = table.column("f1").to_numpy().copy()
    f1[6] = np.nan
    f0 = table.column("f0").to_pylist()
    f0[2] = None
    table = (
        table.set_column(1, "pixels", pa.array(pixels, pa.list_(pa.float32())))
        .set_column(2, "f0", pa.array(f0, pa.float32()))
        .set_column(3, "f1", pa.array(f1))
    )
    feeds, cols = _multi_feeds(table.schema)
    inputs, flags = convert.batch_to_inputs(table.to_batches()[0], feeds, cols)
    reasons = [convert.REASONS[r] for r in flags.reason]
    assert reasons == ["ok", "null_feature", "null_feature", "ok", "bad_shape", "ok", "non_finite", "ok"]
    assert [cols[c] if c >= 0 else None for c in flags.column] == [
        None, "pixels", "f0", None, "pixels", None, "f1", None,
    ]
    good = [0, 3, 5, 7]
    expected = support.multi_inputs(table.take(good))
    for k in ("image", "numeric", "count", "category"):
        assert inputs[k].shape[0] == 4
        np.testing.assert_array_equal(inputs[k], expected[k], err_msg=k)


VS_SIG = ModelSignature(
    "/m", "serving_default", (TensorSpec("v", "float32", (2,)), TensorSpec("s", "float32", ())), (), "f" * 16,
)
_leaf = st.one_of(st.none(), st.just(float("nan")), st.floats(-1e6, 1e6, width=32))
_vrow = st.one_of(st.none(), st.lists(_leaf, min_size=1, max_size=3))
_srow = st.one_of(st.none(), st.just(float("inf")), st.floats(-1e6, 1e6, width=32))


def _expected_reason(v: list | None, s: float | None) -> tuple[str, str | None]:
    """The first fault of a row, in feed order (v, then s), as the engine documents it."""
    if v is None:
        return "null_feature", "v"
    if len(v) != 2:
        return "bad_shape", "v"
    if any(x is None for x in v):
        return "null_feature", "v"
    if any(math.isnan(x) for x in v):
        return "non_finite", "v"
    if s is None:
        return "null_feature", "s"
    if not math.isfinite(s):
        return "non_finite", "s"
    return "ok", None


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(_vrow, _srow), min_size=1, max_size=30),
    large=st.booleans(),
    data=st.data(),
)
def test_batch_to_inputs_property_against_a_row_by_row_reference(rows, large, data) -> None:  # type: ignore[no-untyped-def]
    """Random nulls, NaN/Inf and wrong lengths, in a sliced batch (offsets non-zero)."""
    start = data.draw(st.integers(0, len(rows) - 1))
    stop = data.draw(st.integers(start + 1, len(rows)))
    list_type = (pa.large_list if large else pa.list_)(pa.float32())
    full = pa.record_batch({
        "v": pa.array([r[0] for r in rows], list_type),
        "s": pa.array([r[1] for r in rows], pa.float32()),
    })
    batch = full.slice(start, stop - start)
    feeds = bind_inputs(VS_SIG, batch.schema)
    inputs, flags = convert.batch_to_inputs(batch, feeds, ["v", "s"])

    window = rows[start:stop]
    expected = [_expected_reason(v, s) for v, s in window]
    got = [(convert.REASONS[r], ["v", "s"][c] if c >= 0 else None) for r, c in zip(flags.reason, flags.column, strict=True)]
    assert got == expected
    good = [(v, s) for (v, s), (reason, _) in zip(window, expected, strict=True) if reason == "ok"]
    assert inputs["v"].shape == (len(good), 2) and inputs["s"].shape == (len(good),)
    np.testing.assert_array_equal(inputs["v"], np.asarray([v for v, _ in good], np.float32).reshape(-1, 2))
    np.testing.assert_array_equal(inputs["s"], np.asarray([s for _, s in good], np.float32))


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


def _batches(lengths: list[int], *, nulls: set[int] = frozenset()) -> list[pa.RecordBatch]:  # type: ignore[assignment]
    out, start = [], 0
    for n in lengths:
        ids = np.arange(start, start + n, dtype=np.int64)
        x = [None if i in nulls else float(i) * 0.5 - 3 for i in ids]
        out.append(pa.record_batch({"id": pa.array(ids), "x": pa.array(x, pa.float64())}))
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


# --- outputs -> Arrow columns typed from the signature ---

OUT_SIG = ModelSignature(
    "/m", "serving_default", (),
    (
        TensorSpec("prob", "float32", (1,)),
        TensorSpec("vec", "float32", (3,)),
        TensorSpec("mat", "float64", (2, 2)),
        TensorSpec("name", "string", ()),
        TensorSpec("count", "int64", ()),
    ),
    "f" * 16,
)


def _outputs() -> dict[str, np.ndarray]:
    return {
        "prob": np.array([[0.25], [0.5], [0.75]], np.float32),
        "vec": np.arange(9, dtype=np.float32).reshape(3, 3),
        "mat": np.arange(12, dtype=np.float64).reshape(3, 2, 2),
        "name": np.array([b"a", b"b\xc3\xa9", b"c"], dtype=object),
        "count": np.array([1, -2, 3], np.int64),
    }


def test_output_schema_types_follow_the_signature() -> None:
    schema = OUT_SIG.output_schema({"prob": "p"})
    assert schema.names == ["p", "vec", "mat", "name", "count"]
    assert schema.field("p").type == pa.float32()  # [batch, 1] -> one score per row
    assert schema.field("vec").type == pa.list_(pa.float32())
    assert schema.field("mat").type == pa.list_(pa.list_(pa.float64()))
    assert schema.field("name").type == pa.string()
    assert schema.field("count").type == pa.int64()


def test_outputs_to_arrow_scalar_vector_nested_string_int() -> None:
    arrays = convert.outputs_to_arrow(_outputs(), OUT_SIG, 3, None)
    by_name = dict(zip([o.name for o in OUT_SIG.outputs], arrays, strict=True))
    assert [a.type for a in arrays] == list(OUT_SIG.output_schema().types)
    assert by_name["prob"].to_pylist() == [0.25, 0.5, 0.75]
    assert by_name["vec"].to_pylist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert by_name["mat"].to_pylist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]
    assert by_name["name"].to_pylist() == ["a", "bé", "c"]
    assert by_name["count"].to_pylist() == [1, -2, 3]


def test_outputs_to_arrow_scatters_scored_rows_and_nulls_the_rest() -> None:
    outs = {k: v[:2] for k, v in _outputs().items()}  # two scored rows ...
    arrays = convert.outputs_to_arrow(outs, OUT_SIG, 4, np.array([1, 3]))  # ... at rows 1 and 3 of 4
    by_name = dict(zip([o.name for o in OUT_SIG.outputs], arrays, strict=True))
    assert by_name["prob"].to_pylist() == [None, 0.25, None, 0.5]
    assert by_name["vec"].to_pylist() == [None, [0, 1, 2], None, [3, 4, 5]]
    assert by_name["mat"].to_pylist() == [None, [[0, 1], [2, 3]], None, [[4, 5], [6, 7]]]
    assert by_name["name"].to_pylist() == [None, "a", None, "bé"]
    assert by_name["count"].to_pylist() == [None, 1, None, -2]
    none = convert.outputs_to_arrow({k: v[:0] for k, v in _outputs().items()}, OUT_SIG, 2, np.array([], int))
    assert all(a.to_pylist() == [None, None] for a in none)


# --- a real SavedModel: signature, loading, cache ---


def test_read_signature_of_a_custom_tf_function_model(multi_model: str) -> None:
    sig = read_signature(multi_model)
    assert {(s.name, s.dtype, s.shape) for s in sig.inputs} == {
        ("image", "float32", (8, 8, 3)), ("numeric", "float32", (4,)),
        ("category", "string", ()), ("count", "int64", ()),
    }
    assert [o.name for o in sig.outputs] == sorted(support.MULTI_OUTPUTS)
    schema = sig.output_schema()
    assert schema.field("score").type == pa.float32()
    assert schema.field("embedding").type == pa.list_(pa.float32())
    assert schema.field("grid").type == pa.list_(pa.list_(pa.float32()))
    assert schema.field("label").type == pa.string()
    assert schema.field("doubled").type == pa.int64()
    assert sig.fingerprint == model_fingerprint(multi_model)
    assert sig.path == os.path.abspath(multi_model)


def test_read_signature_errors_name_the_path_and_signature(multi_model: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match=r"model.path '.*/nowhere' does not exist"):
        read_signature(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"'.*/empty' is not a TensorFlow SavedModel"):
        read_signature(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=r"model.signature 'nope' not found .* it has: serving_default"):
        read_signature(multi_model, "nope")


def test_fingerprint_follows_content(multi_model: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    same = shutil.copytree(multi_model, tmp_path / "same")
    changed = support.fresh_copy(multi_model, str(tmp_path))
    assert model_fingerprint(str(same)) == model_fingerprint(multi_model)
    assert model_fingerprint(changed) != model_fingerprint(multi_model)


def test_load_saved_model_predicts_like_bare_tensorflow(multi_model: str, multi_table: pa.Table) -> None:
    _, predict = model_cache.load_saved_model(multi_model, "serving_default")
    inputs = support.multi_inputs(multi_table)
    expected = support.tf_predict(multi_model, inputs)
    got = predict(inputs)
    assert sorted(got) == sorted(support.MULTI_OUTPUTS)
    for k in ("score", "embedding", "grid", "doubled"):
        assert got[k].shape == expected[k].shape
        assert support.max_abs_diff(got[k], expected[k]) <= 1e-5, k
    assert got["label"].tolist() == expected["label"].tolist()
    # A short batch goes through the same concrete function and gives the same numbers.
    part = predict({k: v[:3] for k, v in inputs.items()})
    assert support.max_abs_diff(part["score"], expected["score"][:3]) <= 1e-5


def test_load_saved_model_errors(multi_model: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError, match="cannot load SavedModel"):
        model_cache.load_saved_model(str(tmp_path), "serving_default")
    with pytest.raises(ModelError, match="model.signature 'nope' not found"):
        model_cache.load_saved_model(multi_model, "nope")


@pytest.fixture
def empty_model_cache():  # type: ignore[no-untyped-def]
    model_cache.clear()
    yield
    model_cache.clear()


@pytest.mark.usefixtures("empty_model_cache")
def test_model_cache_loads_once_per_key(multi_model: str) -> None:
    loads: list[str] = []

    def load():  # type: ignore[no-untyped-def]
        loads.append(multi_model)
        return model_cache.load_saved_model(multi_model, "serving_default")

    key = model_fingerprint(multi_model) + "/serving_default"
    first = model_cache.get_predict_fn(key, load)
    second = model_cache.get_predict_fn(key, load)
    assert first is second
    assert loads == [multi_model] and model_cache.load_count() == 1
    model_cache.get_predict_fn(key + "-other", load)
    assert len(loads) == 2 and model_cache.load_count() == 2


def test_pack_and_unpack_model_round_trip(multi_model: str) -> None:
    fingerprint = f"test-{uuid.uuid4().hex}"
    target = _unpack_once(pack_model(multi_model), fingerprint, "multi_model")
    try:
        assert os.path.basename(target) == "multi_model"
        assert model_fingerprint(target) == model_fingerprint(multi_model)
        assert _unpack_once(b"not used: already unpacked", fingerprint, "multi_model") == target
    finally:
        shutil.rmtree(os.path.dirname(target), ignore_errors=True)


def test_model_source_direct_and_bad_kind(multi_model: str) -> None:
    assert ModelSource("direct", multi_model, "f" * 16).local_path() == multi_model
    with pytest.raises(ConfigError, match="model.distribution must be one of broadcast, files, direct, got 'ftp'"):
        make_model_source(None, multi_model, "f" * 16, "ftp")


# --- config ---

PATHS = ["input.path=/data/in", "model.path=/models/m", "output.path=/data/out"]


def test_load_config_defaults() -> None:
    cfg = load_config(None, PATHS)
    assert cfg.input.model_dump() == {
        "path": "/data/in", "format": "parquet", "filter": None, "columns": {}, "lane": "auto",
        "ignore_corrupt_files": False, "pad": {}, "pad_multiple": 1, "mask": {}}
    assert cfg.model.model_dump() == {"path": "/models/m", "signature": "serving_default", "batch_size": 1024,
                                      "distribution": "broadcast"}
    assert cfg.output.model_dump() == {"path": "/data/out", "mode": "error", "partition_by": [],
                                       "keep_columns": [], "rename": {}}
    assert cfg.quarantine.model_dump() == {"path": None, "on_bad_rows": "quarantine"}
    assert cfg.spark == {}


def test_load_config_set_parses_yaml_values() -> None:
    cfg = load_config(None, [
        *PATHS,
        "model.batch_size=2048",
        "output.keep_columns=[id, as_of_date]",
        "output.partition_by=as_of_date",
        "input.columns.numeric=[f0, f1, f2]",
        "input.columns.category=cat",
        "output.rename.output_0=p",
        "input.filter=age > 40 AND region = 'north'",
        "spark.spark.master=local[2]",
        "spark.sql.shuffle.partitions=4",  # the section name may be left out
        "input.ignore_corrupt_files=true",
    ])
    assert cfg.model.batch_size == 2048
    assert cfg.output.keep_columns == ["id", "as_of_date"]
    assert cfg.output.partition_by == ["as_of_date"]
    assert cfg.input.columns == {"numeric": ["f0", "f1", "f2"], "category": "cat"}
    assert cfg.output.rename == {"output_0": "p"}
    assert cfg.input.filter == "age > 40 AND region = 'north'"
    assert cfg.spark == {"spark.master": "local[2]", "spark.sql.shuffle.partitions": 4}
    assert cfg.input.ignore_corrupt_files is True


def test_load_config_accepts_the_padding_keys() -> None:
    cfg = load_config(None, [*PATHS, "input.pad.tokens=0", "input.pad.scale=0.5", "input.pad.word=''",
                             "input.pad_multiple=8", "input.mask.tokens_mask=tokens"])
    assert cfg.input.pad == {"tokens": 0, "scale": 0.5, "word": ""}
    assert cfg.input.pad_multiple == 8 and cfg.input.mask == {"tokens_mask": "tokens"}


def test_load_config_file_then_overrides(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "job.yaml"
    f.write_text(
        "spark:\n  spark.master: local[1]\n"
        "input: {path: /a, columns: {numeric: [x, y]}}\n"
        "model: {path: /m, batch_size: 8}\n"
        "output: {path: /o, keep_columns: [id]}\n"
    )
    cfg = load_config(str(f), ["model.batch_size=16", "output.mode=overwrite"])
    assert cfg.model.batch_size == 16 and cfg.output.mode == "overwrite"
    assert cfg.input.columns == {"numeric": ["x", "y"]} and cfg.output.keep_columns == ["id"]
    assert cfg.spark == {"spark.master": "local[1]"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.bogus=1"], r"unknown config key 'model.bogus'"),
        (["bogus.key=1"], r"unknown config key 'bogus'"),
        (["model.batch_size"], r"--set 'model.batch_size' must look like dotted.key=value"),
        (["=3"], r"--set '=3' has an empty key"),
        (["model..path=x"], r"--set 'model..path=x' has an empty key"),
        (["model.batch_size=[1"], r"--set 'model.batch_size=\[1': value is not a YAML scalar or list"),
        (["model.batch_size=0"], r"'model.batch_size' must be a positive integer, got 0"),
        (["model.batch_size=many"], r"'model.batch_size' must be a positive integer, got 'many'"),
        (["model.distribution=ftp"], r"'model.distribution' must be one of broadcast, files, direct, got 'ftp'"),
        (["output.mode=replace"], r"'output.mode' must be one of"),
        (["model.path=x.y=z", "model.path.deeper=1"], r"--set model.path.deeper: 'path' is not a section"),
        (["output.keep_columns=[1, 2]"], r"'output.keep_columns' must be a list of column names"),
        (["input.colums=[a]"], r"^unknown config key 'input.colums' \(known here: columns, filter, format, "
                               r"ignore_corrupt_files, lane, mask, pad, pad_multiple, path\)$"),
        (["input.pad_multiple=0"], r"^config key 'input.pad_multiple' must be a positive integer, got 0$"),
        (["input.pad.tokens=[0]"], r"^config key 'input.pad.tokens' must be a scalar padding value"),
        (["input.mask.tokens=1"], r"^config key 'input.mask.tokens' must name the padded input it masks"),
        (["input.lane=fast"], r"^config key 'input.lane' must be one of auto, dataframe, arrow, got 'fast'$"),
        (["input.ignore_corrupt_files=maybe"], r"^config key 'input.ignore_corrupt_files' must be true or false$"),
        (["input.columns=3"], r"^config key 'input.columns' must be a mapping"),
        (["model.batch_size=true"], r"'model.batch_size' must be a positive integer, got True"),
    ],
)
def test_load_config_rejects_bad_overrides(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*PATHS, *overrides])


def test_load_config_requires_paths_and_an_existing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"config key 'input.path' is required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match=r"config key 'output.path' is required"):
        load_config(None, PATHS[:2])
    with pytest.raises(ConfigError, match=r"config file '.*/missing.yaml' not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match=r"config file '.*/bad.yaml' is not valid YAML"):
        load_config(str(bad))


# --- evaluation ---


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_brute_force_pairwise_auc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_roc_auc_edges() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))
