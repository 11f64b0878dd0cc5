"""The numeric core's edges: Arrow columns -> validated numpy tensors -> Arrow columns.

Plain functions of Arrow and numpy, testable without Spark or TensorFlow.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batchscore.udfs.batches.binding import InputFeed
from batchscore.udfs.model import tensor_types as tt
from batchscore.udfs.model.signature import ModelSignature, TensorSpec, output_shape

# Reason codes a row can be quarantined with; 0 means the row is good.
OK = 0
REASONS = ("ok", "null_feature", "non_finite", "bad_shape", "bad_prediction", "model_error")
NULL_FEATURE, NON_FINITE, BAD_SHAPE, BAD_PREDICTION, MODEL_ERROR = 1, 2, 3, 4, 5


class RowFlags:
    """Per-row reason code and the index of the column that caused it."""

    def __init__(self, n: int) -> None:
        self.reason = np.zeros(n, dtype=np.int8)
        self.column = np.full(n, -1, dtype=np.int16)

    def mark(self, rows: np.ndarray, reason: int, column: int) -> None:
        """Flag rows (bool mask or indices) not yet flagged; the first fault wins."""
        if rows.dtype == np.bool_:
            rows = np.flatnonzero(rows)
        if rows.size == 0:
            return
        rows = rows[self.reason[rows] == OK]
        self.reason[rows] = reason
        self.column[rows] = column

    @property
    def good(self) -> np.ndarray:
        return self.reason == OK


@dataclass(frozen=True)
class Ragged:
    """Rows of one padded input, each of its own length, until a model chunk is padded.

    Row i is `values[offsets[i]:offsets[i + 1]]`. Slicing by rows and `concat`
    mirror numpy's, so the re-chunking queue moves these like dense arrays.
    """

    values: np.ndarray  # [sum(lengths), *inner]: the rows' positions, back to back
    lengths: np.ndarray  # [n] int64: positions per row

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def offsets(self) -> np.ndarray:
        out = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=out[1:])
        return out

    def __getitem__(self, rows: slice) -> Ragged:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("Ragged rows slice with step 1 only")
        offsets = self.offsets
        return Ragged(self.values[offsets[start]:offsets[max(start, stop)]], self.lengths[start:stop])

    @staticmethod
    def concat(parts: Sequence[Ragged]) -> Ragged:
        return Ragged(np.concatenate([p.values for p in parts]), np.concatenate([p.lengths for p in parts]))

    def padded(self, length: int, value: Any) -> np.ndarray:
        """`[n, length, *inner]`: each row's positions, then `value` up to `length`."""
        n, lengths = len(self), self.lengths
        out = np.full((n, length, *self.values.shape[1:]), value, dtype=self.values.dtype)
        rows = np.repeat(np.arange(n), lengths)
        positions = np.arange(len(self.values)) - np.repeat(self.offsets[:-1], lengths)
        out[rows, positions] = self.values
        return out

    def mask(self, length: int, dtype: Any) -> np.ndarray:
        """`[n, length]`: 1 for each row's positions, 0 for its padding."""
        return (np.arange(length)[None, :] < self.lengths[:, None]).astype(dtype)


def padded_length(longest: int, multiple: int) -> int:
    """The length a chunk is padded to: its longest row (at least 1), rounded up to `multiple`."""
    return -(-max(longest, 1) // multiple) * multiple


def pad_inputs(
    chunk: dict[str, Any], feeds: tuple[InputFeed, ...], multiple: int = 1
) -> dict[str, np.ndarray]:
    """Dense model inputs for one chunk: padded inputs and masks share one length.

    All padded inputs of a call (token ids, type ids) get the chunk's longest row
    among them, rounded up to `multiple`, so inputs the model combines line up.
    """
    ragged = [v for v in chunk.values() if isinstance(v, Ragged)]
    if not ragged:
        return chunk  # no Ragged in it: all numpy
    length = padded_length(max(int(r.lengths.max(initial=0)) for r in ragged), multiple)
    out: dict[str, np.ndarray] = {}
    for feed in feeds:
        if feed.mask_of is not None:
            out[feed.name] = chunk[feed.mask_of].mask(length, tt.numpy_dtype(feed.spec.dtype))  # [m, length]
            continue
        v = chunk[feed.name]
        out[feed.name] = v.padded(length, feed.pad) if isinstance(v, Ragged) else v  # [m, length, *inner]
    return out


def batch_to_inputs(
    batch: pa.RecordBatch, feeds: tuple[InputFeed, ...], columns: list[str]
) -> tuple[dict[str, np.ndarray], RowFlags]:
    """Validate a batch and build the model inputs of its good rows.

    Args:
        batch: input rows.
        feeds: how each signature input is fed.
        columns: names used for `RowFlags.column` indices (the required columns).

    Returns:
        (inputs of the good rows, each `[n_good, *shape]`, or `Ragged` rows of a
        padded input (masks are made when a chunk is padded); per-row flags).
    """
    n = batch.num_rows
    flags = RowFlags(n)
    raw, variable = _read_feeds(batch, feeds, flags, columns)
    good = flags.good
    all_good = bool(good.all())
    n_good = n if all_good else int(good.sum())
    inputs: dict[str, Any] = {}
    for feed in feeds:
        if feed.name in variable:
            positions, pos_row, lengths = variable[feed.name]
            if not all_good:
                positions, lengths = positions[good[pos_row]], lengths[good]
            inputs[feed.name] = Ragged(positions.reshape(-1, *feed.spec.shape[1:]), lengths)  # [positions, *inner]
    for feed in feeds:
        if feed.name not in raw:
            continue
        values, row_of = raw[feed.name]
        if not all_good:
            # Good rows hold exactly `size` leaf values each, in row order.
            if row_of is None and feed.depth:  # well-formed lists: n rows of `size` values
                values = values.reshape(n, -1)[good]
            else:
                values = values[good] if row_of is None else values[good[row_of]]
        inputs[feed.name] = values.reshape((n_good, *feed.spec.shape))
    return inputs, flags


def _read_feeds(
    batch: pa.RecordBatch, feeds: tuple[InputFeed, ...], flags: RowFlags, columns: list[str]
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Each feed's values, flagging bad rows in `flags`: (fixed-shape feeds, padded feeds).

    A fixed-shape feed's values hold one entry per row (scalars, stacked) or per leaf element
    (lists), with `row_of` mapping leaf elements to rows (None: well-formed, in row order).
    A padded feed's are (positions, the row of each position, each row's length).
    """
    raw: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    variable: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for feed in feeds:
        spec = feed.spec
        if feed.mask_of is not None:
            continue
        if feed.padded:
            c = feed.columns[0]
            variable[spec.name] = _variable_values(batch.column(c), feed, flags, columns.index(c))
        elif feed.stacked and feed.packed:
            cols = [columns.index(c) for c in feed.columns]
            raw[spec.name] = (_packed_values(batch.column(feed.packed), spec, flags, cols), None)  # [n, D]
        elif feed.stacked:
            parts = [_scalar_values(batch.column(c), spec, flags, columns.index(c)) for c in feed.columns]
            raw[spec.name] = (np.stack(parts, axis=1), None)  # [n, D]
        elif feed.depth == 0:
            c = feed.columns[0]
            raw[spec.name] = (_scalar_values(batch.column(c), spec, flags, columns.index(c)), None)
        else:
            c = feed.columns[0]
            raw[spec.name] = _list_values(batch.column(c), feed, flags, columns.index(c))
    return raw, variable


def _to_numpy(arr: pa.Array, spec: TensorSpec) -> np.ndarray:
    """Nulls filled (they are flagged separately); cast to the model's dtype."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    dtype = tt.numpy_dtype(spec.dtype)
    if spec.dtype == "string":
        if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
            arr = pc.fill_null(arr, b"") if arr.null_count else arr
        else:
            arr = pc.fill_null(arr, "") if arr.null_count else arr
        return arr.to_numpy(zero_copy_only=False).astype(object, copy=False)
    if arr.null_count:
        arr = pc.fill_null(arr, pa.scalar(0, arr.type) if not pa.types.is_boolean(arr.type) else False)
    if pa.types.is_decimal(arr.type):
        arr = pc.cast(arr, pa.float64())
    out = arr.to_numpy(zero_copy_only=False)
    return out.astype(dtype, copy=False)


def _non_finite(values: np.ndarray, spec: TensorSpec) -> np.ndarray | None:
    """Bool mask of non-finite float values, or None for other dtypes."""
    if spec.dtype in tt.FLOAT_KINDS:
        bad = ~np.isfinite(values)
        return bad if bad.any() else None
    return None


def _scalar_values(arr: pa.Array, spec: TensorSpec, flags: RowFlags, col: int) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        flags.mark(np.asarray(arr.is_null()), NULL_FEATURE, col)
    values = _to_numpy(arr, spec)
    bad = _non_finite(values, spec)
    if bad is not None:
        flags.mark(bad, NON_FINITE, col)
    return values


def _packed_values(arr: pa.Array, spec: TensorSpec, flags: RowFlags, cols: list[int]) -> np.ndarray:
    """A stacked feed's D scalar columns packed in one array column (every row holds D
    values, never a null list): `[n, D]` values, rows flagged as the D columns would be."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n, d = len(arr), len(cols)
    leaf = arr.flatten()
    nulls = np.asarray(leaf.is_null()).reshape(n, d) if leaf.null_count else None
    values = _to_numpy(leaf, spec).reshape(n, d)
    bad = _non_finite(values, spec)
    if nulls is not None or bad is not None:
        for j, col in enumerate(cols):  # column by column, nulls first: as _scalar_values flags them
            if nulls is not None:
                flags.mark(nulls[:, j], NULL_FEATURE, col)
            if bad is not None:
                flags.mark(bad[:, j], NON_FINITE, col)
    return values


def _list_values(
    arr: pa.Array, feed: InputFeed, flags: RowFlags, col: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Flatten (nested) list rows to leaf values, flagging bad rows.

    Returns (leaf values, the row of each leaf value, or None when every row is
    well-formed so that leaf i belongs to row i // size).

    A depth-1 column holds each row's values flat (any shape, e.g. an image as
    H*W*C values); deeper columns must match the shape level by level.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    spec = feed.spec
    # fixed shapes only here (padded inputs take _variable_values): every dim is an int
    dims = cast("tuple[int, ...]", (spec.size,) if feed.depth == 1 else spec.shape)
    if arr.null_count:
        flags.mark(np.asarray(arr.is_null()), NULL_FEATURE, col)
    level = arr
    row_of: np.ndarray | None = None  # None: element i of `level` is in row i // per_row
    per_row = 1
    for d in dims:
        has_null = level.null_count > 0
        lengths = pc.list_value_length(level).to_numpy(zero_copy_only=False)
        if has_null:
            lengths = np.nan_to_num(lengths, nan=d)  # null lists are flagged already
        wrong = lengths != d
        if row_of is None and (has_null or wrong.any()):
            row_of = np.arange(len(level)) // per_row
        if row_of is not None:
            flags.mark(row_of[wrong], BAD_SHAPE, col)
            parents = pc.list_parent_indices(level).to_numpy()
            if has_null:  # flatten() leaves out values stored behind null lists; so must the parents
                parents = parents[np.asarray(level.is_valid())[parents]]
            row_of = row_of[parents]
        level = level.flatten()
        per_row *= d
        if level.null_count:
            if row_of is None:
                row_of = np.arange(len(level)) // per_row
            flags.mark(row_of[np.asarray(level.is_null())], NULL_FEATURE, col)
    values = _to_numpy(level, spec)
    bad = _non_finite(values, spec)
    if bad is not None:
        idx = np.flatnonzero(bad)
        flags.mark(row_of[idx] if row_of is not None else idx // per_row, NON_FINITE, col)
    return values, row_of


def _variable_values(
    arr: pa.Array, feed: InputFeed, flags: RowFlags, col: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A padded input's rows: (values `[positions, *inner]`, the row of each leaf value,
    positions per row), flagging null lists, null elements, wrong fixed inner lengths
    and non-finite values as `_list_values` does.

    A flat (depth-1) column holds each row's positions back to back; its length must be a
    multiple of the fixed inner size. A nested column is checked level by level.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    spec = feed.spec
    dims = (None,) if feed.depth == 1 else spec.shape  # None: the variable level
    row_of = np.arange(len(arr))
    level = arr
    per_row: Any = None  # each row's number of positions: the variable level's lengths
    for d in dims:
        lengths = pc.list_value_length(level)
        if lengths.null_count:
            flags.mark(row_of[np.asarray(lengths.is_null())], NULL_FEATURE, col)
        # flatten() leaves out null lists' values: they count as empty
        lengths = pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        if d is not None:
            flags.mark(row_of[lengths != d], BAD_SHAPE, col)  # null inner lists are flagged already
        if per_row is None:
            per_row = lengths
        row_of = np.repeat(row_of, lengths)
        level = level.flatten()
    if level.null_count:
        flags.mark(row_of[np.asarray(level.is_null())], NULL_FEATURE, col)
    if feed.depth == 1 and spec.position_size != 1:
        flags.mark(per_row % spec.position_size != 0, BAD_SHAPE, col)
        per_row = per_row // spec.position_size
    values = _to_numpy(level, spec)
    bad = _non_finite(values, spec)
    if bad is not None:
        flags.mark(row_of[np.flatnonzero(bad)], NON_FINITE, col)
    return values, row_of, per_row


def outputs_to_arrow(
    outputs: dict[str, np.ndarray], signature: ModelSignature, n: int, rows: np.ndarray | None
) -> list[pa.Array]:
    """Prediction columns for a batch of `n` rows, in signature output order.

    Args:
        outputs: output name -> `[n_scored, *shape]` values.
        rows: indices of the `n_scored` scored rows among the `n`; None when all
            rows were scored. Other rows get nulls.
    """
    arrays = []
    for spec in signature.outputs:
        values = outputs[spec.name]
        shape = output_shape(spec)
        arrow_type = tt.arrow_output_type(spec.dtype, len(shape))
        arrays.append(_tensor_to_arrow(values, shape, arrow_type, spec, n, rows))
    return arrays


def _leaf_array(values: np.ndarray, spec: TensorSpec, arrow_type: pa.DataType) -> pa.Array:
    if spec.dtype == "string":
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]
        return pa.array(flat, type=pa.string())
    return pa.array(values.astype(arrow_type.to_pandas_dtype(), copy=False), type=arrow_type)


def _tensor_to_arrow(
    values: np.ndarray,
    shape: tuple[int | None, ...],
    arrow_type: pa.DataType,
    spec: TensorSpec,
    n: int,
    rows: np.ndarray | None,
) -> pa.Array:
    m = values.shape[0]
    if rows is not None and m == 0:
        return pa.nulls(n, type=arrow_type)
    if rows is not None:
        # Scatter the scored rows into a batch of n; the rest stay null.
        full = np.zeros((n, *values.shape[1:]), dtype=values.dtype)
        full[rows] = values
        values = full
        mask = np.ones(n, dtype=bool)
        mask[rows] = False
    else:
        mask = None
    if not shape:
        leaf_t = arrow_type
        leaf = _leaf_array(values.reshape(n), spec, leaf_t)
        if mask is not None:
            leaf = pc.if_else(pa.array(mask), pa.nulls(n, leaf_t), leaf)
        return leaf
    inner = values.shape[1:]
    leaf_t, _ = tt.leaf_type(arrow_type)
    arr: pa.Array = _leaf_array(values.reshape(-1), spec, leaf_t)
    # Build nested lists from the innermost dimension out.
    count = int(np.prod(inner)) * n
    for i, d in enumerate(reversed(inner)):
        count //= d
        offsets = pa.array(np.arange(0, (count + 1) * d, d, dtype=np.int32))
        outer_mask = pa.array(mask) if (mask is not None and i == len(inner) - 1) else None
        arr = pa.ListArray.from_arrays(offsets, arr, mask=outer_mask)
    return arr.cast(arrow_type) if arr.type != arrow_type else arr


def bad_prediction_rows(outputs: dict[str, np.ndarray], signature: ModelSignature, m: int) -> np.ndarray:
    """Bool mask over the `m` scored rows whose outputs are NaN/Inf or misshapen."""
    bad = np.zeros(m, dtype=bool)
    for spec in signature.outputs:
        v = outputs.get(spec.name)
        if v is None or v.shape[0] != m:
            bad[:] = True
            continue
        declared = tuple(d for d in spec.shape)
        if any(d is not None and d != a for d, a in zip(declared, v.shape[1:], strict=False)) or len(
            declared
        ) != len(v.shape) - 1:
            bad[:] = True
            continue
        if spec.dtype in tt.FLOAT_KINDS:
            bad |= ~np.isfinite(v.reshape(m, -1)).all(axis=1) if v.size else False
    return bad
