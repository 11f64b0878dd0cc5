"""Spark's own reading of `input.filter`, as a pyarrow expression for the Arrow lane.

Spark parses, analyses and optimises the filter over the real input (`apply_filter` on the
DataFrame `batchscore.run.inputs.read_input` builds); the driver then translates the Filter
conditions of the optimised plan, an allow-list of Catalyst nodes (`_Translator`), into one
pyarrow expression with Spark's semantics (`arrow_filter`), made once and shipped to the tasks.

Anything else raises UnsupportedFilter: under `input.lane: auto` the job then uses the
DataFrame lane (Spark evaluates the filter itself) and logs why; under `input.lane: arrow`
it is a ConfigError. Without py4j access to the plan (Spark Connect) the Arrow lane is never
chosen for a filtered input.
"""
from __future__ import annotations

import decimal
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from batchscore.core.errors import ConfigError


class UnsupportedFilter(ValueError):
    """The filter uses SQL the Arrow lane does not evaluate exactly as Spark does."""


# Errors Spark raises while it evaluates a predicate on the data (ANSI mode).
RUNTIME_ERROR_CLASSES = (
    "CAST_INVALID_INPUT", "CAST_OVERFLOW", "ARITHMETIC_OVERFLOW", "DIVIDE_BY_ZERO", "NUMERIC_VALUE_OUT_OF_RANGE",
    "INVALID_ARRAY_INDEX", "INVALID_INDEX_OF_ZERO", "DATETIME_OVERFLOW", "DATETIME_FIELD_OUT_OF_BOUNDS",
    "INVALID_FRACTION_OF_SECOND", "CANNOT_PARSE_TIMESTAMP", "INVALID_URL", "INVALID_PARAMETER_VALUE",
)
_INTERNAL = ("INTERNAL_ERROR",)


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _error_class(e: BaseException) -> str | None:
    get = getattr(e, "getCondition", None) or getattr(e, "getErrorClass", None)
    try:
        cls = get() if get is not None else None
    except Exception:  # noqa: BLE001 - a captured error without its JVM side
        cls = None
    if cls:
        return str(cls)
    m = re.search(r"\[([A-Z][A-Z0-9_]+)(?:\.[A-Z0-9_]+)*\]", str(e))
    return m.group(1) if m else None


def apply_filter(df: Any, filter_sql: str | None) -> Any:
    """`df.where(filter_sql)`, analysed and optimised now, so Spark's own objections come first.

    Raises:
        ConfigError: Spark cannot parse or analyse the filter, or a literal in it cannot be
            cast to its column's type (ANSI; found when the optimiser folds the cast).
    """
    if not filter_sql:
        return df
    try:
        out = _without_float_pushdown(df).where(filter_sql)
        out.schema  # noqa: B018 - analyse now, so a bad filter fails before any task
        jdf = getattr(out, "_jdf", None)  # absent under Spark Connect: run-time errors still name it
        if jdf is not None:
            jdf.queryExecution().optimizedPlan()
    except Exception as e:
        if (_error_class(e) or "").startswith(_INTERNAL):
            raise
        raise ConfigError(f"input.filter {filter_sql!r} is not valid: {_first_line(e)}") from None
    return out


def _without_float_pushdown(df: Any) -> Any:
    """`df` with each float/double column `x` as `nanvl(x, x)`: the same values, but predicates on
    them are evaluated by Spark, not pushed down to the Parquet reader.

    Spark's Parquet reader skips row groups by min/max statistics, which leave NaN out (as
    pyarrow and the Parquet spec write them) and which it compares with -0.0 below 0.0, so a
    pushed-down `x > 100` or `x = 0` loses NaN or -0.0 rows depending on how rows fall into
    row groups (seen with Spark 4.1).
    """
    from pyspark.sql import functions as F  # noqa: PLC0415 - pyspark's own spelling

    names = [f.name for f in df.schema.fields if f.dataType.typeName() in ("double", "float")]
    if not names:
        return df
    cols = {n: F.col("`" + n.replace("`", "``") + "`") for n in names}
    return df.withColumns({n: F.nanvl(c, c) for n, c in cols.items()})


def filter_failure(e: BaseException, filter_sql: str | None) -> ConfigError | None:
    """A ConfigError naming the filter when `e` is Spark failing to evaluate it on the data, else None."""
    if not filter_sql:
        return None
    cls = _error_class(e)
    if cls is None or not cls.startswith(RUNTIME_ERROR_CLASSES):
        return None
    return ConfigError(f"input.filter {filter_sql!r} fails on the input data: {_first_line(e)}")


# --- the plan ---


@dataclass(frozen=True)
class RowFilter:
    """Spark's filter for the Arrow lane (picklable: made on the driver, used by the tasks)."""

    exact: ds.Expression  # the rows Spark keeps
    prune: ds.Expression | None  # the conjuncts Parquet statistics may prune row groups by
    columns: tuple[str, ...]  # the columns `exact` reads
    after_read: bool = True  # `exact` holds more than `prune`: apply it to the rows read


def arrow_filter(df: Any, schema: pa.Schema) -> RowFilter | None:
    """The pyarrow filter that keeps exactly the rows Spark's filter on `df` keeps.

    It walks the Filter conditions of `df`'s optimised logical plan through py4j, where
    literals are already folded and typed, implicit casts are explicit Cast nodes, BETWEEN
    is two comparisons and long IN lists are InSet.

    Conjuncts that read a float or double column do not prune: Parquet writers leave
    NaN out of row-group statistics (a group of [100.0, NaN] has min = max = 100.0, and
    pyarrow would then drop it for `isnan(x)`), so they are applied to the rows read.

    Args:
        df: the filtered DataFrame (`apply_filter(spark.read.parquet(path), ...)`), JVM-backed.
        schema: the Arrow schema the lane reads (pyspark's `to_arrow_schema(df.schema)`).

    Returns:
        None when the plan filters nothing.

    Raises:
        UnsupportedFilter: the plan holds something outside the allow-list, or is unreachable.
    """
    jdf = getattr(df, "_jdf", None)
    if jdf is None:
        raise UnsupportedFilter("input.filter: its Spark plan is not reachable here (Spark Connect)")
    try:
        conditions = _filter_conditions(jdf.queryExecution().optimizedPlan())
        if conditions is None:  # Spark proved that no row passes
            return RowFilter(ds.scalar(False), ds.scalar(False), (), after_read=False)
        translated = [_Translator(schema).conjunct(c) for cond in conditions for c in _conjuncts(cond)]
    except UnsupportedFilter as e:
        raise UnsupportedFilter(f"input.filter: {e}") from None
    except Exception as e:  # noqa: BLE001 - a py4j or JVM surprise: never guess, fall back
        raise UnsupportedFilter(f"input.filter: its Spark plan cannot be read ({_first_line(e)})") from None
    if not translated:
        return None
    exact = _all([e for e, _, _ in translated])
    safe = [e for e, _, floats in translated if not floats]
    columns = tuple(sorted({c for _, cols, _ in translated for c in cols}))
    if len(safe) == len(translated):
        return RowFilter(exact, exact, columns, after_read=False)
    return RowFilter(exact, _all(safe) if safe else None, columns)


def _all(exprs: list[ds.Expression]) -> ds.Expression:
    out = exprs[0]
    for e in exprs[1:]:
        out = out & e
    return out


def _conjuncts(node: Any) -> list[Any]:
    if _name(node) == "And":
        return _conjuncts(node.left()) + _conjuncts(node.right())
    return [node]


def _name(node: Any) -> str:
    return str(node.getClass().getSimpleName())


def _children(node: Any) -> list[Any]:
    seq = node.children()
    return [seq.apply(i) for i in range(seq.size())]


def _filter_conditions(plan: Any) -> list[Any] | None:
    """The Filter conditions above the file relation (Projects of plain columns allowed);
    None when the optimiser replaced the scan by an empty relation."""
    conditions: list[Any] = []
    node = plan
    while True:
        kind = _name(node)
        if kind == "Filter":
            conditions.append(node.condition())
        elif kind == "Project":
            if not all(_name(e) == "AttributeReference" or _is_same_value(e) for e in _seq(node.projectList())):
                raise UnsupportedFilter("the input plan computes columns")
        elif kind == "LogicalRelation":
            return conditions
        elif kind == "LocalRelation" and node.data().isEmpty():
            return None
        else:
            raise UnsupportedFilter(f"the filtered input plan holds a {kind}")
        kids = _children(node)
        if len(kids) != 1:
            raise UnsupportedFilter(f"the filtered input plan holds a {kind} of {len(kids)} inputs")
        node = kids[0]


def _is_same_value(node: Any) -> bool:
    """`nanvl(x, x)` (see `_without_float_pushdown`), possibly under an alias: the value of x."""
    if _name(node) == "Alias":
        node = node.child()
    return _name(node) == "NaNvl" and _name(node.left()) == "AttributeReference" and node.left().semanticEquals(
        node.right())


def _seq(seq: Any) -> list[Any]:
    return [seq.apply(i) for i in range(seq.size())]


# --- types and literals ---

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "boolean": pa.bool_(), "tinyint": pa.int8(), "smallint": pa.int16(), "int": pa.int32(),
    "bigint": pa.int64(), "float": pa.float32(), "double": pa.float64(), "string": pa.string(),
    "binary": pa.binary(), "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC"),
    "timestamp_ntz": pa.timestamp("us"),
}
_INT_DIGITS = {pa.int8(): 3, pa.int16(): 5, pa.int32(): 10, pa.int64(): 19}
_UTC_ZONES = {"UTC", "Etc/UTC", "GMT", "Etc/GMT", "Z", "+00:00", "UCT", "Etc/UCT", "Universal", "Zulu"}


def _arrow_type(spark_type: Any) -> pa.DataType:
    """The Arrow type of a Catalyst DataType as pyspark's to_arrow_schema maps it."""
    text = str(spark_type.simpleString())
    if text in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[text]
    m = re.fullmatch(r"decimal\((\d+),(\d+)\)", text)
    if m:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    raise UnsupportedFilter(f"the Arrow lane does not filter on {text} values")  # e.g. collated strings


def _literal(value: Any, t: pa.DataType) -> pa.Scalar:
    """A Catalyst internal value (days, micros, UTF8String, Decimal...) as a pyarrow scalar of type t."""
    if value is None:
        return pa.scalar(None, t)
    if pa.types.is_date32(t):
        return pa.scalar(int(value), pa.int32()).cast(t)
    if pa.types.is_timestamp(t):
        return pa.scalar(int(value), t)  # micros since the epoch (a UTC instant, or wall clock for ntz)
    if pa.types.is_decimal(t):
        big = value.toJavaBigDecimal()  # py4j hands java.math.BigDecimal over as decimal.Decimal
        return pa.scalar(big if isinstance(big, decimal.Decimal) else decimal.Decimal(str(big.toPlainString())), t)
    if pa.types.is_string(t):
        return pa.scalar(str(value.toString()), t)
    if pa.types.is_binary(t):
        return pa.scalar(bytes(value), t)
    return pa.scalar(value, t)


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t)


_NULL_BOOL = pa.scalar(None, pa.bool_())
_COMPARISONS = {"EqualTo", "LessThan", "LessThanOrEqual", "GreaterThan", "GreaterThanOrEqual"}
_STRING_PREDICATES: dict[str, Callable[..., ds.Expression]] = {
    "StartsWith": pc.starts_with, "EndsWith": pc.ends_with, "Contains": pc.match_substring,
}


class _Value:
    """A translated value expression: the pyarrow expression, its type, and the literal if it is one."""

    def __init__(self, expr: ds.Expression, type_: pa.DataType, literal: pa.Scalar | None = None) -> None:
        self.expr, self.type, self.literal = expr, type_, literal


def _float_equal(a: ds.Expression, b: ds.Expression) -> ds.Expression:
    # Spark: NaN = NaN; IEEE already has -0.0 = 0.0. Kleene logic keeps NULL when a side is NULL.
    return (a == b) | (pc.is_nan(a) & pc.is_nan(b))


def _float_greater(a: ds.Expression, b: ds.Expression) -> ds.Expression:
    # Spark: NaN is above every other non-null value, +inf included
    return (a > b) | (pc.is_nan(a) & ~pc.is_nan(b))


def _float_greater_equal(a: ds.Expression, b: ds.Expression) -> ds.Expression:
    return (a >= b) | (pc.is_nan(a) & b.is_valid())


def _compare(kind: str, left: _Value, right: _Value) -> ds.Expression:
    """`left <kind> right` in Spark's order (NULL when a side is NULL)."""
    if left.type != right.type:
        raise UnsupportedFilter(f"the plan compares {left.type} with {right.type}")
    a, b = left.expr, right.expr
    if _is_float(left.type):
        ops: dict[str, Callable[[], ds.Expression]] = {
            "EqualTo": lambda: _float_equal(a, b), "GreaterThan": lambda: _float_greater(a, b),
            "GreaterThanOrEqual": lambda: _float_greater_equal(a, b), "LessThan": lambda: _float_greater(b, a),
            "LessThanOrEqual": lambda: _float_greater_equal(b, a)}
    else:
        ops = {"EqualTo": lambda: a == b, "GreaterThan": lambda: a > b, "GreaterThanOrEqual": lambda: a >= b,
               "LessThan": lambda: a < b, "LessThanOrEqual": lambda: a <= b}
    return ops[kind]()


def _null_safe_equal(left: _Value, right: _Value) -> ds.Expression:
    a, b = left.expr, right.expr
    equal = _compare("EqualTo", left, right)
    return pc.if_else(a.is_null() | b.is_null(), a.is_null() & b.is_null(), equal)


def _in(value: _Value, items: list[pa.Scalar]) -> ds.Expression:
    """`value IN (items)`: TRUE on a match, else NULL if the list holds NULL, else FALSE; NULL for a NULL value."""
    values = [s.as_py() for s in items if s.is_valid]
    x = value.expr
    if _is_float(value.type):
        numbers = [v for v in values if not math.isnan(v)]
        has_nan = len(numbers) != len(values)
        if any(v == 0 for v in numbers):
            numbers += [0.0, -0.0]  # pyarrow's hash set tells the zeros apart; Spark does not
        core = x.isin(pa.array(numbers, value.type))
        if has_nan:
            core = core | pc.is_nan(x)
    else:
        core = x.isin(pa.array(values, value.type))
    if len(values) != len(items):
        core = core | pc.scalar(_NULL_BOOL)
    return pc.if_else(x.is_valid(), core, pc.scalar(_NULL_BOOL))


class _Translator:
    """Catalyst expression nodes (py4j objects) to pyarrow expressions over `schema`.

    The allow-list, each with Spark's semantics:

    - comparisons (=, <=>, <, <=, >, >=), IN / InSet, IS [NOT] NULL, isnan(),
      AND / OR / NOT with SQL's three-valued logic, boolean columns and literals,
      StartsWith / EndsWith / Contains (what LIKE 'a%' and friends become);
    - float and double order as Spark orders them: NaN = NaN, NaN above every
      other value (+inf too), -0.0 = 0.0;
    - literals of boolean, integer, float, double, decimal, string (Spark's default
      UTF8_BINARY collation: byte order), binary, date, timestamp (a UTC instant)
      and timestamp_ntz;
    - casts whose every result is exact (`_cast`).
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.columns: set[str] = set()
        self.reads_floats = False

    def conjunct(self, node: Any) -> tuple[ds.Expression, set[str], bool]:
        """(expression, columns it reads, whether one of them is float or double)."""
        self.columns, self.reads_floats = set(), False
        expr = self.predicate(node)
        return expr, self.columns, self.reads_floats

    def predicate(self, node: Any) -> ds.Expression:
        kind = _name(node)
        if kind in ("And", "Or"):
            left, right = self.predicate(node.left()), self.predicate(node.right())
            return left & right if kind == "And" else left | right  # Kleene, as SQL
        if kind == "Not":
            return ~self.predicate(node.child())
        if kind in _COMPARISONS:
            return _compare(kind, self.value(node.left()), self.value(node.right()))
        if kind == "EqualNullSafe":
            return _null_safe_equal(self.value(node.left()), self.value(node.right()))
        if kind == "In":
            items = [self.value(e) for e in _seq(node.list())]
            if any(i.literal is None for i in items):
                raise UnsupportedFilter("IN lists of other than literals are not evaluated by the Arrow lane")
            return _in(self.value(node.value()), [i.literal for i in items if i.literal is not None])
        if kind == "InSet":
            value = self.value(node.child())
            it = node.hset().iterator()
            items = []
            while it.hasNext():
                items.append(_literal(it.next(), value.type))
            return _in(value, items)
        if kind in ("IsNull", "IsNotNull"):
            x = self.value(node.child()).expr
            return x.is_null() if kind == "IsNull" else x.is_valid()
        if kind == "IsNaN":
            v = self.value(node.child())
            if not _is_float(v.type):
                raise UnsupportedFilter(f"isnan() of {v.type}")
            return v.expr.is_valid() & pc.is_nan(v.expr)  # Spark: isnan(NULL) is false
        if kind in _STRING_PREDICATES:
            return self._string_predicate(kind, node)
        if str(node.dataType().simpleString()) == "boolean" and kind in ("AttributeReference", "Literal", "Cast"):
            return self.value(node).expr
        raise UnsupportedFilter(f"the Arrow lane does not evaluate {kind} ({_text(node)})")

    def _string_predicate(self, kind: str, node: Any) -> ds.Expression:
        left, right = self.value(node.left()), self.value(node.right())
        if left.type != pa.string() or right.literal is None or right.type != pa.string():
            raise UnsupportedFilter(f"{kind} of other than a string column and a string literal ({_text(node)})")
        if not right.literal.is_valid:
            return pc.if_else(left.expr.is_valid(), pc.scalar(_NULL_BOOL), pc.scalar(_NULL_BOOL))
        # byte-wise, as Spark's UTF8_BINARY
        return _STRING_PREDICATES[kind](left.expr, pattern=right.literal.as_py())

    def value(self, node: Any) -> _Value:
        kind = _name(node)
        if kind == "AttributeReference":
            name = str(node.name())
            if name not in self.schema.names:
                raise UnsupportedFilter(f"column {name!r} is not read by the Arrow lane")
            t = self.schema.field(name).type
            if t != _arrow_type(node.dataType()):
                raise UnsupportedFilter(f"column {name!r} is {t} in Arrow, {node.dataType().simpleString()} in Spark")
            self.columns.add(name)
            self.reads_floats = self.reads_floats or _is_float(t)
            return _Value(ds.field(name), t)
        if kind == "Literal":
            t = _arrow_type(node.dataType())
            s = _literal(node.value(), t)
            return _Value(pc.scalar(s), t, s)
        if _is_same_value(node):
            return self.value(node.left())
        if kind == "Cast":
            child = self.value(node.child())
            to = _arrow_type(node.dataType())
            return _Value(_cast(child, to, node), to)
        raise UnsupportedFilter(f"the Arrow lane does not evaluate {kind} ({_text(node)})")


def _text(node: Any) -> str:
    return re.sub(r"nanvl\(([^,()]+), \1\)", r"\1", str(node.sql()))[:120]  # as the user wrote it


def _cast(child: _Value, to: pa.DataType, node: Any) -> ds.Expression:
    """A Cast pyarrow computes exactly as Spark does (none of these can fail under ANSI), else UnsupportedFilter.

    Integer widening, float to double, int/smallint/tinyint to double (and smallint/tinyint
    to float), integer and decimal to a decimal that holds every value, date to timestamp
    in a UTC session zone.
    """
    frm = child.type
    if frm == to:
        return child.expr
    if pa.types.is_integer(frm) and pa.types.is_integer(to) and to.bit_width >= frm.bit_width:
        return child.expr.cast(to)
    if pa.types.is_integer(frm) and _is_float(to) and frm.bit_width < (53 if to == pa.float64() else 24):
        return child.expr.cast(to)  # every value exact (bigint to double rounds: refused)
    if frm == pa.float32() and to == pa.float64():
        return child.expr.cast(to)  # exact, NaN stays NaN
    if pa.types.is_decimal(to) and (pa.types.is_integer(frm) or pa.types.is_decimal(frm)):
        digits, scale = (_INT_DIGITS[frm], 0) if pa.types.is_integer(frm) else (frm.precision - frm.scale, frm.scale)
        if to.precision - to.scale >= digits and to.scale >= scale:
            return child.expr.cast(to)
    if pa.types.is_date32(frm) and to == pa.timestamp("us", tz="UTC"):
        zone = node.timeZoneId()
        if zone.isDefined() and str(zone.get()) in _UTC_ZONES:
            return child.expr.cast(to)  # midnight UTC; other zones have days that do not start at 00:00
    raise UnsupportedFilter(f"the Arrow lane does not cast {frm} to {to} as Spark does ({_text(node)})")
