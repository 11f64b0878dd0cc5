"""Variable-length inputs (`[None, None]` token ids and masks): input.pad, input.pad_multiple, input.mask.

Engine level with a recording numpy model and with a real SavedModel, then the
scoring job on both lanes. The reference is always built here by hand: the good
rows in order, cut into `batch_size` chunks, each padded to its longest row
(at least 1) rounded up to the multiple.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchscore.config.loader import load_config
from batchscore.core.columns import BAD_COLUMN, REASON_COLUMN
from batchscore.core.errors import ConfigError, ModelError, SchemaError
from batchscore.jobs.score import main
from batchscore.run.steps import run_scoring
from batchscore.udfs.batches.batching import StreamScorer
from batchscore.udfs.batches.binding import bind_inputs, check_sample
from batchscore.udfs.lanes.scoring import fixed_row_bytes, plan_scoring
from batchscore.udfs.model.cache import load_saved_model
from batchscore.udfs.model.distribution import ModelSource
from batchscore.udfs.model.signature import ModelSignature, TensorSpec, read_signature
from tests import support

TOKENS_SIG = ModelSignature(
    "/m", "serving_default",
    (TensorSpec("mask", "int32", (None,)), TensorSpec("tokens", "int64", (None,))),
    (TensorSpec("n", "int64", ()), TensorSpec("total", "int64", ())),
    "f" * 16,
)
TOKENS_SCHEMA = pa.schema([("id", pa.int64()), ("tokens", pa.list_(pa.int64()))])
PAD = 7  # a padding id that shows in `total` wherever padding went


def expected_length(rows: list[list], multiple: int) -> int:
    return math.ceil(max([len(r) for r in rows] + [1]) / multiple) * multiple


def padded(rows: list[list], length: int, value: object, inner: tuple[int, ...] = ()) -> np.ndarray:
    """Rows padded by hand: `[len(rows), length, *inner]`."""
    out = np.full((len(rows), length, *inner), value, dtype=np.float64)
    for i, r in enumerate(rows):
        if r:
            out[i, : len(r)] = np.asarray(r, dtype=np.float64).reshape(len(r), *inner)
    return out


def mask_of(rows: list[list], length: int) -> np.ndarray:
    return np.asarray([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=np.int32).reshape(-1, length)


class TokenRecorder:
    """n = the mask's row sum, total = the sum of all ids, padding included; keeps every call's inputs."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls.append({k: v.copy() for k, v in inputs.items()})
        return {"n": inputs["mask"].sum(axis=1).astype(np.int64), "total": inputs["tokens"].sum(axis=1)}


def token_batches(rows: list[list | None], splits: list[int]) -> list[pa.RecordBatch]:
    """`rows` (lists of ids, None elements allowed, or None) cut into Arrow batches of `splits` rows."""
    out, start = [], 0
    for n in splits:
        part = rows[start : start + n]
        ids = np.arange(start, start + len(part), dtype=np.int64)
        out.append(pa.RecordBatch.from_pydict({"id": pa.array(ids), "tokens": pa.array(part, pa.list_(pa.int64()))}))
        start += len(part)
    return out


def token_scorer(model: TokenRecorder, batch_size: int, multiple: int) -> StreamScorer:
    feeds = bind_inputs(TOKENS_SIG, TOKENS_SCHEMA, pad={"tokens": PAD}, mask={"mask": "tokens"})
    return StreamScorer(TOKENS_SIG, feeds, model, batch_size, ["id"], ["n", "total"], pad_multiple=multiple)


def check_token_stream(rows: list[list | None], splits: list[int], batch_size: int, multiple: int) -> None:
    model = TokenRecorder()
    scorer = token_scorer(model, batch_size, multiple)
    out = pa.Table.from_batches(list(scorer.score(token_batches(rows, splits))), schema=None) if rows else None
    kept = {i: r for i, r in enumerate(rows) if r is not None and None not in r}
    good = list(kept)
    # the calls: good rows in order, batch_size per call across Arrow batches, each padded by hand
    chunks = [good[i : i + batch_size] for i in range(0, len(good), batch_size)]
    assert len(model.calls) == len(chunks)
    expected_total = {}
    for call, chunk in zip(model.calls, chunks, strict=True):
        rs = [kept[i] for i in chunk]
        length = expected_length(rs, multiple)
        assert call["tokens"].dtype == np.int64 and call["mask"].dtype == np.int32
        np.testing.assert_array_equal(call["tokens"], padded(rs, length, PAD))
        np.testing.assert_array_equal(call["mask"], mask_of(rs, length))
        expected_total.update({i: sum(kept[i]) + PAD * (length - len(kept[i])) for i in chunk})
    if out is None:
        return
    assert out.column("id").to_pylist() == list(range(len(rows)))
    reasons, columns = out.column(REASON_COLUMN).to_pylist(), out.column(BAD_COLUMN).to_pylist()
    n, total = out.column("n").to_pylist(), out.column("total").to_pylist()
    for i in range(len(rows)):
        if i in expected_total:
            assert (reasons[i], n[i], total[i]) == ("ok", len(kept[i]), expected_total[i])
        else:  # a null list or a null id inside the list
            assert (reasons[i], columns[i], n[i], total[i]) == ("null_feature", "tokens", None, None)


# --- engine: StreamScorer with a recording numpy model ---


def test_each_call_is_padded_to_its_longest_row_across_arrow_batches() -> None:
    rows = [[1, 2, 3], [], [4], None, [5, 6, 7, 8, 9], [1, None], [2, 2], [3], [], [9] * 11, [1]]
    check_token_stream(rows, [2, 3, 1, 5], batch_size=3, multiple=1)
    check_token_stream(rows, [2, 3, 1, 5], batch_size=3, multiple=4)
    check_token_stream(rows, [11], batch_size=100, multiple=8)


def test_an_empty_row_alone_is_padded_to_length_one_with_an_empty_mask() -> None:
    model = TokenRecorder()
    out = pa.Table.from_batches(list(token_scorer(model, 4, 1).score(token_batches([[]], [1]))))
    assert [c["tokens"].tolist() for c in model.calls] == [[[PAD]]]
    assert [c["mask"].tolist() for c in model.calls] == [[[0]]]
    assert out.column("n").to_pylist() == [0] and out.column(REASON_COLUMN).to_pylist() == ["ok"]


_row = st.one_of(
    st.none(),
    st.lists(st.integers(min_value=0, max_value=50), max_size=9),
    st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=50)), min_size=1, max_size=4),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(_row, max_size=30),
    data=st.data(),
    batch_size=st.integers(min_value=1, max_value=8),
    multiple=st.sampled_from([1, 2, 5, 8]),
)
def test_padding_property(rows: list, data: st.DataObject, batch_size: int, multiple: int) -> None:
    splits, left = [], len(rows)
    while left:
        splits.append(data.draw(st.integers(min_value=0, max_value=left)))
        left -= splits[-1]
    check_token_stream(rows, splits, batch_size, multiple)


# A fixed dimension after the variable one: [batch, None, 4] floats, flat or nested 2 deep.
VEC_SIG = ModelSignature("/m", "serving_default", (TensorSpec("x", "float32", (None, 4)),),
                         (TensorSpec("s", "float64", ()),), "f" * 16)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_fixed_inner_dims_after_the_variable_one_are_validated(nested: bool) -> None:
    vec = [float(v) for v in range(4)]
    good = {0: [vec, vec], 2: [], 4: [vec], 5: [vec, vec, vec]}
    bad = {1: ([vec[:3]], "bad_shape"), 3: ([vec, [1.0, math.nan, 2.0, 3.0]], "non_finite"),
           6: ([vec[:2], vec[:3]], "bad_shape"), 7: (None, "null_feature")}
    cells = [good[i] if i in good else bad[i][0] for i in range(8)]
    if nested:
        col = pa.array(cells, pa.list_(pa.list_(pa.float32())))
    else:  # the same rows flat: 4 values per position
        col = pa.array([None if c is None else [v for p in c for v in p] for c in cells], pa.list_(pa.float32()))
    batch = pa.RecordBatch.from_pydict({"id": pa.array(np.arange(8)), "x": col})
    (feed,) = bind_inputs(VEC_SIG, batch.schema, pad={"x": -1.0})
    calls: list[np.ndarray] = []

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(inputs["x"])
        return {"s": inputs["x"].sum(axis=(1, 2)).astype(np.float64)}

    scorer = StreamScorer(VEC_SIG, (feed,), model, 3, ["id"], ["s"], pad_multiple=1)
    out = pa.Table.from_batches(list(scorer.score([batch])))
    chunks = [[0, 2, 4], [5]]
    for call, chunk in zip(calls, chunks, strict=True):
        rs = [good[i] for i in chunk]
        np.testing.assert_array_equal(call, padded(rs, expected_length(rs, 1), -1.0, (4,)).astype(np.float32))
    assert len(calls) == 2 and calls[0].shape == (3, 2, 4) and calls[1].shape == (1, 3, 4)
    reasons = out.column(REASON_COLUMN).to_pylist()
    assert {i: reasons[i] for i in bad} == {i: r for i, (_, r) in bad.items()}
    assert all(reasons[i] == "ok" for i in good)
    assert out.column("s").to_pylist()[2] == -8.0  # an empty row: all padding, its batch padded to 2


# --- binding: what input.pad and input.mask may name ---


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({}, ModelError, (r"signature input 'mask' has shape \[None, None\] with an unknown inner dimension; "
                         r"set input.pad.mask")),
        ({"pad": {"tokens": 0}}, ModelError, r"unknown inner dimension; set input.pad.mask .*input.mask.mask"),
        ({"pad": {"tokens": 0, "nope": 1}, "mask": {"mask": "tokens"}}, ConfigError,
         r"input.pad.nope: 'nope' is not an input"),
        ({"pad": {"tokens": 0}, "mask": {"mask": "ids"}}, ConfigError,
         r"input.mask.mask: its source 'ids' must be a padded input \(set input.pad.ids\)"),
        ({"pad": {"tokens": 0, "mask": 0}, "mask": {"mask": "tokens"}}, ConfigError,
         r"input.mask.mask: a mask input is filled by the engine; remove input.pad.mask"),
        ({"pad": {"tokens": "x"}, "mask": {"mask": "tokens"}}, ConfigError,
         r"input.pad.tokens must be a padding value of dtype int64 \(model input 'tokens'\), got 'x'"),
        ({"pad": {"tokens": 1.5}, "mask": {"mask": "tokens"}}, ConfigError, r"input.pad.tokens must be a padding value of dtype int64"),
        ({"pad": {"tokens": 0}, "mask": {"mask": "tokens"}, "columns": {"mask": "tokens"}}, ConfigError,
         r"input.mask.mask: a mask input is fed by no column; remove input.columns.mask"),
    ],
    ids=["no-pad", "no-mask", "pad-unknown", "mask-source", "mask-padded", "pad-string", "pad-float", "mask-column"],
)
def test_bind_padding_errors_name_the_key(kwargs: dict, error: type, message: str) -> None:
    columns = kwargs.pop("columns", None)
    with pytest.raises(error, match=message):
        bind_inputs(TOKENS_SIG, TOKENS_SCHEMA, columns, **kwargs)


def test_bind_padding_errors_on_fixed_inputs_and_columns() -> None:
    fixed = ModelSignature("/m", "s", (TensorSpec("x", "float32", (3,)),), (), "f" * 16)
    with pytest.raises(ConfigError, match=r"input.pad.x: model input 'x' has fixed shape \[batch, 3\]"):
        bind_inputs(fixed, pa.schema([("x", pa.list_(pa.float32()))]), pad={"x": 0.0})
    with pytest.raises(SchemaError, match=r"column 'x' is float, but model input 'x' wants shape \[batch, None, 4\]"):
        bind_inputs(VEC_SIG, pa.schema([("x", pa.float32())]), pad={"x": 0.0})
    with pytest.raises(SchemaError, match=r"column 'x' holds arrays of fixed length 3, but model input 'x' wants 4"):
        bind_inputs(VEC_SIG, pa.schema([("x", pa.list_(pa.list_(pa.float32(), 3)))]), pad={"x": 0.0})
    with pytest.raises(SchemaError, match=r"column 'x' is array<string>, but model input 'x' wants float32"):
        bind_inputs(VEC_SIG, pa.schema([("x", pa.list_(pa.string()))]), pad={"x": 0.0})
    late = ModelSignature("/m", "s", (TensorSpec("x", "float32", (None, 4, None)),), (), "f" * 16)
    with pytest.raises(ModelError, match=r"'x' has shape \[None, None, 4, None\] .* after the first"):
        bind_inputs(late, pa.schema([("x", pa.list_(pa.float32()))]), pad={"x": 0.0})
    fixed_mask = ModelSignature("/m", "s", (TensorSpec("m", "int32", (None, 2)), TensorSpec("t", "int64", (None,))),
                                (), "f" * 16)
    with pytest.raises(SchemaError, match=r"input.mask.m: model input 'm' is int32 \[batch, None, 2\]"):
        bind_inputs(fixed_mask, pa.schema([("t", pa.list_(pa.int64()))]), pad={"t": 0}, mask={"m": "t"})
    with pytest.raises(ConfigError, match=r"input.pad.x must be a padding value of dtype int8 .* got 300"):
        sig8 = ModelSignature("/m", "s", (TensorSpec("x", "int8", (None,)),), (), "f" * 16)
        bind_inputs(sig8, pa.schema([("x", pa.list_(pa.int8()))]), pad={"x": 300})


def test_plan_with_padding_has_variable_rows_and_skips_the_length_sample() -> None:
    source = ModelSource("direct", "/m", "f" * 16)
    plan = plan_scoring(TOKENS_SIG, TOKENS_SCHEMA, source, pad={"tokens": 0}, mask={"mask": "tokens"},
                        pad_multiple=8, keep_columns=["id"])
    assert plan.input_columns == ["id", "tokens"] and plan.pad_multiple == 8
    assert fixed_row_bytes(TOKENS_SCHEMA, plan) is None
    check_sample(plan.feeds, pa.table({"tokens": pa.array([[1, 2, 3], [4]], pa.list_(pa.int64()))}))
    per_token = ModelSignature("/m", "s", TOKENS_SIG.inputs, (TensorSpec("logits", "float32", (None, 5)),), "f" * 16)
    with pytest.raises(ModelError, match=r"model output 'logits' has shape \[None, None, 5\]: with input.pad.tokens"):
        plan_scoring(per_token, TOKENS_SCHEMA, source, pad={"tokens": 0}, mask={"mask": "tokens"})


@pytest.mark.parametrize(("overrides", "message"), [
    (["input.pad=[0]"], r"'input.pad' must be a mapping"),
    (["input.pad.tokens=[0, 1]"], r"'input.pad.tokens' must be a scalar padding value"),
    (["input.mask.mask=[tokens]"], r"'input.mask.mask' must name the padded input"),
    (["input.pad_multiple=0"], r"'input.pad_multiple' must be a positive integer, got 0"),
    (["input.pad_multiple=true"], r"'input.pad_multiple' must be a positive integer"),
])
def test_config_padding_keys_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["input.path=/i", "model.path=/m", "output.path=/o", *overrides])


def test_config_padding_keys() -> None:
    cfg = load_config(None, ["input.path=/i", "model.path=/m", "output.path=/o", "input.pad={tokens: 0}",
                             "input.mask.mask=tokens", "input.pad_multiple=8"])
    assert (cfg.input.pad, cfg.input.mask, cfg.input.pad_multiple) == ({"tokens": 0}, {"mask": "tokens"}, 8)
    assert load_config(None, ["input.path=/i", "model.path=/m", "output.path=/o"]).input.pad == {}


# --- a real SavedModel: embedding lookup, a masked mean and a sum that counts padding ---

VOCAB, DIM = 50, 3


def build_token_model(path: str) -> str:
    import tensorflow as tf

    emb = np.random.default_rng(4).normal(size=(VOCAB, DIM)).astype(np.float32)
    emb[0] = 1.0  # the padding id: each padded position adds exactly DIM to `total`

    class Tokens(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = tf.Variable(emb)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64, name="tokens"),
                                      tf.TensorSpec([None, None], tf.int32, name="mask")])
        def serve(self, tokens, mask):
            e = tf.gather(self.emb, tokens)  # [batch, length, DIM]
            m = tf.cast(mask, tf.float32)[:, :, None]  # [batch, length, 1]
            mean = tf.reduce_sum(e * m, axis=1) / tf.maximum(tf.reduce_sum(m, axis=1), 1.0)  # [batch, DIM]
            total = tf.reduce_sum(e, axis=[1, 2])  # [batch]: not mask-aware, padding counts
            return {"mean": mean, "total": total, "length": tf.reduce_sum(mask, axis=1)}

    m = Tokens()
    tf.saved_model.save(m, path, signatures={"serving_default": m.serve})
    return path


@pytest.fixture(scope="module")
def token_model(saved_model) -> str:
    return saved_model("token_model", build_token_model)


def token_rows(n: int, seed: int = 9) -> list[list | None]:
    rng = np.random.default_rng(seed)
    rows: list[list | None] = [rng.integers(1, VOCAB, rng.integers(0, 13)).tolist() for _ in range(n)]
    for i in range(5, n, 37):
        rows[i] = None  # null_feature
    for i in range(11, n, 41):
        rows[i] = [3, None, 4]  # a null id: null_feature
    rows[2] = []  # an empty row
    return rows


def test_saved_model_scores_each_engine_batch_like_bare_tf(token_model: str) -> None:
    sig = read_signature(token_model)
    assert [(s.name, s.shape) for s in sig.inputs] == [("mask", (None,)), ("tokens", (None,))]
    feeds = bind_inputs(sig, TOKENS_SCHEMA, pad={"tokens": 0}, mask={"mask": "tokens"})
    predict = load_saved_model(token_model, "serving_default")[1]
    rows = token_rows(120)
    scorer = StreamScorer(sig, feeds, predict, 16, ["id"], ["length", "mean", "total"], pad_multiple=4)
    out = pa.Table.from_batches(list(scorer.score(token_batches(rows, [7, 50, 1, 62]))))
    kept = {i: r for i, r in enumerate(rows) if r is not None and None not in r}
    good = list(kept)
    got = {k: out.column(k).to_pylist() for k in ("mean", "total", "length", REASON_COLUMN)}
    assert [i for i, r in enumerate(got[REASON_COLUMN]) if r == "ok"] == good
    for start in range(0, len(good), 16):  # bare TF on exactly the engine's batches, padded by hand
        chunk = good[start : start + 16]
        rs = [kept[i] for i in chunk]
        length = expected_length(rs, 4)
        ref = support.tf_predict(token_model, {"tokens": padded(rs, length, 0).astype(np.int64),
                                               "mask": mask_of(rs, length)})
        assert support.max_abs_diff([got["total"][i] for i in chunk], ref["total"]) <= 1e-5
        assert support.max_abs_diff([got["mean"][i] for i in chunk], ref["mean"]) <= 1e-6
        assert [got["length"][i] for i in chunk] == [len(r) for r in rs]


# --- the scoring job on both lanes ---


@pytest.fixture(scope="module")
def token_input(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list]:
    rows = token_rows(300)
    table = pa.table({"id": pa.array(np.arange(len(rows), dtype=np.int64)),
                      "tokens": pa.array(rows, pa.list_(pa.int64()))})
    return support.write_parquet(table, str(tmp_path_factory.mktemp("tokens_in") / "in"), files=3), rows


@pytest.mark.parametrize("lane", ["arrow", "dataframe"])
def test_job_pads_token_ids_and_fills_the_mask(spark, token_model, token_input, tmp_path, lane) -> None:
    in_path, rows = token_input
    out = str(tmp_path / "out")
    cfg = support.job_spec(in_path, token_model, out, f"input.lane={lane}", "input.pad={tokens: 0}",
                           "input.mask={mask: tokens}", "input.pad_multiple=4", "model.batch_size=16",
                           "output.keep_columns=[id]")
    manifest = run_scoring(spark, cfg)
    assert manifest.lane == lane
    good = [i for i, r in enumerate(rows) if r is not None and None not in r]
    t = support.read_output(out)
    assert t.column("id").to_pylist() == good
    q = support.read_output(out + "_quarantine")
    assert q.column("id").to_pylist() == sorted(set(range(len(rows))) - set(good))
    assert set(q.column("reason").to_pylist()) == {"null_feature"} and set(q.column("column").to_pylist()) == {"tokens"}
    # the masked mean does not depend on which rows shared a batch: bare TF on each row alone
    ref = support.tf_predict(token_model, {"tokens": padded([rows[i] for i in good], 12, 0).astype(np.int64),
                                           "mask": mask_of([rows[i] for i in good], 12)})
    assert support.max_abs_diff(t.column("mean").to_pylist(), ref["mean"]) <= 1e-5
    assert t.column("length").to_pylist() == [len(rows[i]) for i in good]
    # `total` counts padding: each row's padded length is a multiple of 4 and at least its own length
    emb = support.tf_predict(token_model, {"tokens": np.arange(VOCAB, dtype=np.int64)[:, None],
                                           "mask": np.ones((VOCAB, 1), np.int32)})["mean"]
    real = np.asarray([emb[rows[i]].sum() if rows[i] else 0.0 for i in good])
    pads = (t.column("total").to_numpy() - real) / DIM
    lengths = np.asarray([len(rows[i]) for i in good]) + np.round(pads)
    assert support.max_abs_diff(pads, np.round(pads)) <= 1e-3
    assert (lengths % 4 == 0).all() and (lengths >= np.maximum([len(rows[i]) for i in good], 1)).all()
    assert lengths.max() == 12  # the longest row (12 ids) pads its batch to 12


def test_job_without_input_pad_exits_2_naming_the_key(spark, capsys, token_model, token_input, tmp_path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("spark:\n  spark.master: local[2]\n")
    args = ["--config", str(job), "--quiet", "--set", f"input.path={token_input[0]}", "--set",
            f"model.path={token_model}", "--set", f"output.path={tmp_path / 'out'}"]
    code = main(args, spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: signature input 'mask' has shape [None, None]"), err
    assert "input.pad.mask" in err[0] and "input.mask.mask" in err[0], err
    assert not (tmp_path / "out").exists()
    code = main([*args, "--set", "input.pad={tokens: 0}"], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "set input.pad.mask" in err[0], err
    code = main([*args, "--set", "input.pad={tokens: 0}", "--set", "input.mask={mask: tokenz}"], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [("error: input.mask.mask: its source 'tokenz' must be a padded input "
                                 "(set input.pad.tokenz)")], err
    assert not os.path.exists(tmp_path / "out")
