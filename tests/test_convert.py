"""udfs.convert: Arrow columns -> validated numpy tensors, per-row flags (no Spark, no TF)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from batchscore.udfs import convert
from batchscore.udfs.binding import bind_inputs
from batchscore.udfs.signature import ModelSignature, TensorSpec


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
