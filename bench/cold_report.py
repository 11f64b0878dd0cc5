"""The cold benchmark's report: Markdown, JSON and a PNG chart (bench/results/cold.*)."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from bench.coldrun import LABELS
from bench.report import _compact, _machine_line

WARM_JSON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "full.json")


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _unit_name(unit: int) -> str:
    return "1M rows" if unit == 1_000_000 else f"{unit:,} rows"


def fits_table(res: dict[str, Any], labels: Mapping[str, str] = LABELS) -> list[str]:
    s, unit = res["summary"], res["settings"]["unit"]
    ratio_rows = [str(r) for r in res["settings"]["ratio_rows"]]
    head = ["contender", "fixed cost (s)", f"s per {_unit_name(unit)}", "R²"]
    head += [f"× bare TF @ {_compact(int(r))} (measured / fit)" for r in ratio_rows]
    head += ["model loads", "peak worker RSS MB (sampled / manifest)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, c in s.items():
        fit = c["fit"] or {}
        ratios = [c["ratios_vs_bare_tf"].get(r, {}) for r in ratio_rows]
        loads = sorted({x for p in c["points"].values() for x in p["model_loads"]})
        rss = [p["peak_worker_rss_mb"] for p in c["points"].values() if p["peak_worker_rss_mb"]]
        mrss = [p["manifest_peak_worker_rss_mb"] for p in c["points"].values() if p["manifest_peak_worker_rss_mb"]]
        row = [labels.get(key, key), _f(fit.get("intercept")), _f(fit.get("slope"), "{:.3f}"),
               _f(fit.get("r2"), "{:.4f}")]
        row += [f"{_f(r.get('measured'))} / {_f(r.get('fit'))}" for r in ratios]
        row += [", ".join(map(str, loads)) or "–",
                f"{_f(max(rss) if rss else None, '{:,.0f}')} / {_f(max(mrss) if mrss else None, '{:,.0f}')}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def points_table(res: dict[str, Any], labels: Mapping[str, str] = LABELS) -> list[str]:
    points = [str(p) for p in res["settings"]["points"]]
    lines = ["| contender | " + " | ".join(f"{_compact(int(p))} rows" for p in points) + " |",
             "|---|" + "---|" * len(points)]
    for key, c in res["summary"].items():
        cells = []
        for p in points:
            v = c["points"][p]
            flag = f", {v['contended_runs']} contended" if v["contended_runs"] else ""
            cells.append(f"{_f(v['median_seconds'])} s ({v['runs']} runs{flag})")
        lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
    return lines


def runs_table(res: dict[str, Any]) -> list[str]:
    lines = ["| round | rows | contender | attempt | seconds | load1 before / after | busy before | busy during "
             "| foreign cores | own CPU s | peak worker RSS MB | loads | counts | notes |",
             "|" + "---|" * 14]
    for slot in res["slots"]:
        for a in slot["attempts"]:
            c = a["contention"]
            notes = "; ".join(c["reasons"] + a["problems"] + (["repeated"] if not a.get("accepted") else []))
            lines.append(
                f"| {a['round']} | {a['rows']:,} | {a['key']} | {a['attempt']} | {a['seconds']:.2f} "
                f"| {c['load1_before']:.2f} / {c['load1_after']:.2f} | {c['pre_busy']:.0%} | {c['run_busy']:.0%} "
                f"| {c['foreign_cores']:.2f} | {a['own_cpu_s']:.1f} | {_f(a['peak_worker_rss_mb'], '{:,.0f}')} "
                f"| {a.get('model_loads') if a.get('model_loads') is not None else '–'} "
                f"| {'yes' if a.get('accepted') else 'no'} | {notes or '–'} |")
    return lines


def warm_table(path: str = WARM_JSON) -> list[str]:
    """The old warm harness's medians (bench/run.py), labelled secondary."""
    try:
        with open(path) as fh:
            warm = json.load(fh)
    except (OSError, ValueError):
        return ["(no warm results at bench/results/full.json)"]
    lines = [f"Warm, after {warm.get('settings', {}).get('warmup_rounds', '?')} warm-up rounds, one shared JVM "
             f"(bench/run.py, {warm.get('started_at')}); **secondary**: not the cold cost a nightly job pays.", "",
             "| workload | contender | median s (warm) | × bare TF (warm) |", "|---|---|---|---|"]
    for wn, w in (warm.get("workloads") or {}).items():
        for key, c in w.get("contenders", {}).items():
            lines.append(f"| {wn} ({w.get('rows', 0):,} rows) | {LABELS.get(key, key)} | "
                         f"{_f(c.get('median_seconds'))} | {_f(c.get('x_bare_tf'))} |")
    return lines


def markdown(res: dict[str, Any]) -> str:
    st, th = res["settings"], res["thresholds"]
    la0, la1 = res.get("loadavg_start") or [0, 0, 0], res.get("loadavg_end") or [0, 0, 0]
    out = [f"# Cold whole-command benchmark: `{st['name']}` ({st['workload']})", "",
           f"Machine: {_machine_line(res['machine'])}; Ray {res.get('ray_version') or 'n/a'}.", "",
           f"Started {res['started_at']}, finished {res.get('finished_at')}, {res.get('elapsed_s', 0) / 60:.1f} min. "
           f"Load average (1/5/15 min) at start {la0[0]:.2f} / {la0[1]:.2f} / {la0[2]:.2f}, "
           f"at end {la1[0]:.2f} / {la1[1]:.2f} / {la1[2]:.2f}.", "",
           f"Each run: a fresh command alone on the machine, timed from its start to its exit with the output "
           f"committed; {st['runs']} rounds over points {', '.join(f'{p:,}' for p in st['points'])} rows "
           f"({st['rows_per_file']:,} rows a file, model batch {st['batch_size']:,}), contender order rotated; "
           f"a contended run (machine > {th['max_pre_busy']:.0%} busy in the quiet sample before it, "
           f"foreign CPU > {th['max_foreign_cores']:g} cores during, or a foreign Spark/Ray/benchmark process "
           f"alive) is repeated up to {st['max_repeats']} times. Ratios: bare TF's seconds / the contender's "
           f"(> 1 is faster than bare TF).", ""]
    if res.get("cut_short"):
        out += [f"**Cut short**: {res['cut_short']} (`python -m bench.cold --from-partial`).", ""]
    if res.get("unavailable"):
        out += ["Not run: " + "; ".join(f"{k}: {v}" for k, v in res["unavailable"].items()), ""]
    contended = sum(a["contention"]["contended"] for s in res["slots"] for a in s["attempts"] if a.get("accepted"))
    if contended:
        out += [f"**{contended} of the runs that count were contended** (no clean run within the repeats): "
                "quote these figures with care.", ""]
    out += ["## Fit: seconds = fixed cost + slope × rows", "", *fits_table(res), "",
            "## Median seconds per point", "", *points_table(res), ""]
    checks = res.get("output_checks") or {}
    if checks:
        out += [f"## Outputs vs bare TF ({checks.get('rows', 0):,} rows, round 0)", ""]
        out += [f"- {k}: same ids {v['same_ids']}, max |Δ| {_f(v['max_abs_diff_vs_bare_tf'], '{:.2e}')}"
                + ("" if v["ok"] else " **MISMATCH**") for k, v in checks.items() if isinstance(v, dict)]
        out.append("")
    out += ["## Every run", "", *runs_table(res), "", "## Warm figures (secondary)", "", *warm_table(), ""]
    return "\n".join(out)


def chart(res: dict[str, Any], path: str, labels: Mapping[str, str] = LABELS,
          title: str = "Cold runs: medians, runs, fits") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    unit = res["settings"]["unit"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for key, c in res["summary"].items():
        pts = [(int(r), v["median_seconds"]) for r, v in c["points"].items() if v["median_seconds"] is not None]
        if not pts:
            continue
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", label=labels.get(key, key))[0]
        every = [(int(r), s) for r, v in c["points"].items() for s in v["seconds"]]
        ax.plot([p[0] for p in every], [p[1] for p in every], ".", color=line.get_color(), alpha=0.35)
        if c["fit"]:
            xs = [0, max(p[0] for p in pts)]
            ax.plot(xs, [c["fit"]["intercept"] + c["fit"]["slope"] * x / unit for x in xs], "-",
                    color=line.get_color(), alpha=0.7)
            bare = res["summary"].get("bare_tf", {}).get("fit")
            if bare and key != "bare_tf":
                grid = [xs[1] * i / 40 for i in range(1, 41)]
                ax2.plot(grid, [(bare["intercept"] + bare["slope"] * x / unit)
                                / (c["fit"]["intercept"] + c["fit"]["slope"] * x / unit) for x in grid],
                         color=line.get_color(), label=labels.get(key, key))
    ax.set(xlabel="rows", ylabel="wall seconds (whole command)", title=title)
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set(xlabel="rows", ylabel="× bare TF (bare seconds / contender seconds, fits)",
            title="Ratio vs bare TF from the fits")
    for a in (ax, ax2):
        a.xaxis.set_major_formatter(FuncFormatter(_compact))
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(res: dict[str, Any], directory: str, name: str, *, text: str | None = None,
              draw: Callable[[dict[str, Any], str], None] | None = None) -> list[str]:
    """`<directory>/<name>.json|md|png` (the Markdown `text` and the chart's `draw` default to
    this report's); returns the paths written."""
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, name)
    with open(base + ".json", "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    with open(base + ".md", "w") as fh:
        fh.write(markdown(res) if text is None else text)
    (draw or chart)(res, base + ".png")
    return [base + ".json", base + ".md", base + ".png"]
