"""The warm Spark Connect benchmark's figures and report: targets, Markdown, JSON and PNG.

Pure Python over the harness's records (bench/connect.py) and the cold benchmark's
summary (bench/coldstats.py), so the arithmetic is tested without Spark.
"""
from __future__ import annotations

from typing import Any

from bench.cold_report import _f, chart, fits_table, points_table, runs_table
from bench.cold_report import write_all as cold_write_all
from bench.report import _compact, _machine_line

BARE, OURS, PBU = "bare_tf", "arrow_lane_connect", "predict_batch_udf_connect"
LABELS = {BARE: "bare TF (cold process)", OURS: "batchscore score --remote (Arrow lane)",
          PBU: "predict_batch_udf over Connect"}
MAX_FIXED_S = 3.0  # our fixed cost per run (the fit's intercept)
MIN_VS_BARE = 1.0  # bare TF's seconds / ours at the target point
MIN_VS_PBU = 1.6  # predict_batch_udf's seconds / ours at the target point


def speedup(summary: dict[str, Any], key: str, other: str, rows: int) -> float | None:
    """`other`'s median seconds over `key`'s at `rows` (> 1: `key` is faster); None if either is missing."""
    mine = summary.get(key, {}).get("points", {}).get(str(rows), {}).get("median_seconds")
    theirs = summary.get(other, {}).get("points", {}).get(str(rows), {}).get("median_seconds")
    return theirs / mine if mine and theirs else None


def later_loads(runs: list[dict[str, Any]]) -> list[int | None]:
    """`model_loads` of our successful runs after the first one (the warm-up counts), in run order."""
    ok = [r for r in runs if r["key"] == OURS and r["ok"]]
    return [r.get("model_loads") for r in ok[1:]]


def _verdict(value: float | None, bound: float, *, at_most: bool) -> bool | None:
    if value is None:
        return None
    return value <= bound if at_most else value >= bound


def targets(summary: dict[str, Any], *, target_rows: int, loads: list[int | None]) -> list[dict[str, Any]]:
    """The issue's four targets, each with the figure behind it and met (True), not met (False) or n/a (None)."""
    fixed = (summary.get(OURS, {}).get("fit") or {}).get("intercept")
    vs_bare, vs_pbu = speedup(summary, OURS, BARE, target_rows), speedup(summary, OURS, PBU, target_rows)
    loads_met = None if not loads or any(x is None for x in loads) else all(x == 0 for x in loads)
    at = f"{target_rows:,} rows"
    return [
        {"target": f"fixed cost per run <= {MAX_FIXED_S:g} s (fit intercept)", "value": fixed,
         "met": _verdict(fixed, MAX_FIXED_S, at_most=True)},
        {"target": f"Arrow lane >= {MIN_VS_BARE:g}x bare TF at {at} (wall, medians)", "value": vs_bare,
         "met": _verdict(vs_bare, MIN_VS_BARE, at_most=False)},
        {"target": f"Arrow lane >= {MIN_VS_PBU:g}x predict_batch_udf over the same server at {at}",
         "value": vs_pbu, "met": _verdict(vs_pbu, MIN_VS_PBU, at_most=False)},
        {"target": "a second run of the same model loads it 0 times (model_loads of runs 2..n)", "value": loads,
         "met": loads_met},
    ]


def _met(m: bool | None) -> str:
    return "n/a" if m is None else ("**met**" if m else "**not met**")


def _value(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join("–" if x is None else str(x) for x in v) or "–"
    return _f(v, "{:.2f}")


def _phases(p: dict[str, Any] | None) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in (p or {}).items()) or "–"


def ours_table(res: dict[str, Any]) -> list[str]:
    """Our runs (warm-up first) with the manifest's own figures."""
    lines = ["| run | rows | seconds | ok | model loads | seconds scoring | seconds by phase |",
             "|---|---|---|---|---|---|---|"]
    runs = [("warm-up", w) for w in res.get("warmups", []) if w["key"] == OURS]
    runs += [(f"r{a['round']} a{a['attempt']}", a) for s in res["slots"] if s["key"] == OURS for a in s["attempts"]]
    for name, a in runs:
        m = a.get("manifest") or {}
        ok = "yes" if a["ok"] else "no: " + "; ".join(a["problems"])
        lines.append(f"| {name} | {a['rows']:,} | {a['seconds']:.2f} | {ok} | {_value(a.get('model_loads'))} "
                     f"| {_f(m.get('seconds_scoring'))} | {_phases(m.get('seconds_by_phase'))} |")
    return lines


def _header(res: dict[str, Any]) -> list[str]:
    st, srv = res["settings"], res.get("server") or {}
    la0, la1 = res.get("loadavg_start") or [0, 0, 0], res.get("loadavg_end") or [0, 0, 0]
    return [f"# Warm Spark Connect server benchmark: `{st['name']}` (MLP)", "",
            f"Machine: {_machine_line(res['machine'])}.", "",
            f"Started {res['started_at']}, finished {res.get('finished_at')}, {res.get('elapsed_s', 0) / 60:.1f} min. "
            f"Load average (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, "
            f"at end {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f}.", "",
            f"Bare TF first, cold processes, no server alive. Then one local Connect server "
            f"(`{srv.get('master')}`, {srv.get('url')}, started in {_f(srv.get('start_s'))} s, untimed), one untimed "
            f"warm-up run per Connect contender, and each run a fresh client process against it, order alternating by "
            f"round. {st['runs']} rounds over {', '.join(f'{p:,}' for p in st['points'])} rows "
            f"({st['rows_per_file']:,} rows a file, model batch {st['batch_size']:,}); each run timed from its start "
            f"to its exit with the output committed; figures are medians. Ratios: the other's seconds / ours "
            f"(> 1: ours is faster).", ""]


def markdown(res: dict[str, Any]) -> str:
    out = _header(res)
    failed = {k: c for k, c in res["summary"].items() if c["failed_runs"]}
    for key, c in failed.items():
        out += [f"**{LABELS.get(key, key)}: {c['failed_runs']} failed run(s)**: " + " | ".join(c["failures"]), ""]
    for w in res.get("warmups", []):
        if not w["ok"]:
            out += [f"Warm-up of {LABELS.get(w['key'], w['key'])} failed: {'; '.join(w['problems'])}", ""]
    out += ["## Targets", ""]
    out += [f"- {t['target']}: {_value(t['value'])} → {_met(t['met'])}" for t in res["targets"]]
    out += ["", "## Fit: seconds = fixed cost + slope × rows", "", *fits_table(res, LABELS), "",
            f"× predict_batch_udf at {_compact(res['settings']['target_rows'])} rows (its seconds / ours): "
            f"{_f(res['ratios'].get('vs_predict_batch_udf'))}.", "",
            "## Median seconds per point", "", *points_table(res, LABELS), "",
            "## Our runs (the manifest's figures)", "", *ours_table(res), ""]
    checks = res.get("output_checks") or {}
    if checks:
        out += [f"## Outputs vs bare TF ({checks.get('rows', 0):,} rows, round 0)", ""]
        out += [f"- {k}: same ids {v['same_ids']}, max |Δ| {_f(v['max_abs_diff_vs_bare_tf'], '{:.2e}')}"
                + ("" if v["ok"] else " **MISMATCH**") for k, v in checks.items() if isinstance(v, dict)]
        out.append("")
    out += ["## Every run", "", *runs_table(res), ""]
    return "\n".join(out)


def write_all(res: dict[str, Any], directory: str, name: str) -> list[str]:
    """`<directory>/<name>.json|md|png`, as the cold report writes them; returns the paths written."""
    def draw(r: dict[str, Any], path: str) -> None:
        chart(r, path, LABELS, title="Warm Connect server: medians, runs, fits (bare TF cold)")

    return cold_write_all(res, directory, name, text=markdown(res), draw=draw)
