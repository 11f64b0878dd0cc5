"""batchscore.udfs.batches.convert: Arrow columns -> validated numpy tensors and per-row flags; outputs -> Arrow (no Spark, no TF)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from batchscore.udfs.batches import convert
from batchscore.udfs.batches.binding import bind_inputs, required_columns
from batchscore.udfs.model.signature import ModelSignature, TensorSpec
from tests import support
from tests.support.signatures import MULTI_SIG, schema_with

# --- conversion: Arrow batch -> [batch, *shape] numpy inputs ---


def _multi_feeds(schema: pa.Schema | None = None):
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
def test_packed_stacked_columns_give_the_inputs_and_flags_of_separate_columns(cells, dtype) -> None:
    """The DataFrame lane packs D stacked columns into one array column: same tensor, same reasons, same column."""
    sig = ModelSignature("/m", "serving_default", (TensorSpec("x", "float32", (3,)),), (), "f" * 16)
    names = ["a", "b", "c"]
    separate = pa.RecordBatch.from_pydict({n: pa.array([row[j] for row in cells], dtype) for j, n in enumerate(names)})
    feeds = bind_inputs(sig, separate.schema, {"x": names})
    packed_feeds = (dataclasses.replace(feeds[0], packed="bs__packed_0"),)
    packed = pa.RecordBatch.from_pydict({"bs__packed_0": pa.array(cells, pa.list_(dtype))})
    want_inputs, want = convert.batch_to_inputs(separate, feeds, names)
    got_inputs, got = convert.batch_to_inputs(packed, packed_feeds, names)
    np.testing.assert_array_equal(got.reason, want.reason)
    np.testing.assert_array_equal(got.column, want.column)
    np.testing.assert_array_equal(got_inputs["x"], want_inputs["x"])
    assert got_inputs["x"].dtype == np.float32


def test_batch_to_inputs_scalar_column_feeds_a_batch_by_one_input() -> None:
    sig = ModelSignature("/m", "serving_default", (TensorSpec("x", "float32", (1,)),), (), "f" * 16)
    batch = pa.RecordBatch.from_pydict({"x": pa.array([1.5, 2.5, 3.5], pa.float64())})
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
def test_batch_to_inputs_property_against_a_row_by_row_reference(rows, large, data) -> None:
    """Random nulls, NaN/Inf and wrong lengths, in a sliced batch (offsets non-zero)."""
    start = data.draw(st.integers(0, len(rows) - 1))
    stop = data.draw(st.integers(start + 1, len(rows)))
    list_type = (pa.large_list if large else pa.list_)(pa.float32())
    full = pa.RecordBatch.from_pydict({
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


# --- list columns whose null rows keep values behind them ---
def _sig(shape: tuple[int, ...]) -> ModelSignature:
    return ModelSignature("/m", "s", (TensorSpec("x", "float32", shape),), (TensorSpec("y", "float32", ()),), "f" * 16)


def test_null_lists_with_values_stored_behind_them_keep_rows_aligned() -> None:
    # Arrow may keep values behind a null list (offsets 2..4 of row 1 here); flatten()
    # skips them, so the row of every other value must skip them too.
    values = pa.array(np.arange(10, dtype=np.float32))
    arr = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6, 9, 10], pa.int32()), values,
                                   mask=pa.array([False, True, False, False, False]))
    batch = pa.record_batch([arr], names=["x"])
    inputs, flags = convert.batch_to_inputs(batch, bind_inputs(_sig((2,)), batch.schema), ["x"])
    assert flags.reason.tolist() == [convert.OK, convert.NULL_FEATURE, convert.OK, convert.BAD_SHAPE,
                                     convert.BAD_SHAPE]
    np.testing.assert_array_equal(inputs["x"], [[0, 1], [4, 5]])


def test_null_inner_lists_with_values_behind_them_keep_rows_aligned() -> None:
    # nested [2, 2]: row 0's second inner list is null but has two values behind it
    inner = pa.ListArray.from_arrays(pa.array([0, 2, 4, 6, 8], pa.int32()), pa.array(np.arange(8, dtype=np.float32)),
                                     mask=pa.array([False, True, False, False]))
    outer = pa.ListArray.from_arrays(pa.array([0, 2, 4], pa.int32()), inner)
    batch = pa.record_batch([outer.slice(0, 2)], names=["x"])
    inputs, flags = convert.batch_to_inputs(batch, bind_inputs(_sig((2, 2)), batch.schema), ["x"])
    assert flags.reason.tolist() == [convert.NULL_FEATURE, convert.OK]
    np.testing.assert_array_equal(inputs["x"], [[[4, 5], [6, 7]]])
