"""Bad input never scored silently: schema and model errors before any scoring task, bad rows
quarantined with their reason, corrupt and empty input files.

Runs go through `run_scoring` with the shared session, on the reliability model and tables
of tests/support/reliability.py.
"""
from __future__ import annotations

import collections
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from batchscore.core.errors import BadRowsError, InputError, ModelError, SchemaError
from batchscore.run.steps import run_scoring
from batchscore.udfs.model.signature import model_fingerprint
from tests import support
from tests.support import reliability as rs
from tests.support.reliability import (
    assert_scored_like_tf,
    config,
    corrupt_files,
    quarantine_rows,
    read_manifest,
    read_spark,
)

OUTPUTS = ["parts", "score"]


def model_unpacked(model: str) -> bool:
    """Whether a scoring task ran with this model: broadcast models are unpacked by the first task."""
    return os.path.exists(os.path.join(tempfile.gettempdir(), "batchscore-models", model_fingerprint(model)))


# --- schema and model errors: exit 2 material, raised before any scoring task ---


def _schema_case(kind: str, table: pa.Table) -> pa.Table:
    if kind == "missing_column":
        return table.drop_columns(["b"])
    if kind == "string_for_float":
        return table.set_column(table.schema.get_field_index("a"), "a", pc.cast(table.column("a"), pa.string()))
    if kind == "wrong_nesting_depth":  # [1][16] where the model wants [4][4][1]
        pix, t = [[p] for p in table.column("pix").to_pylist()], pa.list_(pa.list_(pa.float32()))
    else:
        pix, t = [p[:15] for p in table.column("pix").to_pylist()], pa.list_(pa.float32())
    return table.set_column(table.schema.get_field_index("pix"), "pix", pa.array(pix, type=t))


@pytest.mark.parametrize(("kind", "message"), [
    ("missing_column", r"column 'b' \(for model input 'x'\) not found"),
    ("string_for_float", r"column 'a' is string.*'x' wants float32"),
    ("every_array_wrong_length", r"column 'pix' holds arrays of length 15 .* wants 16 values"),
    ("wrong_nesting_depth", r"column 'pix' is .*nested 2 deep.*'img' wants shape \[batch, 4, 4, 1\]"),
], ids=["missing_column", "string_for_float", "every_array_wrong_length", "wrong_nesting_depth"])
@pytest.mark.parametrize("lane", ["arrow", "dataframe"])  # the lanes sample the first rows differently
def test_schema_errors_fail_before_any_scoring_task(spark, rel_model, tmp_path, kind, message, lane):
    model = support.fresh_copy(rel_model, str(tmp_path))  # a fingerprint no task has unpacked yet
    in_path = rs.write_files(_schema_case(kind, rs.rel_table(30)), str(tmp_path / "in"))
    out = str(tmp_path / "out")
    with pytest.raises(SchemaError, match=message):
        run_scoring(spark, config(in_path, model, out, f"input.lane={lane}"))
    assert not model_unpacked(model), "a scoring task ran before the schema error"
    assert not os.path.exists(out) and not os.path.exists(out + "_quarantine")
    assert rs.hidden_siblings(out) == []


@pytest.mark.parametrize(("case", "message"), [
    ("not_a_saved_model", r"is not a TensorFlow SavedModel \(no saved_model.pb\)"),
    ("missing_signature", r"model.signature 'nope' not found .*it has: complex, ragged, serving_default"),
    ("unknown_inner_dimension", r"signature input 'ragged_in' has shape \[None, None\] with an unknown inner"),
    ("complex_input", r"signature input 'complex_in' has dtype complex64, which cannot be fed"),
], ids=["not_a_saved_model", "missing_signature", "unknown_inner_dimension", "complex_input"])
def test_bad_models_fail_before_reading_input(spark, odd_model, tmp_path, case, message):
    in_path = rs.write_files(rs.rel_table(10), str(tmp_path / "in"), files=1)
    model, sig = odd_model, "serving_default"
    if case == "not_a_saved_model":
        model = str(tmp_path / "model")
        os.makedirs(model)
        (tmp_path / "model" / "weights.bin").write_bytes(b"\0" * 64)
    else:
        sig = {"missing_signature": "nope", "unknown_inner_dimension": "ragged", "complex_input": "complex"}[case]
    out = str(tmp_path / "out")
    with pytest.raises(ModelError, match=message):
        run_scoring(spark, config(in_path, model, out, f"model.signature={sig}", columns=[]))
    assert not os.path.exists(out) and rs.hidden_siblings(out) == []


# --- bad rows: quarantined with the right reason, never scored silently ---

# row -> (column, bad value, reason, column named in the quarantine); pix is nested [4][4][1]
def _bad_cells(table: pa.Table) -> dict[int, tuple[str, object, str, str]]:
    pix = table.column("pix").to_pylist()

    def edit(i: int, f) -> list:
        p = [[list(c) for c in r] for r in pix[i]]
        f(p)
        return p

    return {
        1: ("a", None, "null_feature", "a"),
        2: ("a", float("-inf"), "non_finite", "a"),
        3: ("b", float("nan"), "non_finite", "b"),
        33: ("c", float("inf"), "non_finite", "c"),
        5: ("pix", None, "null_feature", "pix"),
        36: ("pix", pix[36][:3], "bad_shape", "pix"),  # 3 rows of the image, not 4
        7: ("pix", edit(7, lambda p: p[2].pop()), "bad_shape", "pix"),  # a row of 3 pixels
        38: ("pix", edit(38, lambda p: p[1].__setitem__(2, [0.5, 0.5])), "bad_shape", "pix"),  # 2 channels
        9: ("pix", edit(9, lambda p: p.__setitem__(1, None)), "null_feature", "pix"),  # a null nested array
        40: ("pix", edit(40, lambda p: p[3].__setitem__(0, None)), "null_feature", "pix"),
        11: ("pix", edit(11, lambda p: p[0][0].__setitem__(0, None)), "null_feature", "pix"),  # a null value
        42: ("pix", edit(42, lambda p: p[3][3].__setitem__(0, float("nan"))), "non_finite", "pix"),
        13: ("code", "abc", "model_error", "_"),  # tf.strings.to_number raises on it
        44: ("code", None, "null_feature", "code"),
        15: ("a", 5000.0, "bad_prediction", "_"),  # the model returns NaN for it
    }


def _with_bad_cells(table: pa.Table, bad: dict[int, tuple[str, object, str, str]]) -> pa.Table:
    for row, (col, value, _, _) in bad.items():
        table = rs.set_cells(table, col, {row: value})
    return table


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_bad_rows_are_quarantined_with_their_reason_and_good_rows_scored_like_tf(spark, rel_model, tmp_path, lane):
    table = rs.rel_table(60, nested=True)
    bad = _bad_cells(table)
    table = _with_bad_cells(table, bad)
    in_path = rs.write_files(table, str(tmp_path / "in"), files=2)
    out = str(tmp_path / "out")
    model = support.fresh_copy(rel_model, str(tmp_path))
    assert not model_unpacked(model)
    manifest = run_scoring(spark, config(in_path, model, out, f"input.lane={lane}", "model.batch_size=8",
                                         "output.keep_columns=[id, code]"))
    assert manifest.lane == lane
    assert model_unpacked(model), "the marker the schema-error tests rely on does not show scoring tasks"

    good = np.array(sorted(set(range(60)) - set(bad)))
    scored = read_spark(spark, out)
    assert scored.column_names == ["id", "code", *OUTPUTS]
    assert_scored_like_tf(rel_model, scored, table.take(good))

    # The quarantine sits at the default path: keep columns, reason and column, no predictions.
    assert manifest.output.quarantine_path == "file:" + out + "_quarantine"
    q = read_spark(spark, out + "_quarantine")
    assert {"id", "code", "reason", "column"} <= set(q.column_names)
    assert set(q.column_names) - {"id", "code", "reason", "column"} <= set(OUTPUTS)
    for name in set(q.column_names) & set(OUTPUTS):
        assert q.column(name).null_count == q.num_rows, f"a quarantined row has a prediction in {name}"
    assert quarantine_rows(q) == {i: (reason, col) for i, (_, _, reason, col) in bad.items()}
    assert q.column("code").to_pylist() == table.take(q.column("id")).column("code").to_pylist()

    # Every input row exactly once, in the output or the quarantine, never both.
    ids_out, ids_q = scored.column("id").to_pylist(), q.column("id").to_pylist()
    assert sorted(ids_out + ids_q) == list(range(60))

    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (60, len(good), len(bad))
    assert manifest.quarantine_reasons == dict(collections.Counter(r for _, _, r, _ in bad.values()))
    assert read_manifest(out)["quarantine_reasons"] == manifest.quarantine_reasons


def test_on_bad_rows_fail_names_the_first_bad_key_and_publishes_nothing(spark, rel_model, tmp_path):
    table = rs.set_cells(rs.rel_table(60), "c", {41: float("nan")})
    in_path = rs.write_files(table, str(tmp_path / "in"), files=2)
    out = str(tmp_path / "out")
    with pytest.raises(BadRowsError, match=r"row with id=41 is bad: non_finite in column 'c'"):
        run_scoring(spark, config(in_path, rel_model, out, "quarantine.on_bad_rows=fail", "input.lane=dataframe"))
    assert not os.path.exists(out) and not os.path.exists(out + "_quarantine")
    assert rs.hidden_siblings(out) == []


# --- corrupt and empty input ---


@pytest.mark.parametrize(("corrupt", "lane", "columns"), [
    ("truncated", "arrow", rs.NO_IMG),  # found by the scoring task reading the file
    ("truncated", "dataframe", rs.REL_COLUMNS),  # found while sampling the array column
    ("not_parquet", "arrow", rs.REL_COLUMNS),
    ("not_parquet", "dataframe", rs.NO_IMG),  # found by Spark's reader in the scoring job
    ("truncated_listed_first", "auto", rs.NO_IMG),  # may be the file Spark infers the schema from
], ids=["truncated-arrow", "truncated-dataframe", "not_parquet-arrow", "not_parquet-dataframe", "first-auto"])
def test_corrupt_input_file_fails_naming_it(spark, rel_model, tmp_path, corrupt, lane, columns):
    in_path = rs.write_files(rs.rel_table(90), str(tmp_path / "in"), files=3)
    truncated, garbage = corrupt_files(in_path, rs.rel_table(10))
    os.remove(garbage if corrupt.startswith("truncated") else truncated)
    if corrupt == "truncated_listed_first":
        os.rename(truncated, truncated := os.path.join(in_path, "a-truncated.parquet"))
    name = os.path.basename(truncated if corrupt.startswith("truncated") else garbage)
    out = str(tmp_path / "out")
    with pytest.raises(InputError, match=rf"cannot read input file \S*{name}.*input.ignore_corrupt_files"):
        run_scoring(spark, config(in_path, rel_model, out, f"input.lane={lane}", columns=columns))
    assert not os.path.exists(out) and rs.hidden_siblings(out) == []


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_ignore_corrupt_files_skips_and_counts_them(spark, rel_model, tmp_path, lane):
    table = rs.rel_table(90)
    in_path = rs.write_files(table, str(tmp_path / "in"), files=3)
    corrupt_files(in_path, rs.rel_table(10, start_id=1000))
    out = str(tmp_path / "out")
    manifest = run_scoring(spark, config(in_path, rel_model, out, f"input.lane={lane}", "input.ignore_corrupt_files=true"))
    assert manifest.corrupt_files_skipped == 2
    assert (manifest.rows_in, manifest.rows_scored, manifest.lane) == (90, 90, lane)
    assert_scored_like_tf(rel_model, read_spark(spark, out), table)


@pytest.mark.parametrize(("case", "lane"), [("zero_row_files", "arrow"), ("filter_matches_nothing", "dataframe")])
def test_empty_input_gives_an_empty_output_with_the_schema_and_a_manifest(spark, rel_model, tmp_path, case, lane):
    table = rs.rel_table(30)
    extra = [f"input.lane={lane}"]
    if case == "zero_row_files":
        in_path = rs.write_files(table.slice(0, 0), str(tmp_path / "in"), files=2)
    else:
        in_path = rs.write_files(table, str(tmp_path / "in"), files=2)
        extra.append("input.filter=id < 0")
    out = str(tmp_path / "out")
    manifest = run_scoring(spark, config(in_path, rel_model, out, *extra))

    df = spark.read.parquet(out)
    assert df.count() == 0
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("id", "bigint"), ("parts", "array<float>"), ("score", "float")]
    assert read_manifest(out)["run_id"] == manifest.run_id
    assert (manifest.status, manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (
        "succeeded", 0, 0, 0)
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    assert not os.path.exists(out + "_quarantine")
