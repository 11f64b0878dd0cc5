"""Map signature inputs to columns and check, before any task runs, that they fit."""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from batchscore.udfs import tensor_types as tt
from batchscore.udfs.errors import SchemaError
from batchscore.udfs.signature import ModelSignature, TensorSpec


@dataclass(frozen=True)
class InputFeed:
    """How one signature input is fed.

    `columns` is one column (a scalar, a flat array, or nested arrays matching the
    shape), or, with `stacked`, D scalar columns stacked in order into `[batch, D]`.
    `depth` is the list depth of the single column (0 for scalars). `packed` names
    the one array column the DataFrame lane packs a stacked feed's D columns into
    (one JVM array per row converts to Arrow faster than D separate columns).
    """

    spec: TensorSpec
    columns: tuple[str, ...]
    stacked: bool
    depth: int
    packed: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def bind_inputs(
    signature: ModelSignature,
    schema: pa.Schema,
    columns: dict[str, str | list[str]] | list[str] | None = None,
) -> tuple[InputFeed, ...]:
    """Resolve and type-check the column(s) behind every signature input.

    Args:
        signature: the model's signature.
        schema: the Arrow schema of the input data.
        columns: signature input name -> column or list of scalar columns; a bare
            list is allowed when the signature has exactly one input.

    Raises:
        SchemaError: naming the input, the column and what was expected.
    """
    names = [s.name for s in signature.inputs]
    if isinstance(columns, list):
        if len(names) != 1:
            raise SchemaError(
                f"input.columns is a list, but the signature has {len(names)} inputs "
                f"({', '.join(names)}); map each input by name"
            )
        columns = {names[0]: columns}
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise SchemaError(
            f"input.columns names '{unknown[0]}', which is not an input of signature "
            f"'{signature.signature}' (inputs: {', '.join(names)})"
        )
    return tuple(_bind_one(spec, schema, columns.get(spec.name, spec.name)) for spec in signature.inputs)


def _field(schema: pa.Schema, column: str, spec: TensorSpec) -> pa.Field:
    idx = schema.get_field_index(column)
    if idx < 0:
        raise SchemaError(
            f"column '{column}' (for model input '{spec.name}') not found in the input; "
            f"columns: {', '.join(schema.names)}"
        )
    return schema.field(idx)


def _shape_text(spec: TensorSpec) -> str:
    return str([None, *spec.shape]).replace("None", "batch")


def _bind_one(spec: TensorSpec, schema: pa.Schema, source: str | list[str]) -> InputFeed:
    if isinstance(source, list):
        if spec.shape != (len(source),):
            raise SchemaError(
                f"model input '{spec.name}' has shape {_shape_text(spec)}; it cannot be stacked "
                f"from {len(source)} columns (input.columns.{spec.name})"
            )
        for col in source:
            _check_leaf(spec, col, _field(schema, col, spec).type, scalar_only=True)
        return InputFeed(spec, tuple(source), stacked=True, depth=0)
    if not isinstance(source, str):
        raise SchemaError(f"input.columns.{spec.name} must be a column name or a list of column names")
    field = _field(schema, source, spec)
    leaf, depth = tt.leaf_type(field.type)
    _check_leaf(spec, source, field.type, scalar_only=False)
    rank = len(spec.shape)
    if depth == 0:
        if spec.shape not in ((), (1,)):
            raise SchemaError(
                f"column '{source}' is a scalar {tt.describe(field.type)}, but model input "
                f"'{spec.name}' wants shape {_shape_text(spec)}: give an array column or a list "
                f"of {spec.size} scalar columns in input.columns.{spec.name}"
            )
    elif depth == 1 and rank >= 1:
        _check_fixed_size(field.type, spec.size, source, spec)
    elif depth == rank:
        t = field.type
        for d in spec.shape:
            _check_fixed_size(t, d, source, spec)
            t = t.value_type
    else:
        raise SchemaError(
            f"column '{source}' is {tt.describe(field.type)} (arrays nested {depth} deep), but model "
            f"input '{spec.name}' wants shape {_shape_text(spec)}: give a flat array of {spec.size} "
            f"values or arrays nested {rank} deep"
        )
    return InputFeed(spec, (source,), stacked=False, depth=depth)


def _check_fixed_size(t: pa.DataType, size: int | None, column: str, spec: TensorSpec) -> None:
    if pa.types.is_fixed_size_list(t) and size is not None and t.list_size != size:
        raise SchemaError(
            f"column '{column}' holds arrays of fixed length {t.list_size}, but model input "
            f"'{spec.name}' wants {size} values per level (shape {_shape_text(spec)})"
        )


def _check_leaf(spec: TensorSpec, column: str, t: pa.DataType, *, scalar_only: bool) -> None:
    leaf, depth = tt.leaf_type(t)
    if scalar_only and depth:
        raise SchemaError(
            f"column '{column}' is {tt.describe(t)}; columns stacked into model input "
            f"'{spec.name}' must be scalars"
        )
    if not tt.accepts(spec.dtype, leaf):
        raise SchemaError(
            f"column '{column}' is {tt.describe(t)}, but model input '{spec.name}' wants "
            f"{spec.dtype}{' values' if depth else ''}"
        )


def required_columns(feeds: tuple[InputFeed, ...]) -> list[str]:
    """Input columns the model reads, each once, in first-use order."""
    seen: dict[str, None] = {}
    for f in feeds:
        for c in f.columns:
            seen.setdefault(c, None)
    return list(seen)


def check_sample(feeds: tuple[InputFeed, ...], sample: pa.Table) -> None:
    """Fail early when an array column's rows never have the length the model needs.

    Per-row checks still quarantine odd rows; this catches a column that is
    wrong throughout (e.g. 100 values where the model wants 8x8x3 = 192) before
    a whole dataset is read into the quarantine.

    Raises:
        SchemaError: naming the column, the lengths seen and the length wanted.
    """
    import pyarrow.compute as pc  # noqa: PLC0415

    for feed in feeds:
        if feed.stacked or feed.depth == 0 or sample.num_rows == 0:
            continue
        col = feed.columns[0]
        arr = sample.column(col).combine_chunks()
        want = feed.spec.size if feed.depth == 1 else feed.spec.shape[0]
        lengths = [v for v in pc.list_value_length(arr).to_pylist() if v is not None]
        if lengths and want not in lengths:
            seen = sorted(set(lengths))[:5]
            raise SchemaError(
                f"column '{col}' holds arrays of length {', '.join(map(str, seen))} in its first rows, but model "
                f"input '{feed.name}' wants {want} values per row (shape {_shape_text(feed.spec)})"
            )
