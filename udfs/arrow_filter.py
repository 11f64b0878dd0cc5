"""Translate a Spark SQL predicate (the `input.filter` string) into a pyarrow expression.

Covers what partition and row filters are made of: comparisons, IN, BETWEEN,
IS [NOT] NULL, AND/OR/NOT, parentheses, literals (numbers, 'strings', booleans,
DATE '...', TIMESTAMP '...'). Anything else (functions, arithmetic) raises
UnsupportedFilter, and the job falls back to the DataFrame lane, where Spark
evaluates the filter itself. Literals compared with a column are cast to the
column's type, as Spark does (`date_col >= '2026-01-01'`).
"""
from __future__ import annotations

import re
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds


class UnsupportedFilter(ValueError):
    """The predicate uses SQL the Arrow lane does not evaluate."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<str>'(?:[^'\\]|\\.|'')*')"
    r"|(?P<bq>`[^`]+`)|(?P<op><=>|<=|>=|<>|!=|==|=|<|>|\(|\)|,|[-+*/%])|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))"
)
_KEYWORDS = {"and", "or", "not", "in", "is", "null", "between", "true", "false", "date", "timestamp"}


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise UnsupportedFilter(f"cannot parse input.filter near {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            kind, value = "kw", value.lower()
        out.append((kind, value))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _Parser:
    def __init__(self, text: str, schema: pa.Schema) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.schema = schema
        self.names = {n.lower(): n for n in schema.names}
        self.columns: set[str] = set()

    def peek(self, kind: str | None = None, value: str | None = None) -> bool:
        if self.i >= len(self.toks):
            return False
        k, v = self.toks[self.i]
        return (kind is None or k == kind) and (value is None or v == value)

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if not self.peek(kind, value):
            got = self.toks[self.i][1] if self.i < len(self.toks) else "end of filter"
            raise UnsupportedFilter(f"input.filter: expected {value or kind}, got {got!r}")
        self.i += 1
        return self.toks[self.i - 1][1]

    def parse(self) -> ds.Expression:
        e = self.or_()
        if self.i != len(self.toks):
            raise UnsupportedFilter(f"input.filter: unexpected {self.toks[self.i][1]!r}")
        return e

    def or_(self) -> ds.Expression:
        e = self.and_()
        while self.peek("kw", "or"):
            self.take()
            e = e | self.and_()
        return e

    def and_(self) -> ds.Expression:
        e = self.not_()
        while self.peek("kw", "and"):
            self.take()
            e = e & self.not_()
        return e

    def not_(self) -> ds.Expression:
        if self.peek("kw", "not"):
            self.take()
            return ~self.not_()
        return self.predicate()

    def predicate(self) -> ds.Expression:
        if self.peek("op", "("):
            self.take()
            e = self.or_()
            self.take("op", ")")
            return e
        left = self.operand()
        if self.peek("kw", "is"):
            self.take()
            negate = self.peek("kw", "not") and bool(self.take())
            self.take("kw", "null")
            e = _expr(left).is_null()
            return ~e if negate else e
        negate = False
        if self.peek("kw", "not"):
            self.take()
            negate = True
        if self.peek("kw", "in"):
            self.take()
            self.take("op", "(")
            values = [self.operand()]
            while self.peek("op", ","):
                self.take()
                values.append(self.operand())
            self.take("op", ")")
            lits = [_cast_to(v, self._type_of(left)) for v in values]
            value_set = pa.array([x.as_py() for x in lits], type=self._type_of(left))
            # SQL: NULL IN (...) is NULL, so the row is dropped under NOT too
            col = _expr(left)
            e = pc.if_else(col.is_valid(), col.isin(value_set), pa.scalar(None, pa.bool_()))
            return ~e if negate else e
        if self.peek("kw", "between"):
            self.take()
            lo = self.operand()
            self.take("kw", "and")
            hi = self.operand()
            e = self._compare(left, ">=", lo) & self._compare(left, "<=", hi)
            return ~e if negate else e
        if negate:
            raise UnsupportedFilter("input.filter: NOT must precede IN, BETWEEN or a predicate")
        op = self.take("op")
        if op not in ("=", "==", "!=", "<>", "<", "<=", ">", ">="):
            raise UnsupportedFilter(f"input.filter: operator {op!r} is not supported by the Arrow lane")
        return self._compare(left, op, self.operand())

    def _type_of(self, operand: Any) -> pa.DataType | None:
        return self.schema.field(operand[1]).type if operand[0] == "col" else None

    def _compare(self, a: Any, op: str, b: Any) -> ds.Expression:
        ta, tb = self._type_of(a), self._type_of(b)
        ea = _expr(a) if a[0] == "col" else pc.scalar(_cast_to(a, tb))
        eb = _expr(b) if b[0] == "col" else pc.scalar(_cast_to(b, ta))
        if op in ("=", "=="):
            return ea == eb
        if op in ("!=", "<>"):
            return ea != eb
        return {"<": ea < eb, "<=": ea <= eb, ">": ea > eb, ">=": ea >= eb}[op]

    def operand(self) -> tuple[str, Any]:
        if self.peek("num"):
            v = self.take()
            return ("lit", float(v) if any(c in v for c in ".eE") else int(v))
        if self.peek("str"):
            return ("lit", _unquote(self.take()))
        if self.peek("kw", "true") or self.peek("kw", "false"):
            return ("lit", self.take() == "true")
        if self.peek("kw", "null"):
            raise UnsupportedFilter("input.filter: compare with NULL using IS NULL")
        if self.peek("kw", "date") or self.peek("kw", "timestamp"):
            kind = self.take()
            text = _unquote(self.take("str"))
            return ("lit", pa.scalar(text).cast(pa.date32() if kind == "date" else pa.timestamp("us")).as_py())
        if self.peek("bq"):
            return self._column(self.take()[1:-1])
        if self.peek("word"):
            word = self.take()
            if self.peek("op", "("):
                raise UnsupportedFilter(f"input.filter: function {word}() is not supported by the Arrow lane")
            return self._column(word)
        got = self.toks[self.i][1] if self.i < len(self.toks) else "end of filter"
        raise UnsupportedFilter(f"input.filter: unexpected {got!r}")

    def _column(self, name: str) -> tuple[str, str]:
        real = self.names.get(name.lower())
        if real is None:
            raise UnsupportedFilter(f"input.filter names '{name}', which is not an input column")
        self.columns.add(real)
        return ("col", real)


def _unquote(s: str) -> str:
    return s[1:-1].replace("''", "'").replace("\\'", "'")


def _expr(operand: tuple[str, Any]) -> ds.Expression:
    return ds.field(operand[1])


def _cast_to(operand: tuple[str, Any], t: pa.DataType | None) -> pa.Scalar:
    value = operand[1]
    s = pa.scalar(value)
    if t is None or s.type == t:
        return s
    try:
        return s.cast(t)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise UnsupportedFilter(f"input.filter: literal {value!r} cannot be compared with {t}: {e}") from None


def sql_to_arrow(text: str, schema: pa.Schema) -> tuple[ds.Expression, set[str]]:
    """(pyarrow expression, columns it reads) for a Spark SQL predicate over `schema`.

    Raises:
        UnsupportedFilter: the predicate uses SQL outside the supported subset.
    """
    p = _Parser(text, schema)
    return p.parse(), p.columns
