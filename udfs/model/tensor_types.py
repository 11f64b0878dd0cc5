"""Type mapping between TensorFlow signature dtypes, numpy, Arrow and Spark."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

# TF dtype name -> (numpy dtype used to call the model, Arrow type of the output column)
_TF_TYPES: dict[str, tuple[object, pa.DataType]] = {
    "float16": (np.float16, pa.float32()),
    "bfloat16": (np.float32, pa.float32()),
    "float32": (np.float32, pa.float32()),
    "float64": (np.float64, pa.float64()),
    "int8": (np.int8, pa.int8()),
    "int16": (np.int16, pa.int16()),
    "int32": (np.int32, pa.int32()),
    "int64": (np.int64, pa.int64()),
    "uint8": (np.uint8, pa.int16()),
    "uint16": (np.uint16, pa.int32()),
    "uint32": (np.uint32, pa.int64()),
    "bool": (np.bool_, pa.bool_()),
    "string": (object, pa.string()),
}

FLOAT_KINDS = {"float16", "bfloat16", "float32", "float64"}
INT_KINDS = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"}


def supported(tf_dtype: str) -> bool:
    return tf_dtype in _TF_TYPES


def numpy_dtype(tf_dtype: str) -> Any:
    """The numpy dtype the model is called with for a signature dtype."""
    return _TF_TYPES[tf_dtype][0]


def arrow_scalar_type(tf_dtype: str) -> pa.DataType:
    """The Arrow (and so Spark) element type of an output with this dtype."""
    return _TF_TYPES[tf_dtype][1]


def arrow_output_type(tf_dtype: str, inner_rank: int) -> pa.DataType:
    """Scalar for rank 0, list for a vector, nested lists for higher ranks."""
    t = arrow_scalar_type(tf_dtype)
    for _ in range(inner_rank):
        t = pa.list_(pa.field("element", t, nullable=True))
    return t


def is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def leaf_type(t: pa.DataType) -> tuple[pa.DataType, int]:
    """(element type, list depth) of a possibly nested list type."""
    depth = 0
    while is_list(t):
        t = t.value_type
        depth += 1
    return t, depth


def accepts(tf_dtype: str, arrow_type: pa.DataType) -> bool:
    """Whether a column of `arrow_type` elements can feed a tensor of `tf_dtype`.

    Floats take any numeric column; integers take integer columns only (a float
    column would be truncated silently); strings take strings; bools take bools.
    """
    if tf_dtype in FLOAT_KINDS:
        return (
            pa.types.is_floating(arrow_type)
            or pa.types.is_integer(arrow_type)
            or pa.types.is_decimal(arrow_type)
        )
    if tf_dtype in INT_KINDS:
        return pa.types.is_integer(arrow_type)
    if tf_dtype == "string":
        return (
            pa.types.is_string(arrow_type)
            or pa.types.is_large_string(arrow_type)
            or pa.types.is_binary(arrow_type)
            or pa.types.is_large_binary(arrow_type)
        )
    if tf_dtype == "bool":
        return pa.types.is_boolean(arrow_type)
    return False


def describe(t: pa.DataType) -> str:
    """A Spark-like name for an Arrow type, for error messages."""
    if is_list(t):
        return f"array<{describe(t.value_type)}>"
    names = {
        pa.float32(): "float", pa.float64(): "double", pa.int32(): "int",
        pa.int64(): "bigint", pa.int16(): "smallint", pa.int8(): "tinyint",
        pa.string(): "string", pa.large_string(): "string", pa.bool_(): "boolean",
        pa.binary(): "binary", pa.large_binary(): "binary",
    }
    return names.get(t, str(t))
