"""batchscore evaluate: every metric against a numpy reference written here, on data with ties.

The references are brute force (AUC-ROC over all positive/negative pairs, AUC-PR as the step
sum over every distinct threshold), so they share no code with batchscore/evaluation/metrics.py and curves.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore.evaluation.curves import Curve, roc_auc
from batchscore.evaluation.gates import parse_gate
from batchscore.evaluation.metrics import evaluate
from batchscore.evaluation.plots import render_plots
from batchscore.evaluation.results import Evaluation, GroupResult, Number
from batchscore.evaluation.run import EVALUATION_DIR, read_predictions
from batchscore.jobs.evaluate import main

ROOT = Path(__file__).resolve().parents[2]
EPS = 1e-15  # the log loss's clip, as the metric documents it
TOL = 1e-9

# --- numpy references ---


def _pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _stepwise_ap(labels: np.ndarray, scores: np.ndarray) -> float:
    """sum over distinct thresholds t (descending) of (recall(t) - recall(previous t)) * precision(t)."""
    y = labels == 1
    total, previous = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= t
        recall = (y & chosen).sum() / y.sum()
        total += (recall - previous) * (y & chosen).sum() / chosen.sum()
        previous = recall
    return total


def _binary_reference(y: np.ndarray, s: np.ndarray, *, threshold: float = 0.5) -> dict[str, Any]:
    p = np.clip(s, EPS, 1 - EPS)
    predicted = s >= threshold
    return {
        "rows": len(y), "positives": int(y.sum()), "positive_rate": y.mean(), "mean_score": s.mean(),
        "auc_roc": _pairwise_auc(y, s), "auc_pr": _stepwise_ap(y, s),
        "log_loss": -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)),
        "accuracy": np.mean(predicted == (y == 1)),
        "precision": (predicted & (y == 1)).sum() / predicted.sum(), "recall": (predicted & (y == 1)).sum() / y.sum(),
    }


def _calibration_reference(y: np.ndarray, s: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    b = np.minimum(np.floor(s * bins), bins - 1).astype(int)
    return [{"bin": i, "lower": i / bins, "upper": (i + 1) / bins, "count": int((b == i).sum()),
             "mean_score": s[b == i].mean() if (b == i).any() else None,
             "observed_rate": y[b == i].mean() if (b == i).any() else None} for i in range(bins)]


def _assert_metrics(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=TOL), k


def _assert_rows_equal(got: Sequence[Mapping[str, object]], expected: Sequence[Mapping[str, object]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=TOL)


# --- data: coarse scores (many ties), a skewed slice column, a few rows without label or score ---

SEGMENTS = np.array(["a", "a", "a", "a", "b", "b", "b", "c", "c", "d"])


def _binary_rows(n: int = 400, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    s = np.clip(np.round(rng.random(n) * 0.8 + 0.25 * y, 1), 0, 1)  # 11 distinct values
    segment = rng.choice(SEGMENTS, n).astype(object)
    segment[rng.random(n) < 0.05] = None
    return {"id": np.arange(n), "y": y, "s": s, "segment": segment}


def _frame(spark: Any, cols: dict[str, Any], schema: str) -> Any:
    names = [f.split()[0] for f in schema.split(",")]
    rows = [tuple(None if (isinstance(v, float) and np.isnan(v)) else (v.item() if hasattr(v, "item") else v)
                  for v in values) for values in zip(*(cols[c] for c in names), strict=True)]
    return spark.createDataFrame(rows, schema)


BINARY_SCHEMA = "id long, y double, s double, segment string"


def test_binary_metrics_slices_and_curve_equal_numpy(spark: Any) -> None:
    d = _binary_rows()
    y, s = d["y"].copy(), d["s"].copy()
    y[:5] = np.nan  # no label
    s[5:8] = np.nan  # no score
    ev = evaluate(_frame(spark, {**d, "y": y, "s": s}, BINARY_SCHEMA), label="y", score="s",
                  slice_column="segment", top_slices=2, max_curve_points=4)
    ok = ~np.isnan(y) & ~np.isnan(s)
    assert ev.task == "binary"
    assert ev.overall.rows == {"evaluated": int(ok.sum()), "without_label": 5, "without_prediction": 3}
    _assert_metrics(ev.metrics, _binary_reference(y[ok], s[ok]))
    _assert_rows_equal(ev.overall.calibration, _calibration_reference(y[ok], s[ok]))
    # slices: the two most frequent values, then "other" (c, d and the nulls)
    seg = d["segment"]
    assert [g.name for g in ev.slices] == ["a", "b", "other"]
    for g, members in zip(ev.slices, [seg == "a", seg == "b", ~np.isin(seg, ["a", "b"])], strict=True):
        m = ok & members
        _assert_metrics(g.metrics, _binary_reference(y[m], s[m]))
        _assert_rows_equal(g.calibration, _calibration_reference(y[m], s[m]))
    # the sampled curve: every 3rd of the 11 distinct scores and the lowest, with exact counts
    curve, yy, ss = ev.overall.curves[""], y[ok] == 1, s[ok]
    distinct = sorted(set(ss.tolist()), reverse=True)
    assert len(distinct) == 11 and curve.thresholds == [distinct[i] for i in (2, 5, 8, 10)]
    for t, tp, fp in zip(curve.thresholds, curve.tp, curve.fp, strict=True):
        assert (tp, fp) == ((yy & (ss >= t)).sum(), (~yy & (ss >= t)).sum())
    assert (curve.positives, curve.negatives) == (yy.sum(), (~yy).sum())


def test_multiclass_metrics_equal_numpy(spark: Any) -> None:
    rng = np.random.default_rng(4)
    n, k = 240, 3
    y = rng.integers(0, k, n)
    p = np.round(rng.dirichlet(np.ones(k), n) * 0.6 + 0.4 * np.eye(k)[y] * rng.random((n, 1)), 1)  # ties
    df = spark.createDataFrame([(int(a), [float(v) for v in b]) for a, b in zip(y, p, strict=True)], "y int, p array<double>")
    ev = evaluate(df, label="y", score="p")  # multiclass inferred from the array column
    ovr = [_pairwise_auc((y == c).astype(int), p[:, c]) for c in range(k)]
    expected = {"rows": n, "classes": k, "accuracy": np.mean(np.argmax(p, axis=1) == y),
                "log_loss": -np.mean(np.log(np.clip(p[np.arange(n), y], EPS, 1 - EPS))),
                "auc_roc_macro": np.mean(ovr)}
    assert ev.task == "multiclass"
    _assert_metrics(ev.metrics, expected)
    assert [ev.overall.curves[str(c)].auc_roc for c in range(k)] == pytest.approx(ovr, abs=TOL)


def test_regression_metrics_and_slices_equal_numpy(spark: Any) -> None:
    rng = np.random.default_rng(5)
    n = 200
    y = np.round(rng.normal(3, 2, n), 1)
    pred = np.round(y + rng.normal(0, 0.5, n), 1)
    group = rng.choice(["x", "y"], n)
    df = _frame(spark, {"y": y, "pred": pred, "g": group}, "y double, pred double, g string")
    ev = evaluate(df, label="y", score="pred", task="regression", slice_column="g")

    def reference(m: np.ndarray) -> dict[str, Any]:
        err = pred[m] - y[m]
        return {"rows": int(m.sum()), "rmse": np.sqrt(np.mean(err ** 2)), "mae": np.mean(np.abs(err)),
                "r2": 1 - np.sum(err ** 2) / np.sum((y[m] - y[m].mean()) ** 2),
                "mean_label": y[m].mean(), "mean_prediction": pred[m].mean()}

    _assert_metrics(ev.metrics, reference(np.ones(n, bool)))
    for g in ev.slices:
        _assert_metrics(g.metrics, reference(group == g.name))


# --- the command: predictions read through the manifest, labels joined, files, gates ---


@pytest.fixture(scope="module")
def run_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A scoring run's output as on an object store: the rows under `_runs/<id>`, named by the
    manifest (Spark's own listing of the output skips `_runs`); the labels in a table of their own."""
    root = tmp_path_factory.mktemp("evaluate")
    d = _binary_rows(n=300, seed=9)
    out = root / "predictions"
    (out / "_runs" / "r1").mkdir(parents=True)
    pq.write_table(pa.table({"id": d["id"], "score": d["s"], "segment": d["segment"].tolist()}),
                   out / "_runs" / "r1" / "part-0.parquet")
    (out / "_runs" / "r1" / "_SUCCESS").write_text("")
    (out / "_manifest.json").write_text(json.dumps({
        "status": "succeeded", "run_id": "r1", "rows_in": 300, "rows_scored": 300, "rows_quarantined": 0,
        "output": {"path": str(out), "data_path": str(out / "_runs" / "r1"), "format": "parquet"}}))
    labels = root / "labels"
    labels.mkdir()
    # ids 0..9 have no label; labels 300..309 no prediction
    ids = np.arange(10, 310)
    pq.write_table(pa.table({"id": ids, "label": np.concatenate([d["y"][10:], np.ones(10)])}), labels / "part-0.parquet")
    return {"out": str(out), "labels": str(labels), "data": d}


def _argv(run: dict[str, Any], *extra: str) -> list[str]:
    return ["--predictions", run["out"], "--labels", run["labels"], "--key", "id", "--label", "label",
            "--score", "score", *extra]


def test_command_writes_metrics_and_plots_then_gates(spark: Any, run_output: dict[str, Any],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    imread = pytest.importorskip("matplotlib.image").imread  # the plots need matplotlib (requirements.txt)

    assert read_predictions(spark, run_output["out"]).df.count() == 300  # through the manifest
    code = main(_argv(run_output, "--slice", "segment", "--gate", "auc_roc>=0.5", "--gate", "auc_roc>=0.999",
                      "--gate", "log_loss<=0.01"), spark=spark)
    captured = capsys.readouterr()
    assert code == 3
    failed = [ln for ln in captured.err.splitlines() if ln.startswith("gate failed: ")]
    assert [ln.split(":")[1].strip() for ln in failed] == ["auc_roc>=0.999", "log_loss<=0.01"]
    # written before the verdict
    out = Path(run_output["out"]) / EVALUATION_DIR
    assert sorted(os.listdir(out)) == ["calibration.png", "metrics.json", "pr.png", "roc.png"]
    for png in ("calibration.png", "pr.png", "roc.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(out / png).shape == (500, 550, 4)
    written = json.loads((out / "metrics.json").read_text())
    d = run_output["data"]
    _assert_metrics(written["metrics"], _binary_reference(d["y"][10:], d["s"][10:]))
    assert written["rows"] == {"evaluated": 290, "without_label": 10, "without_prediction": 10}
    assert written["source"]["data_path"].endswith("/_runs/r1") and written["source"]["run"]["run_id"] == "r1"
    assert set(written["slices"]) == {"a", "b", "c", "d", "null"}
    assert written["slices"]["null"]["rows"]["without_prediction"] == 10  # labels without a prediction have no segment
    assert captured.out.startswith("evaluate: 290 rows, positive rate ")
    assert "left out: 10 rows without a label, 10 without a prediction" in captured.out


@pytest.mark.parametrize("gate, message", [
    ("auc>=0.7", "unknown metric 'auc' for a binary evaluation; known: rows, positives, positive_rate"),
    ("auc_roc=0.7", "expected METRIC>=VALUE or METRIC<=VALUE"),
])
def test_bad_gate_exits_2(spark: Any, run_output: dict[str, Any], tmp_path: Path, gate: str, message: str,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_argv(run_output, "--out", str(tmp_path), "--gate", gate), spark=spark) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "metrics.json").exists()


def test_scores_outside_0_1_exit_2(spark: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"y": [0.0, 1.0, 1.0], "logit": [-2.0, 0.5, 3.0]}), tmp_path / "p.parquet")
    assert main(["--predictions", str(tmp_path), "--label", "y", "--score", "logit"], spark=spark) == 2
    assert "score column 'logit' holds values outside [0, 1] (min -2, max 3)" in capsys.readouterr().err


def test_duplicate_label_keys_exit_2(spark: Any, run_output: dict[str, Any], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    pq.write_table(pa.table({"id": [1, 2, 2], "label": [0.0, 1.0, 0.0]}), tmp_path / "labels.parquet")
    argv = ["--predictions", run_output["out"], "--labels", str(tmp_path / "labels.parquet"), "--key", "id",
            "--label", "label", "--score", "score", "--out", str(tmp_path / "ev")]
    assert main(argv, spark=spark) == 2
    assert "key 'id' is not unique (2 appears 2 times)" in capsys.readouterr().err


@pytest.mark.slow  # a fresh process: its own JVM and Spark session
def test_gate_exits_3_as_a_command(run_output: dict[str, Any], tmp_path: Path) -> None:
    """The whole command in a fresh process, as a DAG task runs it."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "batchscore", "evaluate", *_argv(run_output, "--out", str(tmp_path),
                                                                 "--gate", "auc_pr>=0.99",
                                                                 "--conf", "spark.master=local[1]")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stderr
    failed = [ln for ln in proc.stderr.splitlines() if ln.startswith("gate failed: ")]
    assert len(failed) == 1 and failed[0].startswith("gate failed: auc_pr>=0.99: auc_pr = 0."), proc.stderr
    assert proc.stdout.startswith("evaluate: 290 rows")


def test_multiclass_plots_one_curve_per_class_and_regression_none() -> None:
    pytest.importorskip("matplotlib")
    curve = Curve(positives=2, negatives=2, auc_roc=0.75, auc_pr=0.8, thresholds=[0.9, 0.5, 0.1], tp=[1, 2, 2],
                  fp=[0, 1, 2])
    metrics: dict[str, Number] = {"rows": 4, "classes": 2, "accuracy": 0.5, "log_loss": 0.7, "auc_roc_macro": 0.75}
    overall = GroupResult(name="all", rows={}, metrics=metrics, curves={"0": curve, "1": curve})
    plots = render_plots(Evaluation(task="multiclass", label="y", score="p", threshold=0.5, overall=overall))
    assert sorted(plots) == ["pr.png", "roc.png"] and all(v[:4] == b"\x89PNG" for v in plots.values())
    regression = GroupResult(name="all", rows={}, metrics={"rows": 4})
    assert render_plots(Evaluation(task="regression", label="y", score="p", threshold=0.5, overall=regression)) == {}


def test_parse_gate() -> None:
    g = parse_gate(" log_loss <= 0.5 ")
    assert (g.metric, g.op, g.value) == ("log_loss", "<=", 0.5)
    assert g.failure({"log_loss": 0.4}) is None
    assert g.failure({"log_loss": 0.6}) == "log_loss<=0.5: log_loss = 0.6"
    assert g.failure({"log_loss": None}) is not None  # undefined fails


# --- the numpy rank-sum AUC (small data, no Spark) ---


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_equals_brute_force_pairwise_auc(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.3).astype(int)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # coarse: many ties
    assert roc_auc(labels, scores) == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)


def test_roc_auc_edges() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert roc_auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(np.array([1, 1]), np.array([0.2, 0.3]))
