"""Hand-written signatures and schemas shared by the engine tests (no TensorFlow needed)."""
from __future__ import annotations

import pyarrow as pa

from batchscore.udfs.model.signature import ModelSignature, TensorSpec

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
