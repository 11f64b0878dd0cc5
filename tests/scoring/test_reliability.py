"""Nothing lost, nothing half-written (issue 3): schema errors, quarantine, corrupt and empty
input, atomic publish, partition overwrite, reruns, worker crashes, speculation, secrets.

In-process runs go through `run_scoring` with the shared session; the fault-injection
runs start the job in its own Spark application with another master, through
`python -m tests.support.fault_launcher`, which wraps the engine's scoring with the fault.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from batchscore.core.compat import to_arrow
from batchscore.core.errors import BadRowsError, ConfigError, InputError, ModelError, SchemaError
from batchscore.output.manifest import RunManifest
from batchscore.run.steps import run_scoring
from batchscore.udfs.model.signature import model_fingerprint
from tests import support
from tests.support import reliability as rs

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = 1e-5
SECRET = "SHOULD_NOT_LEAK_7f3a"
OUTPUTS = ["parts", "score"]


# --- fixtures and helpers ---


def config(input_path: str, model_path: str, output_path: str, *overrides: str, columns=rs.REL_COLUMNS) -> dict:
    return support.job_spec(input_path, model_path, output_path, *columns, "output.keep_columns=[id]", *overrides)


def read_spark(spark, path: str) -> pa.Table:
    """A directory read back by Spark (partition columns included), sorted by id."""
    return to_arrow(spark.read.parquet(path)).sort_by("id")


def read_manifest(output_path: str) -> dict:
    with open(os.path.join(output_path, "_manifest.json")) as fh:
        return json.load(fh)


def assert_scored_like_tf(model: str, out: pa.Table, table: pa.Table) -> None:
    """`out` (sorted by id) holds exactly the rows of `table` (sorted by id), scored like bare TF."""
    np.testing.assert_array_equal(out.column("id").to_numpy(), table.column("id").to_numpy())
    if table.num_rows == 0:
        return
    expected = support.tf_predict(model, rs.rel_inputs(table))
    assert support.max_abs_diff(out.column("score").to_numpy(), expected["score"].reshape(-1)) <= TOL
    assert support.max_abs_diff(out.column("parts").to_pylist(), expected["parts"]) <= TOL


def model_unpacked(model: str) -> bool:
    """Whether a scoring task ran with this model: broadcast models are unpacked by the first task."""
    return os.path.exists(os.path.join(tempfile.gettempdir(), "batchscore-models", model_fingerprint(model)))


def quarantine_rows(q: pa.Table) -> dict[int, tuple[str, str]]:
    return {i: (r, c) for i, r, c in zip(q.column("id").to_pylist(), q.column("reason").to_pylist(),
                                           q.column("column").to_pylist(), strict=True)}


def corrupt_files(path: str, small: pa.Table) -> tuple[str, str]:
    """Add a truncated Parquet file and a file that is not Parquet at all to `path`."""
    buf = pa.BufferOutputStream()
    pq.write_table(small, buf)
    data = buf.getvalue().to_pybytes()
    truncated = os.path.join(path, "part-00008-truncated.parquet")
    garbage = os.path.join(path, "part-00009-csv.parquet")
    with open(truncated, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with open(garbage, "wb") as fh:
        fh.write(b"id,a,b,c\n1,2.0,3.0,4.0\n" * 20)
    return truncated, garbage


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


# --- nothing half-written ---


@pytest.fixture(scope="module")
def published(spark, rel_model, tmp_path_factory):
    """A good run's output and quarantine (two bad rows), to be copied and then failed over."""
    base = tmp_path_factory.mktemp("published")
    table = rs.set_cells(rs.set_cells(rs.rel_table(60), "b", {3: None}), "code", {50: "x"})
    in_path = rs.write_files(table, str(base / "in"), files=2)
    out = str(base / "out")
    manifest = run_scoring(spark, config(in_path, rel_model, out))
    assert manifest.rows_quarantined == 2
    return out


def _failing_input(case: str, path: str) -> tuple[str, list[str], type, str]:
    """(input path, overrides, exception type, message) of a run that must fail."""
    table = rs.rel_table(60, seed=9)
    if case == "bad_rows_with_fail":
        rs.write_files(rs.set_cells(table, "a", {17: float("nan")}), path, files=2)
        return path, ["quarantine.on_bad_rows=fail"], BadRowsError, "id=17"
    if case == "model_fails_every_row":
        rs.write_files(rs.set_cells(table, "code", dict.fromkeys(range(60), "zz")), path, files=2)
        return path, ["model.batch_size=16"], Exception, "zz"
    if case == "corrupt_input":
        rs.write_files(table, path, files=3)
        corrupt_files(path, rs.rel_table(5))
        return path, [], InputError, "cannot read input file"
    rs.write_files(table.drop_columns(["code"]), path, files=2)  # missing_column
    return path, [], SchemaError, "column 'code'"


@pytest.mark.parametrize("case", ["bad_rows_with_fail", "model_fails_every_row", "corrupt_input", "missing_column"])
def test_failed_overwrite_leaves_the_previous_output_byte_identical(spark, rel_model, published, tmp_path, case):
    out, q = str(tmp_path / "run" / "out"), str(tmp_path / "run" / "out_quarantine")
    shutil.copytree(published, out)
    shutil.copytree(published + "_quarantine", q)
    before, before_q = rs.tree_hashes(out), rs.tree_hashes(q)
    assert "_manifest.json" in before and "_SUCCESS" in before and before_q

    in_path, overrides, error, message = _failing_input(case, str(tmp_path / "in"))
    with pytest.raises(error, match=message):
        run_scoring(spark, config(in_path, rel_model, out, "output.mode=overwrite", *overrides))
    assert rs.tree_hashes(out) == before
    assert rs.tree_hashes(q) == before_q
    assert rs.hidden_siblings(out) == [], "staging or swap directories left behind"


def test_output_mode_error_refuses_an_existing_output(spark, rel_model, published, tmp_path):
    in_path = rs.write_files(rs.rel_table(10), str(tmp_path / "in"), files=1)
    before = rs.tree_hashes(published)
    with pytest.raises(ConfigError, match=r"exists and output.mode is 'error'"):
        run_scoring(spark, config(in_path, rel_model, published))
    assert rs.tree_hashes(published) == before


@pytest.mark.parametrize(("output", "quarantine", "overlaps"), [
    ("in/scores", None, "input.path"),
    ("in", None, "input.path"),
    ("model/scores", None, "model.path"),
    ("out", "in/bad_rows", "input.path"),
    ("out", "out/bad_rows", "output.path"),
])
def test_output_overlapping_input_or_model_is_refused(spark, rel_model, tmp_path, output, quarantine, overlaps):
    in_path = rs.write_files(rs.rel_table(10), str(tmp_path / "in"), files=1)
    model = str(tmp_path / "model")
    shutil.copytree(rel_model, model)
    before = rs.tree_hashes(str(tmp_path))
    extra = [f"quarantine.path={tmp_path / quarantine}"] if quarantine else []
    with pytest.raises(ConfigError, match=rf"overlaps {overlaps}"):
        run_scoring(spark, config(in_path, model, str(tmp_path / output), *extra))
    assert rs.tree_hashes(str(tmp_path)) == before


# --- partition overwrite and reruns ---

DATES = ["2026-01-31", "2026-02-28", "2026-03-31"]


def _write_dated(table: pa.Table, path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    ds.write_dataset(table, path, format="parquet", partitioning=["as_of_date"], partitioning_flavor="hive")


def _partition_hashes(root: str, prefix: str = "") -> dict[str, dict[str, str]]:
    """File hashes per `as_of_date=...` directory (under `prefix`), data files only."""
    out: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for rel, h in rs.tree_hashes(root).items():
        parts = rel.split("/")
        if rel.startswith(prefix) and not parts[-1].startswith((".", "_")):
            date = next(p for p in parts if p.startswith("as_of_date="))
            out[date][rel] = h
    return dict(out)


def test_overwrite_partitions_replaces_only_the_rescored_partition(spark, rel_model, tmp_path):
    table = rs.rel_table(60, dates=DATES)  # row i is in DATES[i % 3]
    table = rs.set_cells(rs.set_cells(table, "code", {0: "zz"}), "b", {1: float("nan")})  # Jan, Feb bad rows
    in_path, out = str(tmp_path / "in"), str(tmp_path / "out")
    q = out + "_quarantine"
    _write_dated(table, in_path)
    run_scoring(spark, config(in_path, rel_model, out, "output.partition_by=[as_of_date]"))
    hashes, q_hashes = _partition_hashes(out), _partition_hashes(q)
    assert sorted(hashes) == [f"as_of_date={d}" for d in DATES]
    assert sorted(q_hashes) == ["as_of_date=2026-01-31", "as_of_date=2026-02-28"]

    # February is restated: its bad row fixed, every feature changed. Rescore February only.
    feb = pc.equal(table.column("as_of_date"), "2026-02-28")
    c = pc.if_else(feb, pc.add(table.column("c"), 1.5), table.column("c"))
    restated = rs.set_cells(table.set_column(table.schema.get_field_index("c"), "c", c), "b", {1: 0.25})
    _write_dated(restated, in_path)
    manifest = run_scoring(spark, config(in_path, rel_model, out, "output.partition_by=[as_of_date]",
                                         "output.mode=overwrite_partitions", "input.filter=as_of_date = '2026-02-28'"))
    assert (manifest.rows_in, manifest.rows_quarantined) == (20, 0)

    after, q_after = _partition_hashes(out), _partition_hashes(q)
    for d in ("as_of_date=2026-01-31", "as_of_date=2026-03-31"):
        assert after[d] == hashes[d], f"{d} was touched"
    assert q_after == {"as_of_date=2026-01-31": q_hashes["as_of_date=2026-01-31"]}, "stale February quarantine"
    assert set(after["as_of_date=2026-02-28"]).isdisjoint(hashes["as_of_date=2026-02-28"])

    scored, bad = read_spark(spark, out), read_spark(spark, q)
    assert bad.column("id").to_pylist() == [0]
    assert sorted([*scored.column("id").to_pylist(), 0]) == list(range(60)), "a row is missing or twice"
    feb_ids = np.arange(1, 60, 3)
    feb_out = scored.filter(pc.is_in(scored.column("id"), pa.array(feb_ids)))
    assert_scored_like_tf(rel_model, feb_out, restated.take(feb_ids))

    # Rescoring a date with no rows at all leaves every partition as it was.
    before = rs.tree_hashes(out)
    manifest = run_scoring(spark, config(in_path, rel_model, out, "output.partition_by=[as_of_date]",
                                         "output.mode=overwrite_partitions", "input.filter=as_of_date = '2027-01-31'"))
    assert manifest.rows_in == 0
    assert _partition_hashes(out) == after
    assert {k: v for k, v in rs.tree_hashes(out).items() if "_manifest" not in k and "_SUCCESS" not in k} == {
        k: v for k, v in before.items() if "_manifest" not in k and "_SUCCESS" not in k}
    assert _partition_hashes(q) == q_after


def test_rerun_gives_identical_rows_and_values(spark, rel_model, tmp_path):
    table = rs.set_cells(rs.set_cells(rs.rel_table(120, seed=3), "a", {5: None}), "code", {77: "?"})
    in_path = rs.write_files(table, str(tmp_path / "in"), files=3)
    out = str(tmp_path / "out")
    first = run_scoring(spark, config(in_path, rel_model, out))
    first_out, first_q = read_spark(spark, out), read_spark(spark, out + "_quarantine")
    second = run_scoring(spark, config(in_path, rel_model, out, "output.mode=overwrite"))
    assert read_spark(spark, out).equals(first_out)  # exact: same rows, same float bits
    assert read_spark(spark, out + "_quarantine").equals(first_q)
    assert first_out.num_rows == 118 and quarantine_rows(first_q) == {5: ("null_feature", "a"), 77: ("model_error", "_")}
    assert second.run_id != first.run_id
    assert second.model.fingerprint == first.model.fingerprint == model_fingerprint(rel_model)
    assert read_manifest(out)["run_id"] == second.run_id


# --- faults survived: worker crashes and speculation, in their own Spark applications ---


def run_job(tmp_path, overrides: list[str], fault: str | None, *, timeout: int = 600) -> subprocess.CompletedProcess:
    """The scoring job in a subprocess (`python -m tests.support.fault_launcher`), with `fault` injected, or
    plain `python -m jobs.score` without one."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("spark:\n  spark.ui.enabled: false\n  spark.eventLog.compress: false\n"
                   "  spark.eventLog.rolling.enabled: false\n")
    launcher = ["tests.support.fault_launcher", fault] if fault else ["jobs.score"]
    cmd = [sys.executable, "-m", *launcher, "--config", str(cfg), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "PYTHONPATH": PROJECT_ROOT, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def task_events(event_dir: str, event: str = "SparkListenerTaskEnd") -> list[dict]:
    """Task end (or start) events of the run's Spark event log: stage, partition index, attempt,
    speculative, host, result."""
    tasks = []
    for path in event_files(event_dir):
        for line in read_event_file(path).splitlines():
            e = json.loads(line)
            if e["Event"] == event:
                info = e["Task Info"]
                tasks.append({"stage": e["Stage ID"], "index": info["Index"], "attempt": info["Attempt"],
                              "speculative": info["Speculative"], "host": info["Host"],
                              "reason": e.get("Task End Reason", {}).get("Reason"), "failed": info["Failed"]})
    assert tasks, f"no task events under {event_dir}"
    return tasks


def event_files(event_dir: str) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(event_dir) for n in names
            if n.startswith(("app-", "local-", "events_", "eventlog")) and not n.endswith(".crc")]


def read_event_file(path: str) -> str:
    """One Spark event log file as text (rolled and zstd-compressed logs too)."""
    if path.endswith(".zstd"):
        with pa.OSFile(path) as raw, pa.CompressedInputStream(raw, "zstd") as f:
            return f.read().decode()
    with open(path) as fh:
        return fh.read()


def fault_input(tmp_path) -> tuple[str, pa.Table]:
    """400 rows in 4 files of 2 row groups: several Arrow batches per task, one task per file."""
    table = rs.rel_table(400, seed=21)
    return rs.write_files(table, str(tmp_path / "in"), files=4, row_group_size=50), table


def job_overrides(in_path: str, model: str, out: str, event_dir: str, master: str) -> list[str]:
    os.makedirs(event_dir, exist_ok=True)
    return [f"input.path={in_path}", f"model.path={model}", f"output.path={out}", *rs.REL_COLUMNS,
            "output.keep_columns=[id]", "model.batch_size=32", f"spark.spark.master={master}",
            "spark.spark.eventLog.enabled=true", f"spark.spark.eventLog.dir=file://{event_dir}",
            f"spark.spark.hadoop.fs.s3a.secret.key={SECRET}", f"spark.spark.hadoop.fs.s3a.access.key=AK{SECRET}"]


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])  # the fault wraps the scoring both lanes' tasks run
def test_worker_killed_mid_task_with_retries_every_row_exactly_once(rel_model, tmp_path, lane):
    in_path, table = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    proc = run_job(tmp_path, [*job_overrides(in_path, rel_model, out, events, "local[2,4]"), f"input.lane={lane}"],
                   "exit:0")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The fault fired: partition 0 of the scoring stage failed once, then succeeded on attempt 1.
    tasks = task_events(events)
    crashed = [t for t in tasks if t["failed"] and t["index"] == 0 and t["attempt"] == 0]
    assert crashed, f"the injected worker crash did not happen: {tasks}"
    stage = crashed[0]["stage"]
    assert any(t["stage"] == stage and t["index"] == 0 and t["attempt"] >= 1 and t["reason"] == "Success" for t in tasks)

    scored = support.read_output(out)
    assert_scored_like_tf(rel_model, scored, table)  # every id once, no more, no fewer
    manifest = RunManifest.from_dict(read_manifest(out))
    assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined, manifest.lane) == (400, 400, 0, lane)

    # Secrets from the Spark conf appear nowhere: manifest, stdout, stderr, Spark's event log.
    with open(os.path.join(out, "_manifest.json")) as fh:
        assert SECRET not in fh.read()
    assert SECRET not in proc.stdout + proc.stderr
    for path in event_files(events):
        assert SECRET not in read_event_file(path)


def test_worker_killed_without_retries_fails_clearly_and_keeps_the_previous_output(rel_model, published, tmp_path):
    in_path, _ = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    shutil.copytree(published, out)  # yesterday's good output
    shutil.copytree(published + "_quarantine", out + "_quarantine")
    before, before_q = rs.tree_hashes(out), rs.tree_hashes(out + "_quarantine")

    proc = run_job(tmp_path, [*job_overrides(in_path, rel_model, out, events, "local[2]"), "output.mode=overwrite"],
                   "exit:0")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Job aborted due to stage failure" in errors[0] and "Python worker exited unexpectedly" in errors[0], errors[0]
    assert SECRET not in proc.stdout + proc.stderr
    assert any(t["failed"] and t["index"] == 0 for t in task_events(events)), "the injected crash did not happen"

    assert rs.tree_hashes(out) == before
    assert rs.tree_hashes(out + "_quarantine") == before_q
    assert rs.hidden_siblings(out) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_host_cluster(tmp_path):
    """A standalone master and two 1-core workers on different loopback addresses.

    Spark never launches a speculative copy on a host where the task already ran,
    and every executor of `local[...]` or `local-cluster[...]` is on one host, so
    speculation needs executors on two "hosts": 127.0.0.1 and 127.0.0.2.
    """
    import pyspark

    spark_home = os.path.dirname(pyspark.__file__)
    spark_class = os.path.join(spark_home, "bin", "spark-class")
    port = _free_port()
    env = {**os.environ, "SPARK_HOME": spark_home, "SPARK_NO_DAEMONIZE": "1", "PYTHONPATH": PROJECT_ROOT}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    logs = tmp_path / "cluster"
    logs.mkdir()
    procs, files = [], []

    def start(name: str, args: list[str], host: str) -> None:
        files.append(open(logs / f"{name}.log", "w"))
        procs.append(subprocess.Popen([spark_class, *args], env={**env, "SPARK_LOCAL_IP": host},
                                      stdout=files[-1], stderr=subprocess.STDOUT))

    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(_free_port())], "127.0.0.1")
        for i, host in enumerate(["127.0.0.1", "127.0.0.2"]):
            (logs / f"work{i}").mkdir()
            start(f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", host, "--cores", "1",
                                 "--memory", "1g", "--webui-port", str(_free_port()),
                                 "--work-dir", str(logs / f"work{i}"), f"spark://127.0.0.1:{port}"], host)
        deadline = time.monotonic() + 240
        while not all("Successfully registered with master" in (logs / f"worker{i}.log").read_text() for i in range(2)):
            assert all(p.poll() is None for p in procs), "a standalone daemon exited"
            assert time.monotonic() < deadline, "standalone workers did not register"
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in files:
            f.close()


def test_speculative_copy_of_a_slow_task_writes_no_duplicates(rel_model, two_host_cluster, tmp_path):
    in_path, table = fault_input(tmp_path)
    out, events = str(tmp_path / "out"), str(tmp_path / "events")
    overrides = [
        *job_overrides(in_path, rel_model, out, events, two_host_cluster),
        "spark.spark.speculation=true", "spark.spark.speculation.multiplier=1.5",
        "spark.spark.speculation.quantile=0.25", "spark.spark.speculation.minTaskRuntime=100ms",
        "spark.spark.speculation.interval=100ms", "spark.spark.executor.cores=1", "spark.spark.cores.max=2",
        "spark.spark.executor.memory=512m", "spark.spark.driver.host=127.0.0.1",
        f"spark.spark.executorEnv.PYTHONPATH={PROJECT_ROOT}",
    ]
    proc = run_job(tmp_path, overrides, "sleep:0:8")
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Spark did launch a speculative copy of the slow partition, on the other host.
    tasks = task_events(events)
    speculative = [t for t in tasks if t["speculative"] and t["index"] == 0]
    assert speculative, f"no speculative attempt was launched: {tasks}"
    spec = speculative[0]
    started = task_events(events, "SparkListenerTaskStart")
    original = [t for t in started if t["stage"] == spec["stage"] and t["index"] == 0 and not t["speculative"]]
    assert original and original[0]["host"] != spec["host"], started

    scored = support.read_output(out)
    assert_scored_like_tf(rel_model, scored, table)  # each id exactly once despite two attempts
    assert read_manifest(out)["rows_in"] == read_manifest(out)["rows_scored"] == 400
