"""Progress of the scoring step, quiet TensorFlow logs, and the job's --quiet / --verbose."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from batchscore.run.progress import Progress, scoring_progress
from tests.scoring.test_score_job import DEMO_COLUMNS, PROJECT_ROOT

# while scoring: finished tasks (rows are known once the step ends)
PROGRESS_LINE = re.compile(r"INFO batchscore\.progress: scoring: (\d+/\d+ tasks|waiting for tasks), \d+s, "
                           r"ETA (\?|\d+:\d\d:\d\d)$")
DONE_LINE = re.compile(r"INFO batchscore\.progress: scoring: done, 1,200 rows, \d+ tasks in [\d.]+s$")
# TensorFlow's C++ start-up lines (absl format: I/W/E + MMDD), absl's preamble, oneDNN's notice
TF_CHATTER = re.compile(r"^[IWE]\d{4} \d\d:|absl::InitializeLog|oneDNN custom operations|cpu_feature_guard", re.M)


def test_progress_line_reads_rows_tasks_rate_and_eta() -> None:
    assert Progress(3, 10, 3_000, 10_000, 2.0).line() == (
        "scoring: 3,000 of 10,000 rows (3/10 tasks), 1,500 rows/s, ETA 0:00:05")
    assert Progress(2, 8, 500, None, 10.0).line() == "scoring: 500 of ~2,000 rows (2/8 tasks), 50 rows/s, ETA 0:00:30"
    assert Progress(0, 0, 0, None, 1.0).line() == "scoring: 0 rows (waiting for tasks), 0 rows/s, ETA ?"
    assert Progress(1, 4, None, None, 3600.0).line() == "scoring: 1/4 tasks, 3600s, ETA 3:00:00"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_progress_rewrites_one_line_and_ends_it(spark, demo_input, demo_model, monkeypatch, caplog) -> None:
    import batchscore
    from batchscore.run import progress

    monkeypatch.setattr(progress, "TERMINAL_SECONDS", 0.05)
    caplog.set_level(logging.INFO, logger="batchscore.progress")
    df = spark.read.parquet(demo_input).repartition(6)
    stats = batchscore.TaskStats()
    scored = batchscore.score_dataframe(df, demo_model, columns={"numeric": list(_numeric())}, keep=["id"],
                                        stats=stats)
    term = _Terminal()
    with scoring_progress(spark, df, stream=term) as done:
        rows = scored.collect()
        done.rows = stats.value["rows"]
    assert len(rows) == 1200
    shown = term.getvalue()
    assert shown.endswith("\n") and shown.count("\n") == 1  # one line, rewritten in place
    frames = shown.split("\r\x1b[2K")[1:]
    assert len(frames) >= 2 and frames[-1] == frames[-1].rstrip("\n") + "\n"
    assert re.fullmatch(r"scoring: done, 1,200 rows, 6 tasks in [\d.]+s\n", frames[-1])
    assert not [r for r in caplog.records if r.name == "batchscore.progress"]  # a terminal gets no log lines


def test_progress_is_off_when_its_logger_is_quiet(spark, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="batchscore.progress")
    term = _Terminal()
    with scoring_progress(spark, stream=term):
        spark.range(10).collect()
    assert term.getvalue() == ""


def _numeric() -> list[str]:
    from batchscore.demo_data import NUMERIC

    return list(NUMERIC)


def _run_job(tmp_path, demo_input: str, demo_model: str, name: str, *flags: str) -> subprocess.CompletedProcess[str]:
    job = tmp_path / "job.yaml"
    job.write_text("spark:\n  spark.master: local[2]\n  spark.ui.enabled: false\noutput:\n  keep_columns: [id]\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a fresh shell has it
    env.update(PYTHONPATH=PROJECT_ROOT, BATCHSCORE_PROGRESS_SECONDS="0.2")
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.score", "--config", str(job), *flags,
         "--set", f"input.path={demo_input}", "--set", f"model.path={demo_model}",
         "--set", f"output.path={tmp_path / name}", "--set", DEMO_COLUMNS],
        cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1,200 rows in, 1,200 scored" in proc.stdout
    return proc


@pytest.mark.slow
def test_job_logs_progress_to_a_pipe_without_tensorflow_chatter(tmp_path, demo_input, demo_model) -> None:
    proc = _run_job(tmp_path, demo_input, demo_model, "out")
    lines = proc.stderr.splitlines()
    periodic = [ln for ln in lines if PROGRESS_LINE.search(ln)]
    assert periodic, proc.stderr[-3000:]
    assert sum(bool(DONE_LINE.search(ln)) for ln in lines) == 1, proc.stderr[-3000:]
    assert "\r" not in proc.stderr  # no terminal rewriting in a log
    assert not TF_CHATTER.search(proc.stderr), proc.stderr[-3000:]
    assert "py4j" not in proc.stderr
    # TensorFlow was imported where its lines are born: by the pre-started daemon the workers came from
    workers = json.loads((tmp_path / "out" / "_manifest.json").read_text())["workers"]
    assert workers and all(w["daemon_prestarted"] == 1 and w["daemon_tf_import_s"] > 0
                           for w in workers.values()), workers


@pytest.mark.slow
def test_job_quiet_has_no_progress_and_verbose_keeps_tensorflow_logs(tmp_path, demo_input, demo_model) -> None:
    quiet = _run_job(tmp_path, demo_input, demo_model, "quiet", "--quiet")
    assert "batchscore.progress" not in quiet.stderr and "scoring:" not in quiet.stderr
    assert not TF_CHATTER.search(quiet.stderr), quiet.stderr[-3000:]
    verbose = _run_job(tmp_path, demo_input, demo_model, "verbose", "--verbose", "--quiet")
    assert TF_CHATTER.search(verbose.stderr), verbose.stderr[-3000:]  # the same run shows them when asked


def test_known_rows_from_the_plan_when_spark_states_them(spark, demo_input) -> None:
    from batchscore.run.progress import known_rows

    assert known_rows(spark.range(1234)) == 1234
    assert known_rows(spark.read.parquet(demo_input)) is None  # file sources state bytes, not rows
    assert known_rows(object()) is None
