"""Both lanes choose exactly the rows Spark chooses for `input.filter` (a differential test).

Spark: `spark.read.parquet(root).where(f).select("id")`. The Arrow lane: the real
driver-side compile (batchscore.udfs.batches.arrow_filter) and planning (`plan_arrow_input`), then
each task's read (`read_task`), run here on the driver. A filter the Arrow lane
refuses must raise UnsupportedFilter; it is counted, never compared.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
import os
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.core import compat
from batchscore.core.errors import ConfigError
from batchscore.run.lane_choice import temporary_conf
from batchscore.udfs.batches.arrow_filter import UnsupportedFilter, apply_filter, arrow_filter
from batchscore.udfs.lanes.arrow import plan_arrow_input, read_task
from batchscore.udfs.lanes.scoring import arrow_schema_of

UTC = dt.timezone.utc
NAN, INF = float("nan"), float("inf")
DOUBLES = [NAN, INF, -INF, -0.0, 0.0, 100.0, 100.5, -1.0, 1e308, 5e-324, 2.0**53 + 1]
STRINGS = ["", "a", "A", "abc", "ab", "é", "\U0001F600", "\uffff", "a b", "100", "2026-03-29"]
LONGS = [-(2**63), 2**63 - 1, 0, 1, -1, 2**53 + 1, 100]
# instants near DST changes (Europe 2026-03-29 01:00Z, US 2026-03-08 07:00Z, US 2026-11-01 06:00Z) and midnights
INSTANTS = [dt.datetime(2026, 3, 29, 0, 59, 59, 999999, UTC), dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
            dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC), dt.datetime(2026, 11, 1, 6, 0, tzinfo=UTC),
            dt.datetime(2026, 3, 29, tzinfo=UTC), dt.datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
            dt.datetime(1969, 12, 31, 23, 59, 59, 999999, UTC)]
DATES = [dt.date(2026, 3, 29), dt.date(2026, 3, 28), dt.date(2026, 3, 8), dt.date(1969, 12, 31), dt.date(2026, 11, 1)]
DECIMALS = [decimal.Decimal(v) for v in ("1.25", "1.20", "-0.01", "0.00", "99999999.99", "-99999999.99", "100.00")]
P_VALUES = [0, 1, -3, None]  # partition p (int; None is __HIVE_DEFAULT_PARTITION__)
Q_VALUES = ["red", "blue"]  # partition q (string)

SCHEMA = pa.schema([
    ("id", pa.int64()), ("x", pa.float64()), ("f", pa.float32()), ("i", pa.int32()), ("l", pa.int64()),
    ("s", pa.string()), ("b", pa.bool_()), ("d", pa.date32()), ("ts", pa.timestamp("us", tz="UTC")),
    ("tn", pa.timestamp("us")), ("dec", pa.decimal128(10, 2)),
])


def _nullable(values: list[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), st.sampled_from(values))


ROW = st.fixed_dictionaries({
    "x": st.one_of(_nullable(DOUBLES), st.floats(-1e3, 1e3)),
    "f": st.one_of(_nullable([NAN, INF, -INF, -0.0, 0.0, 1.5, 100.0, -1.0]), st.floats(-1e3, 1e3, width=32)),
    "i": st.one_of(_nullable([-(2**31), 2**31 - 1, 0, 1, 5, 100]), st.integers(-200, 200)),
    "l": _nullable(LONGS),
    "s": st.one_of(_nullable(STRINGS), st.text(max_size=4)),
    "b": st.one_of(st.none(), st.booleans()),
    "d": _nullable(DATES),
    "ts": _nullable(INSTANTS),
    "tn": _nullable([t.replace(tzinfo=None) for t in INSTANTS]),
    "dec": _nullable(DECIMALS),
})

# --- predicates: SQL over the columns above, literals of matching and mixed types ---

LITERALS: dict[str, list[str]] = {
    "x": ["100", "100.5", "-0.0", "0", "double('NaN')", "double('inf')", "double('-inf')", "1e308", "-1",
          "9007199254740993", "cast(1.5 as float)"],
    "f": ["1.5", "cast(1.5 as float)", "float('NaN')", "0", "-0.0", "100", "double('NaN')", "100.25D"],
    "i": ["0", "5", "-2147483648", "2147483647", "1.5", "2.0D", "100L", "cast(5 as tinyint)", "'5'"],
    "l": ["9223372036854775807", "-9223372036854775808", "0", "100", "1.5D", "9007199254740993"],
    "s": ["''", "'a'", "'A'", "'é'", "'\U0001F600'", "'\uffff'", "'ab'", "'100'", "'a b'"],
    "d": ["DATE'2026-03-29'", "'2026-03-28'", "DATE'1969-12-31'", "TIMESTAMP'2026-03-29 00:00:00'"],
    "ts": ["TIMESTAMP'2026-03-29 01:00:00'", "'2026-03-29 00:59:59.999999'", "'2026-03-08 02:30:00'",
           "TIMESTAMP'2026-11-01 01:30:00'", "DATE'2026-03-29'", "TIMESTAMP_NTZ'2026-03-29 01:00:00'",
           "'1970-01-01 00:00:00'"],
    "tn": ["TIMESTAMP_NTZ'2026-03-29 01:00:00'", "'2026-03-08 07:00:00'", "DATE'2026-03-29'"],
    "dec": ["1.25", "1.2", "100", "cast(1.255 as decimal(20,3))", "-0.01", "1.5D", "99999999.99"],
    "b": ["true", "false"],
    "p": ["0", "1", "-3", "'1'", "1.5"],
    "q": ["'red'", "'blue'", "'r'"],
}
SAME_TYPE_PAIRS = [("x", "x"), ("x", "f"), ("i", "l"), ("i", "p"), ("d", "d"), ("s", "q"), ("ts", "ts"), ("dec", "dec")]
OPS = ["=", "<", "<=", ">", ">=", "<>", "<=>", "!="]


@st.composite
def _atom(draw: st.DrawFn) -> str:
    col = draw(st.sampled_from(sorted(LITERALS)))
    lit = st.sampled_from(LITERALS[col] + ["NULL"])
    kind = draw(st.sampled_from(["cmp", "cmp", "cmp", "rcmp", "cols", "in", "between", "null", "nullsafe", "bare"]))
    if kind == "cmp":
        return f"{col} {draw(st.sampled_from(OPS))} {draw(lit)}"
    if kind == "rcmp":
        return f"{draw(lit)} {draw(st.sampled_from(OPS))} {col}"
    if kind == "cols":
        a, b = draw(st.sampled_from(SAME_TYPE_PAIRS))
        return f"{a} {draw(st.sampled_from(OPS))} {b}"
    if kind == "in":
        items = draw(st.lists(lit, min_size=1, max_size=4 if draw(st.booleans()) else 14))
        return f"{col} {draw(st.sampled_from(['IN', 'NOT IN']))} ({', '.join(items)})"
    if kind == "between":
        return f"{col} {draw(st.sampled_from(['BETWEEN', 'NOT BETWEEN']))} {draw(lit)} AND {draw(lit)}"
    if kind == "null":
        return f"{col} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"
    if kind == "nullsafe":
        return f"{col} <=> {draw(lit)}"
    return draw(st.sampled_from(["b", "NOT b", "isnan(x)", "isnan(f)", "s LIKE 'a%'", "s LIKE '%b'", "s LIKE '%b%'"]))


PREDICATE = st.recursive(
    _atom(),
    lambda inner: st.one_of(
        st.builds(lambda a, b: f"({a}) AND ({b})", inner, inner),
        st.builds(lambda a, b: f"({a}) OR ({b})", inner, inner),
        st.builds(lambda a: f"NOT ({a})", inner),
    ),
    max_leaves=3,
)


def _write_dataset(root: str, rows: list[dict[str, Any]]) -> None:
    """Rows as hive-partitioned Parquet (p int with a null partition, q string), small row groups."""
    groups: dict[tuple[Any, str], list[dict[str, Any]]] = {}
    for k, r in enumerate(rows):
        groups.setdefault((P_VALUES[k % 4], Q_VALUES[(k // 4) % 2]), []).append({"id": k, **r})
    for (p, q), part in groups.items():
        d = os.path.join(root, f"p={'__HIVE_DEFAULT_PARTITION__' if p is None else p}", f"q={q}")
        os.makedirs(d, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), os.path.join(d, "part-0.parquet"), row_group_size=3)


def _spark_ids(df: Any) -> list[int] | None:
    """Spark's choice, or None when Spark fails evaluating the filter on these rows (ANSI errors)."""
    try:
        return sorted(r.id for r in df.select("id").collect())
    except Exception as e:
        if "SQLSTATE: 22" in str(e) or "SQLSTATE: 42" in str(e):
            return None
        raise


def _arrow_ids(root: str, df: Any) -> list[int]:
    schema = arrow_schema_of(df)
    plan = plan_arrow_input(root, schema, ["id"], row_filter=arrow_filter(df, schema), target_tasks=8)
    ids: list[int] = []
    for task in plan.tasks:
        for batch in read_task(task, plan.source, {}):
            ids += batch.column("id").to_pylist()
    return sorted(ids)


def _compare_lanes(spark: Any, root: str, predicates: list[str], counts: Counter[str]) -> None:
    base = spark.read.parquet(root)
    for f in predicates:
        try:
            df = apply_filter(base, f)
        except ConfigError:
            counts["spark_rejected"] += 1
            continue
        want = _spark_ids(df)
        if want is None:
            counts["spark_rejected"] += 1
            continue
        try:
            got = _arrow_ids(root, df)
        except UnsupportedFilter:
            counts["refused"] += 1
            continue
        counts["accepted"] += 1
        assert got == want, f"{f}: Arrow lane {got} != Spark {want}"


def _run(spark: Any, tmp_path_factory: pytest.TempPathFactory, examples: int, predicates: int) -> Counter[str]:
    counts: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=examples < 50, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(rows=st.lists(ROW, min_size=1, max_size=40),
           zone=st.sampled_from(["UTC", "America/New_York", "Europe/Berlin"]),
           filters=st.lists(PREDICATE, min_size=predicates, max_size=predicates))
    def check(rows: list[dict[str, Any]], zone: str, filters: list[str]) -> None:
        root = str(tmp_path_factory.mktemp("filter") / "data")
        _write_dataset(root, rows)
        with temporary_conf(spark, {"spark.sql.session.timeZone": zone}):
            _compare_lanes(spark, root, filters, counts)

    check()
    return counts


def _assert_meaningful(counts: Counter[str]) -> None:
    tried = counts["accepted"] + counts["refused"]
    assert tried > 0 and counts["accepted"] >= 0.6 * tried, counts


def test_lanes_choose_the_same_rows(spark, tmp_path_factory) -> None:
    _assert_meaningful(_run(spark, tmp_path_factory, examples=2, predicates=12))


@pytest.mark.slow
def test_lanes_choose_the_same_rows_many(spark, tmp_path_factory) -> None:
    # a few hundred generated datasets, a handful of predicates each (make test stays within its budget)
    _assert_meaningful(_run(spark, tmp_path_factory, examples=200, predicates=5))


# --- fixed cases: every special value in one dataset, each rule named ---

SPECIAL_ROWS = [
    {"x": v, "f": v if v is None or not math.isfinite(v) or abs(v) < 1e30 else None,  # fits a float
     "i": [0, 5, None, -(2**31), 2**31 - 1][k % 5], "l": LONGS[k % len(LONGS)],
     "s": ([*STRINGS, None])[k % (len(STRINGS) + 1)], "b": [True, False, None][k % 3],
     "d": DATES[k % len(DATES)], "ts": INSTANTS[k % len(INSTANTS)],
     "tn": INSTANTS[k % len(INSTANTS)].replace(tzinfo=None), "dec": DECIMALS[k % len(DECIMALS)]}
    for k, v in enumerate([*DOUBLES, None, *DOUBLES[::-1], None])
]
ACCEPTED = [
    "x > 100", "NOT x > 100", "x >= 100", "NOT (x < 100)", "x = double('NaN')", "x <> double('NaN')",
    "x > double('inf')", "x >= double('NaN')", "x < double('NaN')", "x = 0", "x = -0.0", "x <=> NULL",
    "x <=> double('NaN')", "x IN (100, double('NaN'))", "x NOT IN (0.0, 100)", "x IN (1, NULL)",
    "x NOT IN (1, NULL)", "x BETWEEN -1 AND double('NaN')", "x IS NULL", "isnan(x)", "NOT isnan(x)",
    "f > 1", "f = float('NaN')", "f > x", "x = f", "f IN (1.5, float('NaN'))",
    "i > 1.5", "i IN (0, 5, NULL)", "i NOT IN (0, 5, NULL)", "i IN (0,1,2,3,4,5,6,7,8,9,10,11,12)",
    "i NOT IN (0,1,2,3,4,5,6,7,8,9,10,11,12,NULL)", "l = 9223372036854775807", "l < -9223372036854775807",
    "l > i", "s > 'a'", "s < '\U0001F600'", "s >= '\uffff'", "s = ''", "s IN ('a', 'é', '\U0001F600')",
    "s LIKE 'a%'", "s LIKE '%b'", "s LIKE '%b%'", "b", "NOT b", "b = false", "b <=> NULL", "NOT (b AND x > 1)",
    "d >= '2026-03-29'", "d BETWEEN DATE'2026-03-08' AND '2026-03-29'", "d < DATE'1970-01-01'",
    "ts >= TIMESTAMP'2026-03-29 01:00:00'", "ts < '2026-03-08 02:30:00'", "ts > TIMESTAMP_NTZ'2026-03-29 01:00:00'", "tn = TIMESTAMP_NTZ'2026-03-29 01:00:00'",
    "dec > 1.2", "dec = 1.25", "dec < cast(1.255 as decimal(20,3))", "dec IN (1.25, -0.01, NULL)",
    "p = 1", "p IS NULL", "p <> 1", "NOT p IN (0, 1)", "q = 'red' AND x > 0", "p > 0 OR x > 100", "1 = 0", "1 = 1",
]
REFUSED = ["abs(x) > 1", "x + 1 > 2", "upper(s) = 'A'", "dec > 1.5D", "s > 5", "ts > tn", "l > x",
           "s LIKE 'a_c'", "length(s) = 1", "x > rand()"]


@pytest.fixture(scope="module")
def special_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("special") / "data")
    _write_dataset(root, SPECIAL_ROWS)
    return root


@pytest.mark.parametrize("zone", ["UTC", pytest.param("America/New_York", marks=pytest.mark.slow)])
def test_special_values_filter_like_spark(spark, special_root, zone) -> None:
    counts: Counter[str] = Counter()
    with temporary_conf(spark, {"spark.sql.session.timeZone": zone}):
        _compare_lanes(spark, special_root, ACCEPTED, counts)
    assert counts == Counter(accepted=len(ACCEPTED)), counts


def test_filters_outside_the_allow_list_are_refused(spark, special_root) -> None:
    base = spark.read.parquet(special_root)
    for f in REFUSED:
        df = apply_filter(base, f)
        with pytest.raises(UnsupportedFilter):
            arrow_filter(df, arrow_schema_of(df))


NOT_ANSI = pytest.mark.skipif(not compat.spark_rejects_bad_casts(), reason="Spark 3.5 (lts) is not in ANSI mode by "
                              "default: a literal that cannot be cast reads as null, the filter is not rejected")


@pytest.mark.parametrize("bad", [pytest.param("x > 'abc'", marks=NOT_ANSI), "no_such_col > 1", "x >",
                                 pytest.param("d > 'not a date'", marks=NOT_ANSI)])
def test_filters_spark_rejects_are_config_errors(spark, special_root, bad) -> None:
    with pytest.raises(ConfigError, match=r"input.filter"):
        apply_filter(spark.read.parquet(special_root), bad)


def test_compiled_filter_is_shipped_not_reparsed(spark, special_root) -> None:
    import pickle

    df = apply_filter(spark.read.parquet(special_root), "x > 100")
    schema = arrow_schema_of(df)
    plan = plan_arrow_input(special_root, schema, ["id"], row_filter=arrow_filter(df, schema), target_tasks=2)
    source = pickle.loads(pickle.dumps(plan.source))  # what a task receives
    ids = sorted(i for t in plan.tasks for b in read_task(t, source, {}) for i in b.column("id").to_pylist())
    assert ids == sorted(r.id for r in df.select("id").collect())
    assert any(SPECIAL_ROWS[i]["x"] is not None and math.isnan(SPECIAL_ROWS[i]["x"]) for i in ids)  # NaN kept


@pytest.mark.parametrize(("f", "want"), [("x = 0", [0, 1, 2]), ("x > 100", [4, 6]), ("x >= double('NaN')", [4])])
def test_float_predicates_do_not_skip_row_groups_by_statistics(spark, tmp_path, f, want) -> None:
    # row groups of 3: [-0.0, -0.0, -0.0] has min = max = -0.0, [5.0, NaN, NULL] min = max = 5.0 (NaN
    # is left out): Spark's pushdown would skip the first for x = 0 and the second for the others,
    # pyarrow's statistics the second
    root = str(tmp_path / "data")
    os.makedirs(root)
    pq.write_table(pa.table({"id": list(range(8)), "x": [-0.0, -0.0, -0.0, 5.0, NAN, None, INF, 6.0]}),
                   os.path.join(root, "part-0.parquet"), row_group_size=3)
    df = apply_filter(spark.read.parquet(root), f)
    assert sorted(r.id for r in df.select("id").collect()) == want
    assert _arrow_ids(root, df) == want
