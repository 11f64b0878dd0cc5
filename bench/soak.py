"""The soak: `python -m bench.soak` (make bench-soak).

One cold run of the Arrow lane (`--lanes arrow_lane,dataframe_lane` adds the
DataFrame lane) over 50M MLP rows (200 files of 250k rows, ~6.6 GB, made once into
bench/work/ from the same file pool as the cold benchmark), with the RSS of every
Spark Python worker sampled through the run; before it a cold 1M-row run of the
same lane gives the baseline. Checked: `rows_in = rows_scored + rows_quarantined`
exactly from the run's `_manifest.json`, `rows_in` equal to the rows generated, the
rows written, and the soak's peak worker RSS within 10% of the 1M-row run's.
Results: bench/results/soak.{md,json,png}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from typing import Any

from bench import coldrun, quiet
from bench.cold import PROFILES, RESULTS, WORK, machine_summary, make_workload
from bench.coldrun import LABELS, LANES

SOAK_ROWS = 50_000_000
BASELINE_ROWS = 1_000_000
RSS_TOLERANCE = 0.10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.soak", description=__doc__.split("\n", 1)[0])
    p.add_argument("--rows", type=int, default=SOAK_ROWS)
    p.add_argument("--baseline-rows", type=int, default=BASELINE_ROWS)
    p.add_argument("--rows-per-file", type=int, default=250_000)
    p.add_argument("--lanes", default="arrow_lane", help="comma-separated: arrow_lane, dataframe_lane")
    p.add_argument("--out-dir", help="default: bench/results for the default sizes, else bench/work/results")
    p.add_argument("--work", default=WORK)
    p.add_argument("--dry-run", action="store_true", help="print the plan; generate and run nothing")
    return p.parse_args(argv)


def rss_check(soak: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Peak worker RSS of the soak against the baseline run (sampled, and the manifests' own figure)."""
    out: dict[str, Any] = {"tolerance": RSS_TOLERANCE}
    for name, get in (("sampled", lambda r: r.get("peak_worker_rss_mb")),
                      ("manifest", lambda r: (r.get("manifest") or {}).get("peak_worker_rss_mb"))):
        s, b = get(soak), get(base)
        ratio = s / b if s and b else None
        out[name] = {"soak_mb": s, "baseline_mb": b, "ratio": ratio,
                     "within": None if ratio is None else ratio <= 1 + RSS_TOLERANCE}
    return out


def rows_check(rec: dict[str, Any], rows: int) -> dict[str, Any]:
    """`rows_in = rows_scored + rows_quarantined` exactly, rows_in = rows generated, rows written = scored."""
    m = rec.get("manifest") or {}
    r_in, r_ok, r_q = m.get("rows_in"), m.get("rows_scored"), m.get("rows_quarantined")
    balanced = None if r_in is None else r_in == (r_ok or 0) + (r_q or 0)
    return {"rows_generated": rows, "rows_in": r_in, "rows_scored": r_ok, "rows_quarantined": r_q,
            "rows_written": rec.get("rows_written"), "balanced": balanced, "all_read": r_in == rows,
            "written_equals_scored": rec.get("rows_written") == r_ok}


def soak_lane(key: str, a: argparse.Namespace, th: quiet.Thresholds) -> dict[str, Any]:
    """Baseline then soak, both cold; returns both records and the checks."""
    p = replace(PROFILES["full"], rows_per_file=a.rows_per_file)
    own: set[int] = set()
    res: dict[str, Any] = {"key": key}
    for tag, rows in (("baseline", a.baseline_rows), ("soak", a.rows)):
        w = make_workload(p, rows, work=a.work)
        cfg = coldrun.lane_config(w, os.path.join(a.work, "cold-configs", f"soak-{rows}.yaml"))
        run_dir = os.path.join(a.work, "soak-runs", f"{key}-{tag}")
        _say(f"{key} {tag}: {rows:,} rows, cold")
        rec = coldrun.timed_run(key, w, run_dir=run_dir, own_sessions=own, th=th, config=cfg, series=True)
        _say(f"{key} {tag}: {rec['seconds']:.1f} s, ok={rec['ok']} {'; '.join(rec['problems'])}")
        rec["rows_check"] = rows_check(rec, rows)
        if rec["ok"]:
            shutil.rmtree(run_dir, ignore_errors=True)
        res[tag] = rec
    res["rss_check"] = rss_check(res["soak"], res["baseline"])
    quiet.clear_own_leftovers(own)
    return res


def _say(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _yes(v: bool | None) -> str:
    return "n/a" if v is None else ("**yes**" if v else "**NO**")


def markdown(res: dict[str, Any]) -> str:
    from bench.report import _machine_line

    out = [f"# Soak: {res['rows']:,} MLP rows, one cold run per lane", "",
           f"Machine: {_machine_line(res['machine'])}.", "",
           f"Started {res['started_at']}, finished {res.get('finished_at')}. Load average (1/5/15) at start "
           + " / ".join(f"{x:.2f}" for x in res["loadavg_start"]) + ", at end "
           + " / ".join(f"{x:.2f}" for x in res.get("loadavg_end", [0, 0, 0])) + ".", "",
           f"Baseline: a cold {res['baseline_rows']:,}-row run of the same lane just before. Worker RSS sampled "
           f"every {coldrun.SAMPLE_S:g} s (Spark's Python workers: forked by pyspark.daemon under the JVM).", ""]
    for lane in res["lanes"]:
        s, b, rc, rss = lane["soak"], lane["baseline"], lane["soak"]["rows_check"], lane["rss_check"]
        c = s["contention"]
        out += [f"## {LABELS[lane['key']]}", "",
                "| run | rows | wall s | contended | model loads | peak worker RSS MB (sampled / manifest) |",
                "|---|---|---|---|---|---|"]
        for tag, r in (("baseline", b), ("soak", s)):
            m = r.get("manifest") or {}
            why = "; ".join(r["contention"]["reasons"]) or "no"
            out.append(f"| {tag} | {r['rows']:,} | {r['seconds']:.1f} | {why} "
                       f"| {m.get('model_loads')} | {r.get('peak_worker_rss_mb')} / {m.get('peak_worker_rss_mb')} |")
        out += ["", f"- rows_in = rows_scored + rows_quarantined: {_yes(rc['balanced'])} "
                f"({rc['rows_in']} = {rc['rows_scored']} + {rc['rows_quarantined']}); all {rc['rows_generated']:,} "
                f"rows read: {_yes(rc['all_read'])}; rows written = rows scored: {_yes(rc['written_equals_scored'])}",
                f"- peak worker RSS within {rss['tolerance']:.0%} of the {res['baseline_rows']:,}-row run: sampled "
                f"{_yes(rss['sampled']['within'])} (×{rss['sampled']['ratio'] or 0:.3f}), manifest "
                f"{_yes(rss['manifest']['within'])} (×{rss['manifest']['ratio'] or 0:.3f})",
                f"- load1 before {c['load1_before']:.2f}, machine busy before {c['pre_busy']:.0%}, "
                f"foreign CPU during {c['foreign_cores']:.2f} cores", ""]
    return "\n".join(out)


def chart(res: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(res["lanes"]), 1, figsize=(12, 4.5 * len(res["lanes"])), squeeze=False)
    for ax, lane in zip(axes[:, 0], res["lanes"], strict=True):
        series = lane["soak"].get("series") or []
        pids = sorted({pid for s in series for pid in s["workers"]})
        for pid in pids:
            pts = [(s["t"], s["workers"][pid]) for s in series if pid in s["workers"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.9, label=f"worker {pid}")
        base = lane["baseline"].get("peak_worker_rss_mb")
        if base:
            ax.axhline(base, color="black", ls="--", lw=0.8, label=f"{res['baseline_rows']:,}-row peak")
            ax.axhline(base * (1 + RSS_TOLERANCE), color="red", ls=":", lw=0.8, label="+10%")
        ax.set(xlabel="seconds since start", ylabel="RSS MB",
               title=f"{LABELS[lane['key']]}: Python worker RSS, {res['rows']:,} rows cold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    lanes = [k for k in a.lanes.split(",") if k]
    bad = [k for k in lanes if k not in LANES]
    if bad:
        raise SystemExit(f"unknown lane(s) {', '.join(bad)}; known: {', '.join(LANES)}")
    if a.rows % a.rows_per_file or a.baseline_rows % a.rows_per_file:
        raise SystemExit("--rows and --baseline-rows must be multiples of --rows-per-file")
    th = quiet.Thresholds(max_load1=float(len(os.sched_getaffinity(0))))
    if a.dry_run:
        gb = a.rows * (8 + 32 * 4) / 1e9  # plain-encoded Parquet is about the raw size
        print(f"soak: {', '.join(lanes)}; baseline {a.baseline_rows:,} rows then {a.rows:,} rows "
              f"({a.rows // a.rows_per_file} files of {a.rows_per_file:,}, ~{gb:.1f} GB) from "
              f"{os.path.join(a.work, 'data')}; thresholds {asdict(th)}")
        return 0
    default = a.rows == SOAK_ROWS and a.baseline_rows == BASELINE_ROWS
    out_dir = a.out_dir or (RESULTS if default else os.path.join(a.work, "results"))
    name = "soak" if default else "soak-custom"
    res: dict[str, Any] = {"benchmark": "soak", "rows": a.rows, "baseline_rows": a.baseline_rows,
                           "rows_per_file": a.rows_per_file, "thresholds": asdict(th), "machine": machine_summary(),
                           "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                           "loadavg_start": list(os.getloadavg()), "lanes": []}
    for key in lanes:
        res["lanes"].append(soak_lane(key, a, th))
    res["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    res["loadavg_end"] = list(os.getloadavg())
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    with open(base + ".md", "w") as fh:
        fh.write(markdown(res))
    chart(res, base + ".png")
    _say(f"wrote {base}.json|md|png")
    ok = all(ln["soak"]["rows_check"]["balanced"] and ln["soak"]["rows_check"]["all_read"] for ln in res["lanes"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
