"""The cold benchmark's protocol (bench.cold, bench.quiet, bench.coldstats, bench.cold_report).

No test asserts a timing: the fit is checked on known points, the contention checks on a real
busy process beside them, the rotation and repeats on recorded runs, the report on what it
renders. The end-to-end smoke (real Spark lane, real TF, real Parquet) is marked slow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pyarrow.parquet as pq
import pytest

from bench import cold, coldrun, quiet
from bench.cold_report import markdown, write_all
from bench.colddata import ensure_mlp_linked
from bench.coldstats import fit_line, summarize
from bench.workloads import ensure_mlp_data

# ---------------------------------------------------------------- fit and summary


def test_fit_recovers_a_known_line() -> None:
    xs = [1.0, 2.0, 5.0, 10.0, 20.0]
    fit = fit_line(xs, [16.7 + 0.68 * x for x in xs])
    assert fit is not None
    assert fit["intercept"] == pytest.approx(16.7)
    assert fit["slope"] == pytest.approx(0.68)
    assert fit["r2"] == pytest.approx(1.0)


def test_fit_r2_drops_with_scatter_and_needs_two_distinct_points() -> None:
    fit = fit_line([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert fit is not None and fit["slope"] == pytest.approx(0.8) and fit["r2"] == pytest.approx(0.64)
    assert fit_line([1.0], [2.0]) is None
    assert fit_line([2.0, 2.0], [1.0, 3.0]) is None


def _run(key: str, rows: int, seconds: float, *, contended: bool = False, ok: bool = True,
         accepted: bool = True, loads: int = 2) -> dict[str, Any]:
    c = quiet.Contention(reasons=["busy"] if contended else []).to_json()
    return {"key": key, "rows": rows, "seconds": seconds, "ok": ok, "accepted": accepted, "contention": c,
            "problems": [] if ok else ["exit 1"], "model_loads": loads, "peak_worker_rss_mb": 700.0,
            "own_cpu_s": 1.0, "round": 0, "attempt": 0, "manifest": {"peak_worker_rss_mb": 690.0}}


def _slots(table: dict[str, dict[int, list[float]]]) -> list[dict[str, Any]]:
    return [{"key": k, "rows": r, "round": i, "attempts": [_run(k, r, s)]}
            for k, pts in table.items() for r, secs in pts.items() for i, s in enumerate(secs)]


def test_summary_medians_fits_and_ratios_vs_bare_tf() -> None:
    m = 1_000_000
    slots = _slots({
        "bare_tf": {m: [5.0, 5.1, 4.9], 2 * m: [5.9, 5.8, 6.0], 10 * m: [12.3, 12.4, 12.2]},
        "arrow_lane": {m: [17.4, 17.3, 30.0], 2 * m: [18.1, 18.0, 18.2], 10 * m: [23.5, 23.4, 23.6]},
    })
    # a repeated (not accepted) contended attempt must not count
    slots[0]["attempts"].insert(0, _run("bare_tf", m, 99.0, contended=True, accepted=False))
    s = summarize(slots, contenders=["bare_tf", "arrow_lane"], points=(m, 2 * m, 10 * m),
                  ratio_rows=(2 * m, 10 * m), unit=m)
    assert s["bare_tf"]["points"][str(m)]["median_seconds"] == 5.0
    assert s["arrow_lane"]["points"][str(m)]["median_seconds"] == 17.4  # the 30 s outlier is not the median
    assert s["arrow_lane"]["fit"]["slope"] == pytest.approx(0.68, abs=0.02)
    assert s["arrow_lane"]["fit"]["intercept"] == pytest.approx(16.7, abs=0.1)
    r = s["arrow_lane"]["ratios_vs_bare_tf"][str(10 * m)]
    assert r["measured"] == pytest.approx(12.3 / 23.5)
    assert r["fit"] == pytest.approx(r["measured"], rel=0.02)
    assert s["bare_tf"]["ratios_vs_bare_tf"][str(2 * m)]["measured"] == pytest.approx(1.0)
    assert s["arrow_lane"]["points"][str(m)]["model_loads"] == [2]


# ---------------------------------------------------------------- rotation and repeats


def test_rotation_puts_every_contender_in_every_position() -> None:
    keys = ("bare_tf", "predict_batch_udf", "pandas_udf", "dataframe_lane", "arrow_lane", "ray_data")
    orders = [cold.rotation(keys, r, 0) for r in range(len(keys))]
    for pos in range(len(keys)):
        assert sorted(o[pos] for o in orders) == sorted(keys)
    assert all(sorted(o) == sorted(keys) for o in orders)
    assert cold.rotation(keys, 0, 1) != cold.rotation(keys, 0, 0)  # points rotate too
    assert cold.rotation(keys, 1, 0) == cold.rotation(keys, 0, 1)


class ScriptedRunner:
    """Stands in for coldrun.timed_run: each call returns the next scripted (contended, ok)."""

    def __init__(self, script: list[tuple[bool, bool]]) -> None:
        self.script, self.calls = list(script), 0

    def __call__(self, key: str, w: Any, **kw: Any) -> dict[str, Any]:
        contended, ok = self.script[self.calls]
        self.calls += 1
        os.makedirs(kw["run_dir"], exist_ok=True)
        rec = _run(key, w.rows, 10.0 + self.calls, contended=contended, ok=ok)
        rec["run_dir"] = kw["run_dir"]
        return rec


def _w(rows: int = 100) -> Any:
    from bench.workloads import Workload

    return Workload(name="mlp", title="t", data_path="d", model_path="m", rows=rows, input_name="features",
                    columns=("f0",), stacked=True, tensor_shape=(1,), batch_size=10)


def _slot(script: list[tuple[bool, bool]], max_repeats: int, tmp_path: Any) -> tuple[cold.Slot, ScriptedRunner]:
    runner = ScriptedRunner(script)
    slot = cold.run_slot("arrow_lane", _w(), round_index=0, max_repeats=max_repeats, run_root=str(tmp_path),
                         own_sessions=set(), th=quiet.Thresholds(), config=None, runner=runner)
    return slot, runner


def test_a_contended_run_is_repeated_and_the_clean_one_counts(tmp_path: Any) -> None:
    slot, runner = _slot([(True, True), (False, True), (False, True)], 2, tmp_path)
    assert runner.calls == 2
    assert [a["accepted"] for a in slot.attempts] == [False, True]
    acc = slot.accepted()
    assert acc is not None and acc["seconds"] == 12.0


def test_repeats_are_bounded_and_the_last_contended_run_counts_flagged(tmp_path: Any) -> None:
    slot, runner = _slot([(True, True)] * 5, 2, tmp_path)
    assert runner.calls == 3
    acc = slot.accepted()
    assert acc is slot.attempts[-1] and acc["contention"]["contended"]


def test_a_failed_run_is_not_repeated_and_does_not_count(tmp_path: Any) -> None:
    slot, runner = _slot([(False, False), (False, True)], 2, tmp_path)
    assert runner.calls == 1 and slot.accepted() is None
    assert os.path.isdir(slot.attempts[0]["run_dir"])  # a failed run's logs stay


# ---------------------------------------------------------------- contention checks


@pytest.fixture
def spinner() -> Any:
    """A busy process in a session of its own (not the harness's)."""
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
    time.sleep(0.3)
    yield p
    p.kill()
    p.wait()


def test_foreign_cpu_is_attributed_to_the_busy_process(spinner: Any) -> None:
    s0 = quiet.cpu_snapshot()
    time.sleep(1.5)
    s1 = quiet.cpu_snapshot()
    foreign = quiet.foreign_cpu_seconds(s0, s1, set())
    without_spinner = quiet.foreign_cpu_seconds(s0, s1, {spinner.pid})
    assert foreign - without_spinner >= 0.15  # the spinner's CPU is foreign unless its session is ours
    c = quiet.after_run(quiet.Contention(), quiet.Thresholds(), wall_s=1.5, own_cpu_s=0.0,
                        foreign_cpu_s=foreign, run_busy=0.5)
    assert c.contended and any("foreign CPU" in r for r in c.reasons)


def test_before_run_marks_a_busy_machine(spinner: Any) -> None:
    cores = os.cpu_count() or 1
    th = quiet.Thresholds(max_load1=1000.0, max_pre_busy=0.5 / cores, settle_s=1.0, settle_max_s=0.0)
    c = quiet.before_run(set(), th, leftover_wait_s=0.0)
    assert c.pre_busy >= 0.6 / cores  # one spinning process: about one core of `cores`
    assert c.contended and any("busy before" in r for r in c.reasons)
    assert c.to_json()["contended"] is True


def test_load1_alone_does_not_make_a_run_contended() -> None:
    # load1 lags the harness's own previous run by a minute: recorded, waited for, never a verdict
    th = quiet.Thresholds(max_load1=-1.0, max_pre_busy=1.01, settle_s=0.2, settle_max_s=0.0)
    c = quiet.before_run(set(), th, leftover_wait_s=0.0)
    assert c.load1_before > th.max_load1
    assert not any("load1" in r for r in c.reasons)


def test_after_run_without_foreign_cpu_adds_no_reason() -> None:
    c = quiet.after_run(quiet.Contention(), quiet.Thresholds(), wall_s=10.0, own_cpu_s=15.0,
                        foreign_cpu_s=0.5, run_busy=0.8)
    assert not c.contended and c.foreign_cores == pytest.approx(0.05)


def test_own_leftovers_are_ended_and_foreign_ones_left_alone() -> None:
    code = "import time; time.sleep(120)"
    own = subprocess.Popen([sys.executable, "-c", code, "bench.oneshot"], start_new_session=True)
    foreign = subprocess.Popen([sys.executable, "-c", code, "bench.oneshot"], start_new_session=True)
    try:
        time.sleep(0.3)
        found = {s.pid: s for s in quiet.stray_processes({own.pid})}
        assert found[own.pid].own and found[own.pid].kind == "bench"
        assert not found[foreign.pid].own
        ended = quiet.clear_own_leftovers({own.pid}, wait_s=0.2)
        assert [s.pid for s in ended] == [own.pid] and own.wait(timeout=10) is not None
        assert foreign.poll() is None
    finally:
        for p in (own, foreign):
            p.kill()
            p.wait()


# ---------------------------------------------------------------- data, commands, report


def test_linked_dataset_matches_a_generated_one_file_for_file(tmp_path: Any) -> None:
    linked = ensure_mlp_linked(str(tmp_path / "a"), 300, rows_per_file=100)
    made = ensure_mlp_data(str(tmp_path / "b"), 300, rows_per_file=100)
    names = sorted(n for n in os.listdir(linked) if n.endswith(".parquet"))
    assert names == sorted(n for n in os.listdir(made) if n.endswith(".parquet")) and len(names) == 3
    for n in names:
        assert pq.read_table(os.path.join(linked, n)).equals(pq.read_table(os.path.join(made, n)))
        assert os.stat(os.path.join(linked, n)).st_nlink == 2  # a hard link into the pool
    bigger = ensure_mlp_linked(str(tmp_path / "a"), 500, rows_per_file=100)
    assert os.path.samefile(os.path.join(bigger, names[0]), os.path.join(linked, names[0]))


def test_lane_command_and_config_are_what_a_user_runs(tmp_path: Any) -> None:
    from batchscore.config.loader import load_config

    w = _w(1000)
    cfg_path = coldrun.lane_config(w, str(tmp_path / "c.yaml"))
    argv = coldrun.command("arrow_lane", w, out="/x/out", loads_dir="/x/l", config=cfg_path)
    assert argv[1:5] == ["-m", "batchscore", "score", "--config"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(cfg_path, sets)
    assert cfg.input.lane == "arrow" and cfg.output.path == "/x/out"
    assert cfg.model.batch_size == 10 and cfg.input.columns == {"features": ["f0"]}
    assert cfg.spark["spark.master"] == "local[2]"
    peer = coldrun.command("predict_batch_udf", w, out="/x/out", loads_dir="/x/l")
    assert peer[peer.index("--master") + 1] == "local[2]" and "spark.driver.memory=4g" in peer
    assert coldrun.command("ray_data", w, out="/o", loads_dir="/l")[0] == coldrun.ray_python()


def _result(tmp_path: Any) -> dict[str, Any]:
    m = 1_000_000
    slots = _slots({"bare_tf": {m: [5.0], 2 * m: [6.0]}, "arrow_lane": {m: [17.4], 2 * m: [18.1]}})
    p = cold.PROFILES["tiny"]
    settings = {**cold.asdict(p), "points": [m, 2 * m], "ratio_rows": [m, 2 * m], "unit": m}
    return {"settings": settings, "thresholds": cold.asdict(quiet.Thresholds()), "machine": cold.machine_summary(),
            "started_at": "t0", "finished_at": "t1", "elapsed_s": 60, "loadavg_start": [0.1, 0.2, 0.3],
            "loadavg_end": [0.4, 0.5, 0.6], "slots": slots, "unavailable": {"ray_data": "no venv"},
            "output_checks": {"rows": m, "arrow_lane": {"same_ids": True, "max_abs_diff_vs_bare_tf": 1e-7,
                                                        "ok": True}},
            "summary": summarize(slots, contenders=["bare_tf", "arrow_lane"], points=(m, 2 * m),
                                 ratio_rows=(m, 2 * m), unit=m)}


def test_report_renders_markdown_json_and_png(tmp_path: Any) -> None:
    res = _result(tmp_path)
    md = markdown(res)
    assert "## Fit: seconds = fixed cost + slope × rows" in md
    assert "| batchscore Arrow lane | 16.70 | 0.700 | 1.0000 |" in md
    assert "ray_data: no venv" in md and "Warm figures (secondary)" in md
    assert "load1" in md and "0.10 / 0.20 / 0.30" in md
    paths = write_all(res, str(tmp_path / "out"), "cold-test")
    assert json.load(open(paths[0]))["summary"]["arrow_lane"]["fit"]["slope"] == pytest.approx(0.7)
    assert os.path.getsize(paths[2]) > 10_000  # a real PNG


def test_dry_run_plans_without_running(capsys: pytest.CaptureFixture[str]) -> None:
    assert cold.main(["--profile", "full", "--dry-run", "--contenders", "bare_tf,arrow_lane"]) == 0
    out = capsys.readouterr().out
    p = cold.PROFILES["full"]
    assert f"{2 * len(p.points) * p.runs} timed runs" in out and "-m batchscore score" in out and "10,000,000" in out


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_cold_run_of_two_contenders_end_to_end(tmp_path: Any) -> None:
    """bare TF and the Arrow lane as whole commands on 10k rows: outputs checked, report written."""
    rc = cold.main(["--profile", "tiny", "--contenders", "bare_tf,arrow_lane", "--points", "10000",
                    "--runs", "1", "--max-load", "1000", "--settle", "0.2", "--work", str(tmp_path / "work"),
                    "--out-dir", str(tmp_path / "res")])
    assert rc == 0
    res = json.load(open(tmp_path / "res" / "cold-tiny-custom.json"))
    runs = [a for s in res["slots"] for a in s["attempts"]]
    assert {a["key"] for a in runs} == {"bare_tf", "arrow_lane"} and all(a["ok"] for a in runs)
    assert all(a["rows_written"] == 10_000 for a in runs)
    lane = next(a for a in runs if a["key"] == "arrow_lane")
    assert lane["manifest"]["lane"] == "arrow" and lane["manifest"]["model_loads"] >= 1
    # workers forked from the daemon that imported TF for them may use under 0.5 s of CPU on 10k
    # rows (not "scoring_workers" then); seen and sampled they must be
    assert lane["peak_worker_rss_mb"] and lane["workers_seen"] >= 1
    assert res["output_checks"]["arrow_lane"]["ok"], res["output_checks"]
    assert not [s for s in quiet.stray_processes({a["pid"] for a in runs}) if s.own]  # nothing left behind
    assert os.path.isfile(tmp_path / "res" / "cold-tiny-custom.png")


def test_soak_checks_row_accounting_exactly_and_rss_within_ten_percent() -> None:
    from bench.soak import rows_check, rss_check

    m = {"rows_in": 50_000_000, "rows_scored": 49_999_990, "rows_quarantined": 10, "peak_worker_rss_mb": 700.0}
    good = rows_check({"manifest": m, "rows_written": 49_999_990}, 50_000_000)
    assert good["balanced"] and good["all_read"] and good["written_equals_scored"]
    off = rows_check({"manifest": {**m, "rows_quarantined": 9}, "rows_written": 49_999_990}, 50_000_000)
    assert off["balanced"] is False
    assert rows_check({"manifest": None, "rows_written": None}, 10)["balanced"] is None
    base = {"peak_worker_rss_mb": 700.0, "manifest": {"peak_worker_rss_mb": 690.0}}
    ok = rss_check({"peak_worker_rss_mb": 769.0, "manifest": {"peak_worker_rss_mb": 700.0}}, base)
    assert ok["sampled"]["within"] and ok["manifest"]["within"]
    high = rss_check({"peak_worker_rss_mb": 771.0, "manifest": {"peak_worker_rss_mb": 760.0}}, base)
    assert high["sampled"]["within"] is False and high["manifest"]["within"] is False


def test_scoring_workers_are_told_apart_from_daemons() -> None:
    """Only processes that score count as workers (their RSS is the soak's figure): PySpark's
    forks and those of batchscore's daemon (pre-started or launched), not the daemons or the stand-in."""
    _is_worker = coldrun._is_worker
    py = ["/venv/bin/python", "-m"]
    java = ["java", "-cp", "x", "org.apache.spark.deploy.SparkSubmit"]
    pre = [*py, "batchscore.udfs.daemon", "--prestart", "/tmp/d/daemon.sock"]
    launched = [*py, "batchscore.udfs.daemon", "pyspark.worker"]
    driver = [*py, "batchscore", "score", "--config", "x.yaml"]
    assert _is_worker(pre, pre, root=False, key="arrow_lane")  # a fork of the pre-started daemon
    assert not _is_worker(pre, driver, root=False, key="arrow_lane")  # the pre-started daemon itself
    assert not _is_worker(launched, java, root=False, key="arrow_lane")  # the stand-in (or a daemon serving itself)
    assert _is_worker(launched, launched, root=False, key="arrow_lane")  # a fork of a daemon serving itself
    assert _is_worker([*py, "pyspark.daemon"], [*py, "pyspark.daemon"], root=False, key="predict_batch_udf")
    assert not _is_worker([*py, "pyspark.daemon"], java, root=False, key="predict_batch_udf")
