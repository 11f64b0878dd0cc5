"""Property tests (hypothesis): tables with random bad cells.

Each bad row must come out with a reason its faults explain, each good row must be
scored exactly as bare TensorFlow scores it, and the counts must add up: first on the
engine alone (StreamScorer + the real SavedModel, no Spark), then through the whole
job on both lanes.
"""
from __future__ import annotations

import itertools
import math
import os
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.core.columns import BAD_COLUMN, REASON_COLUMN
from batchscore.core.compat import to_arrow
from batchscore.run.steps import run_scoring
from batchscore.udfs.batches.batching import StreamScorer
from batchscore.udfs.batches.binding import bind_inputs
from batchscore.udfs.model.cache import load_saved_model
from batchscore.udfs.model.signature import read_signature
from tests import support
from tests.support import reliability as rs
from tests.support import tf_predict

TOL = 1e-5
COLUMNS = {"x": ["a", "b", "c"], "img": "pix", "code": "code"}
INPUT_REASONS = {"null_feature", "non_finite", "bad_shape"}

# (cell, fault) -> (reason, column named in the quarantine)
FAULTS: dict[tuple[str, str], tuple[str, str]] = {
    ("a", "null"): ("null_feature", "a"),
    ("a", "nan"): ("non_finite", "a"),
    ("a", "big"): ("bad_prediction", "_"),  # the model answers NaN for a > 1000
    ("b", "null"): ("null_feature", "b"),
    ("b", "inf"): ("non_finite", "b"),
    ("c", "-inf"): ("non_finite", "c"),
    ("pix", "null"): ("null_feature", "pix"),
    ("pix", "short"): ("bad_shape", "pix"),
    ("pix", "long"): ("bad_shape", "pix"),
    ("pix", "null_value"): ("null_feature", "pix"),
    ("pix", "nan_value"): ("non_finite", "pix"),
    ("pix", "null_inner"): ("null_feature", "pix"),
    ("code", "null"): ("null_feature", "code"),
    ("code", "text"): ("model_error", "_"),  # tf.strings.to_number raises
}

row_faults = st.one_of(
    st.just(()),
    st.just(()),
    st.just((("code", "text"),)),  # often enough that whole model chunks are rejected
    st.lists(st.sampled_from(sorted(FAULTS)), min_size=1, max_size=3, unique_by=lambda f: f[0]).map(tuple),
)


def _fault_value(cell: str, fault: str, value: Any, nested: bool) -> Any:
    if cell in "abc":
        return {"null": None, "nan": math.nan, "inf": math.inf, "-inf": -math.inf, "big": 5000.0}[fault]
    if cell == "code":
        return None if fault == "null" else "abc"
    flat = [x for row in value for px in row for x in px] if nested else list(value)
    if fault == "null":
        return None
    if fault in ("short", "long"):
        if nested:  # a missing or an extra image row
            rows = rs.nest(flat)
            assert rows is not None
            return rows[:3] if fault == "short" else [*rows, rows[0]]
        return flat[:15] if fault == "short" else [*flat, 0.0]
    if fault == "null_inner" and nested:
        img = rs.nest(flat)
        assert img is not None
        img[2][1] = None
        return img
    flat[5] = None if fault in ("null_value", "null_inner") else math.nan
    return rs.nest(flat) if nested else flat


def make_table(faults: list[tuple], nested: bool, seed: int) -> pa.Table:
    table = rs.rel_table(len(faults), seed=seed, nested=nested)
    for i, row in enumerate(faults):
        for cell, fault in row:
            value = table.column(cell)[i].as_py()
            table = rs.set_cells(table, cell, {i: _fault_value(cell, fault, value, nested)})
    return table


def allowed_outcomes(row: tuple) -> set[tuple[str, str]]:
    """What a row with these faults may come out as: ok, or one of its input faults, else the model's."""
    inputs = {FAULTS[f] for f in row if FAULTS[f][0] in INPUT_REASONS}
    if inputs:
        return inputs  # which input fault is reported first is the engine's business
    if ("code", "text") in row:
        return {("model_error", "_")}
    if ("a", "big") in row:
        return {("bad_prediction", "_")}
    return {("ok", "_")}


def model_is_judged_broken(faults: list[tuple], batch_size: int) -> bool:
    """The engine's documented rule: a chunk the model rejects row by row entirely, before it
    has ever scored a row of the stream, means a broken model (the task fails)."""
    worked = False
    good = [row for row in faults if allowed_outcomes(row) <= {("model_error", "_"), ("bad_prediction", "_"), ("ok", "_")}]
    for start in range(0, len(good), batch_size):
        chunk = [allowed_outcomes(r) == {("model_error", "_")} for r in good[start:start + batch_size]]
        if all(chunk) and not worked:
            return True
        worked = worked or not all(chunk)
    return False


@pytest.fixture(scope="module")
def engine(rel_model: str) -> dict[str, Any]:
    """The engine's predict function and, separately loaded, the bare TF signature."""
    import tensorflow as tf

    bare = tf.saved_model.load(rel_model).signatures["serving_default"]
    return {"signature": read_signature(rel_model), "predict": load_saved_model(rel_model, "serving_default")[1],
            "bare": lambda x: {k: v.numpy() for k, v in bare(**{k: tf.constant(v) for k, v in x.items()}).items()}}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    faults=st.lists(row_faults, min_size=1, max_size=60),
    nested=st.booleans(),
    batch_size=st.sampled_from([1, 2, 3, 5, 16]),
    data=st.data(),
)
def test_stream_scorer_quarantines_each_bad_row_and_scores_good_rows_like_tf(engine, faults, nested, batch_size, data):
    table = make_table(faults, nested, seed=len(faults))
    # Cut the table into random Arrow batches: rows are re-chunked across them.
    cuts = sorted(data.draw(st.lists(st.integers(0, table.num_rows), max_size=5)))
    bounds = [0, *cuts, table.num_rows]
    batches = [b for lo, hi in itertools.pairwise(bounds) for b in table.slice(lo, hi - lo).to_batches()]

    feeds = bind_inputs(engine["signature"], table.schema, COLUMNS)
    scorer = StreamScorer(engine["signature"], feeds, engine["predict"], batch_size, ["id"], ["parts", "score"])
    if model_is_judged_broken(faults, batch_size):
        with pytest.raises(Exception, match="abc"):
            list(scorer.score(iter(batches)))
        return
    out = pa.Table.from_batches(list(scorer.score(iter(batches))))

    # Same rows, same order, each once; each row's outcome is one its faults explain.
    assert out.column("id").to_pylist() == list(range(table.num_rows))
    got = list(zip(out.column(REASON_COLUMN).to_pylist(), out.column(BAD_COLUMN).to_pylist(), strict=True))
    for i, (row, outcome) in enumerate(zip(faults, got, strict=True)):
        assert outcome in allowed_outcomes(row), (i, row, outcome)

    # Accounting.
    ok = np.array([r == "ok" for r, _ in got])
    assert scorer.stats.rows == table.num_rows
    assert scorer.stats.rows_bad == int((~ok).sum())
    assert 0 < scorer.stats.max_call_rows <= batch_size or not ok.any()

    # Bad rows have no prediction; good rows equal bare TF on exactly those rows.
    score = out.column("score")
    assert score.filter(pa.array(~ok)).null_count == int((~ok).sum())
    if ok.any():
        good = table.filter(pa.array(ok))
        expected = engine["bare"](rs.rel_inputs(good))
        got_score = score.filter(pa.array(ok)).to_numpy(zero_copy_only=False)
        assert np.abs(got_score - expected["score"].reshape(-1)).max() <= TOL
        got_parts = np.asarray(out.column("parts").filter(pa.array(ok)).to_pylist(), dtype=np.float64)
        assert np.abs(got_parts - expected["parts"]).max() <= TOL


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                 HealthCheck.function_scoped_fixture])
@given(faults=st.lists(row_faults, min_size=2, max_size=60), nested=st.booleans())
def test_scoring_job_property_on_both_lanes(spark, rel_model, tmp_path_factory, faults, nested):
    half = len(faults) // 2
    faults = [(), *faults[1:half], (), *faults[half + 1:]]  # each file starts with a good row: the model works
    table = make_table(faults, nested, seed=len(faults))
    base = tmp_path_factory.mktemp("prop")
    in_path = rs.write_files(table, str(base / "in"), files=2)
    results = {}
    for lane in ("arrow", "dataframe"):
        out = str(base / f"out_{lane}")
        cfg = support.job_spec(in_path, rel_model, out, *rs.REL_COLUMNS, "output.keep_columns=[id]",
                               f"input.lane={lane}", "model.batch_size=8")
        manifest = run_scoring(spark, cfg)
        scored = to_arrow(spark.read.parquet(out)).sort_by("id")
        q = to_arrow(spark.read.parquet(out + "_quarantine")).sort_by("id") if os.path.exists(out + "_quarantine") else None
        outcome = {i: ("ok", "_") for i in scored.column("id").to_pylist()}
        if q is not None:
            for i, r, c in zip(q.column("id").to_pylist(), q.column("reason").to_pylist(),
                               q.column("column").to_pylist(), strict=True):
                assert i not in outcome, f"row {i} is both scored and quarantined"
                outcome[i] = (r, c)
        assert sorted(outcome) == list(range(len(faults))), "a row is missing"
        for i, row in enumerate(faults):
            assert outcome[i] in allowed_outcomes(row), (lane, i, row, outcome[i])
        n_bad = sum(1 for v in outcome.values() if v[0] != "ok")
        assert (manifest.rows_in, manifest.rows_scored, manifest.rows_quarantined) == (
            len(faults), len(faults) - n_bad, n_bad)
        if scored.num_rows:
            good = table.take(scored.column("id"))
            ref = tf_predict(rel_model, rs.rel_inputs(good))
            assert np.abs(scored.column("score").to_numpy(zero_copy_only=False) - ref["score"].reshape(-1)).max() <= TOL
        results[lane] = outcome
    assert results["arrow"] == results["dataframe"]
