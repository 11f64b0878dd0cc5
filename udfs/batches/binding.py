"""Map signature inputs to columns and check, before any task runs, that they fit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchscore.core.errors import ConfigError, ModelError, SchemaError
from batchscore.udfs.model import tensor_types as tt
from batchscore.udfs.model.signature import ModelSignature, TensorSpec


@dataclass(frozen=True)
class InputFeed:
    """How one signature input is fed.

    `columns` is one column (a scalar, a flat array, or nested arrays matching the
    shape), or, with `stacked`, D scalar columns stacked in order into `[batch, D]`.
    `depth` is the list depth of the single column (0 for scalars). `packed` names
    the one array column the DataFrame lane packs a stacked feed's D columns into
    (one JVM array per row converts to Arrow faster than D separate columns).

    A variable input (`[batch, None, ...]`) has a `pad` value: its rows keep their
    own lengths until a model chunk is taken, then are padded to the chunk's
    longest row. A mask input has `mask_of` (the padded input it follows) and no
    column: row i is 1 for the first len(row i of mask_of) positions, 0 after.
    """

    spec: TensorSpec
    columns: tuple[str, ...]
    stacked: bool
    depth: int
    packed: str | None = None
    pad: Any = None  # padding value of a variable input; None: not padded
    mask_of: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def padded(self) -> bool:
        return self.pad is not None


def bind_inputs(
    signature: ModelSignature,
    schema: pa.Schema,
    columns: dict[str, str | list[str]] | list[str] | None = None,
    *,
    pad: dict[str, Any] | None = None,
    mask: dict[str, str] | None = None,
) -> tuple[InputFeed, ...]:
    """Resolve and type-check the column(s) behind every signature input.

    Args:
        signature: the model's signature.
        schema: the Arrow schema of the input data.
        columns: signature input name -> column or list of scalar columns; a bare
            list is allowed when the signature has exactly one input.
        pad: variable input name -> padding value (`input.pad`).
        mask: mask input name -> the padded input whose row lengths fill it (`input.mask`).

    Raises:
        SchemaError: naming the input, the column and what was expected.
        ConfigError: `input.pad` / `input.mask` name no such input or do not fit it.
        ModelError: an input has an unknown inner dimension and neither key names it.
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
    pad, mask = dict(pad or {}), dict(mask or {})
    _check_pad_and_mask(signature, columns, pad, mask)
    feeds = []
    for spec in signature.inputs:
        if spec.name in mask:
            feeds.append(InputFeed(spec, (), stacked=False, depth=0, mask_of=mask[spec.name]))
        elif spec.name in pad:
            feeds.append(_bind_variable(spec, schema, columns.get(spec.name, spec.name), pad[spec.name]))
        else:
            feeds.append(_bind_one(spec, schema, columns.get(spec.name, spec.name)))
    return tuple(feeds)


def _check_pad_and_mask(
    signature: ModelSignature, columns: dict[str, Any], pad: dict[str, Any], mask: dict[str, str]
) -> None:
    """`input.pad` and `input.mask` name variable inputs; every variable input is named by one."""
    specs = {s.name: s for s in signature.inputs}
    for spec in signature.inputs:  # read_signature refuses these for SavedModels; .keras inputs come here
        if any(d is None for d in spec.shape[1:]):
            raise ModelError(
                f"signature input '{spec.name}' has shape {[None, *spec.shape]} with an unknown inner dimension "
                "after the first; only the first inner dimension may vary (input.pad)"
            )
    listed = f"inputs of signature '{signature.signature}': {', '.join(specs)}"
    for key, names in (("input.pad", pad), ("input.mask", mask)):
        for name in names:
            if name not in specs:
                raise ConfigError(f"{key}.{name}: '{name}' is not an input ({listed})")
            if not specs[name].variable:
                raise ConfigError(
                    f"{key}.{name}: model input '{name}' has fixed shape {_shape_text(specs[name])}; "
                    f"{key} is for inputs with an unknown inner dimension ([batch, None, ...])"
                )
    for name, source in mask.items():
        if name in pad:
            raise ConfigError(f"input.mask.{name}: a mask input is filled by the engine; remove input.pad.{name}")
        if name in columns:
            raise ConfigError(f"input.mask.{name}: a mask input is fed by no column; remove input.columns.{name}")
        if not isinstance(source, str) or source not in pad:
            raise ConfigError(
                f"input.mask.{name}: its source {source!r} must be a padded input (set input.pad.{source})"
            )
        spec = specs[name]
        if spec.shape != (None,) or spec.dtype == "string":
            raise SchemaError(
                f"input.mask.{name}: model input '{name}' is {spec.dtype} {_shape_text(spec)}; "
                "a mask input must be a number or bool of shape [batch, None]"
            )
    for spec in signature.inputs:
        if spec.variable and spec.name not in pad and spec.name not in mask:
            raise ModelError(
                f"signature input '{spec.name}' has shape {[None, *spec.shape]} with an unknown inner "
                f"dimension; set input.pad.{spec.name} to a padding value (each model batch is padded to "
                f"its longest row), or input.mask.{spec.name}: <padded input> if it is a mask, "
                "or export the model with fixed inner dimensions"
            )


def pad_value(spec: TensorSpec, value: Any) -> Any:
    """`input.pad.<name>` checked against the input's dtype; returns it as the model's scalar type.

    Raises:
        ConfigError: the value is not of the input's kind or out of its range.
    """
    dtype = spec.dtype
    if dtype == "string":
        ok = isinstance(value, (str, bytes))
    elif dtype == "bool":
        ok = isinstance(value, bool)
    elif dtype in tt.INT_KINDS:
        np_type = np.dtype(tt.numpy_dtype(dtype))
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and int(np.iinfo(np_type).min) <= value <= int(np.iinfo(np_type).max)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(
            f"input.pad.{spec.name} must be a padding value of dtype {dtype} (model input '{spec.name}'), got {value!r}"
        )
    return value if dtype == "string" else np.asarray(value, dtype=tt.numpy_dtype(dtype))[()]


def _bind_variable(spec: TensorSpec, schema: pa.Schema, source: str | list[str], value: Any) -> InputFeed:
    """A padded input: one array column, flat (len a multiple of the fixed inner size) or nested."""
    if not isinstance(source, str):
        raise SchemaError(
            f"input.columns.{spec.name}: model input '{spec.name}' is padded (input.pad.{spec.name}); "
            "feed it from one array column"
        )
    field = _field(schema, source, spec)
    _, depth = tt.leaf_type(field.type)
    _check_leaf(spec, source, field.type, scalar_only=False)
    rank = len(spec.shape)
    if depth == 0 or (depth != 1 and depth != rank):
        raise SchemaError(
            f"column '{source}' is {tt.describe(field.type)}, but model input '{spec.name}' wants shape "
            f"{_shape_text(spec)}: give an array column of variable length"
            + (f" (flat, or arrays nested {rank} deep)" if rank > 1 else "")
        )
    if depth == rank:
        t = field.type.value_type
        for d in spec.shape[1:]:  # fixed dims after the variable one
            _check_fixed_size(t, d, source, spec)
            t = t.value_type
    return InputFeed(spec, (source,), stacked=False, depth=depth, pad=pad_value(spec, value))


def _field(schema: pa.Schema, column: str, spec: TensorSpec) -> pa.Field:
    idx = schema.get_field_index(column)
    if idx < 0:
        raise SchemaError(
            f"column '{column}' (for model input '{spec.name}') not found in the input; "
            f"columns: {', '.join(schema.names)}"
        )
    return schema.field(idx)


def _shape_text(spec: TensorSpec) -> str:
    return "[" + ", ".join(["batch", *("None" if d is None else str(d) for d in spec.shape)]) + "]"


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
    _leaf, depth = tt.leaf_type(field.type)
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
    import pyarrow.compute as pc  # noqa: PLC0415 - loaded on first use, off the import path of `import batchscore`

    for feed in feeds:
        if feed.stacked or feed.depth == 0 or feed.padded or sample.num_rows == 0:
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
