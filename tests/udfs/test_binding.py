"""batchscore.udfs.batches.binding: signature inputs -> columns, checked before any task runs (no Spark, no TF)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from batchscore.core.errors import SchemaError
from batchscore.udfs.batches.binding import bind_inputs, required_columns
from batchscore.udfs.model.signature import ModelSignature, TensorSpec
from tests import support
from tests.support.signatures import MULTI_SIG, schema_with

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
def test_bind_inputs_rejects(columns, schema: pa.Schema, message: str) -> None:
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
