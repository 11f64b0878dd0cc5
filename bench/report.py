"""Turn a benchmark's raw results into the targets' verdicts, Markdown, JSON and a PNG chart."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from typing import Any

import psutil

LABELS = {
    "bare_tf": "bare TF (1 process)",
    "predict_batch_udf": "Spark predict_batch_udf",
    "pandas_udf": "iterator pandas UDF",
    "dataframe_lane": "batchscore DataFrame lane",
    "arrow_lane": "batchscore Arrow lane",
}
LANES = ("dataframe_lane", "arrow_lane")


# ---------------------------------------------------------------- machine


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _java_version() -> str | None:
    try:
        p = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        return (p.stderr or p.stdout).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine_info(spark: Any = None) -> dict[str, Any]:
    """Cores, memory, CPU model and the versions that matter."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "java": _java_version(),
        "versions": {
            "pyspark": _version("pyspark"),
            "tensorflow": _version("tensorflow-cpu", "tensorflow"),
            "keras": _version("keras"),
            "pyarrow": _version("pyarrow"),
            "numpy": _version("numpy"),
            "pandas": _version("pandas"),
            "psutil": _version("psutil"),
        },
    }
    if spark is not None:
        info["spark"] = {"version": spark.version, "master": spark.sparkContext.master,
                         "default_parallelism": spark.sparkContext.defaultParallelism}
    return info


# ---------------------------------------------------------------- targets


def _c(results: dict[str, Any], workload: str, key: str) -> dict[str, Any]:
    return ((results.get("workloads") or {}).get(workload) or {}).get("contenders", {}).get(key) or {}


def _ratio_target(results: dict[str, Any], name: str, workload: str, key: str, field: str,
                  threshold: float) -> dict[str, Any]:
    c = _c(results, workload, key)
    t: dict[str, Any] = {"target": name, "threshold": threshold}
    if not c:
        return {**t, "status": "n/a", "figure": f"{workload} / {key} not run"}
    if not c.get("available"):
        return {**t, "status": "n/a", "figure": c.get("unavailable_reason") or "not available"}
    value = c.get(field)
    if value is None:
        base = "bare TF" if field == "x_bare_tf" else "predict_batch_udf"
        return {**t, "status": "n/a", "figure": f"no {base} figure to compare with"}
    return {**t, "status": "met" if value >= threshold else "not met", "value": value,
            "figure": f"{value:.2f}x ({c['median_rows_per_second']:,.0f} rows/s)"}


def _loads_target(results: dict[str, Any], workload: str) -> dict[str, Any]:
    name = f"one model load per Python worker ({workload}, both lanes together)"
    lanes = [_c(results, workload, k) for k in LANES]
    lanes = [c for c in lanes if c.get("available")]
    if not lanes:
        return {"target": name, "status": "n/a", "figure": "no lane ran"}
    loads = sum(int(c.get("model_loads") or 0) for c in lanes)
    workers = sorted({p for c in lanes for p in c.get("workers", [])})
    ok = loads == len(workers) and loads > 0
    return {"target": name, "status": "met" if ok else "not met", "value": loads,
            "figure": f"{loads} loads over the warm-up and timed runs, {len(workers)} Python workers "
                      f"did the work"}


def _rss_target(results: dict[str, Any], lane: str) -> dict[str, Any]:
    sweep = (results.get("sweeps") or {}).get("rows") or {}
    pts = [p for p in (sweep.get("lanes") or {}).get(lane, []) if p.get("peak_worker_rss_mb")]
    name = f"{LABELS[lane]}: peak worker RSS within 10% across the rows sweep"
    if len(pts) < 2:
        return {"target": name, "status": "n/a", "figure": "rows sweep not run for this lane"}
    lo, hi = pts[0], pts[-1]
    change = (hi["peak_worker_rss_mb"] - lo["peak_worker_rss_mb"]) / lo["peak_worker_rss_mb"]
    return {"target": name, "status": "met" if abs(change) <= 0.10 else "not met", "value": round(change, 4),
            "figure": f"{lo['peak_worker_rss_mb']:,.0f} MB at {lo['rows']:,} rows -> "
                      f"{hi['peak_worker_rss_mb']:,.0f} MB at {hi['rows']:,} rows ({change:+.1%})"}


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each `met`, `not met` or `n/a`, with the figure behind it."""
    out = [
        _ratio_target(results, "Arrow lane >= 0.8x bare TF on the MLP", "mlp", "arrow_lane", "x_bare_tf", 0.8),
        _ratio_target(results, "DataFrame lane >= 1.5x predict_batch_udf on the MLP", "mlp", "dataframe_lane",
                      "x_predict_batch_udf", 1.5),
    ]
    for w in ("cnn", "cnn_large"):
        rows = ((results.get("workloads") or {}).get(w) or {}).get("rows")
        if w == "cnn_large" and not rows:
            continue
        size = f" ({rows:,} images)" if rows else ""
        out += [_ratio_target(results, f"DataFrame lane >= 1.0x bare TF on the CNN{size}", w, "dataframe_lane",
                              "x_bare_tf", 1.0),
                _ratio_target(results, f"Arrow lane >= 1.0x bare TF on the CNN{size}", w, "arrow_lane",
                              "x_bare_tf", 1.0)]
    for w in ("mlp", "cnn"):  # cnn_large reuses the 6k CNN's warm workers: no loads of its own
        if w in (results.get("workloads") or {}):
            out.append(_loads_target(results, w))
    for lane in LANES:
        out.append(_rss_target(results, lane))
    return out


# ---------------------------------------------------------------- Markdown


def _num(v: float | None, fmt: str = "{:,.0f}") -> str:
    return fmt.format(v) if v is not None else "–"


def _loads_cell(key: str, c: dict[str, Any]) -> str:
    if "model_loads" not in c:
        return "n/a"
    workers = c.get("loading_pids") if key not in LANES else c.get("workers")
    n_workers = len(workers or [])
    unit = "process" if key == "bare_tf" else "workers"
    return f"{c['model_loads']} ({n_workers} {unit})"


def _machine_line(m: dict[str, Any]) -> str:
    v = m.get("versions", {})
    sp = m.get("spark", {})
    return (f"{m.get('cpu_model')}, {m.get('usable_cores')} cores, {m.get('memory_gib')} GiB; "
            f"{m.get('os')}; Python {m.get('python')}, pyspark {v.get('pyspark')}, "
            f"tensorflow {v.get('tensorflow')}, pyarrow {v.get('pyarrow')}, numpy {v.get('numpy')}, "
            f"pandas {v.get('pandas')}; {m.get('java')}; Spark {sp.get('version')} `{sp.get('master')}`")


def _all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = []
    for w in (results.get("workloads") or {}).values():
        for c in w["contenders"].values():
            runs += [r for r in [c.get("warmup"), *c.get("more_warmups", []), *c.get("runs", [])] if r]
    for sweep in (results.get("sweeps") or {}).values():
        for key, pts in sweep.get("lanes", {}).items():
            if not key.endswith("_fit"):
                for p in pts:
                    runs += p.get("runs", [])
    return runs


def load_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """The 1-minute load average seen around the runs (other work on the machine adds noise)."""
    vals = [v for r in _all_runs(results) for v in r.get("loadavg_1m", [])]
    if not vals:
        return None
    return {"min": min(vals), "max": max(vals), "median": sorted(vals)[len(vals) // 2]}


def workload_table(w: dict[str, Any]) -> list[str]:
    lines = [
        "| contender | rows/s (median) | × bare TF | × predict_batch_udf | model loads | peak worker RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, c in w["contenders"].items():
        label = c.get("label") or LABELS.get(key, key)
        if not c.get("available"):
            lines.append(f"| {label} | not available | – | – | – | – |")
            continue
        rss = c.get("peak_worker_rss_mb")
        lines.append(
            f"| {label} | {_num(c.get('median_rows_per_second'))} | {_num(c.get('x_bare_tf'), '{:.2f}×')} | "
            f"{_num(c.get('x_predict_batch_udf'), '{:.2f}×')} | {_loads_cell(key, c)} | "
            f"{_num(rss, '{:,.0f} MB')} |"
        )
    notes = []
    jobs = []
    for key, c in w["contenders"].items():
        runs = [r for r in c.get("runs", []) if "spark_jobs" in r and "error" not in r]
        if runs and c.get("available"):
            r = runs[len(runs) // 2]
            jobs.append(f"{c.get('label') or key} {r['spark_jobs']} / {r['spark_tasks']}")
    if jobs:
        notes.append("- Spark jobs / tasks per timed run: " + "; ".join(jobs))
    for key, c in w["contenders"].items():
        if key in LANES and c.get("available"):
            rps = [r["manifest"]["rows_per_second"] for r in c.get("runs", [])
                   if r.get("manifest") and r["manifest"].get("rows_per_second")]
            if rps:
                notes.append(f"- {c.get('label') or key}: the manifest's own `rows_per_second` "
                             f"(its `seconds_scoring`, which starts after config, signature and planning) "
                             f"median {sorted(rps)[len(rps) // 2]:,.0f}")
        if not c.get("available") and c.get("unavailable_reason"):
            notes.append(f"- {c.get('label') or key}: {c['unavailable_reason']}")
        if c.get("errors"):
            notes.append(f"- {c.get('label') or key}: {len(c['errors'])} failed run(s): {c['errors'][0]}")
        warm = c.get("warmup") or {}
        warm_secs = [r["seconds"] for r in [warm, *c.get("more_warmups", [])] if r.get("seconds") is not None]
        if warm_secs:
            timed = f" (timed median {c['median_seconds']:.2f} s)" if c.get("median_seconds") else ""
            notes.append(f"- {c.get('label') or key}: warm-up runs "
                         + ", ".join(f"{x:.2f}" for x in warm_secs) + f" s{timed}")
        diff = warm.get("max_abs_diff_vs_bare_tf")
        if warm.get("same_ids_as_bare_tf") is False:
            notes.append(f"- {c.get('label') or key}: output ids differ from bare TF's")
        elif diff is not None and diff > 1e-4:
            notes.append(f"- {c.get('label') or key}: predictions differ from bare TF's by up to {diff:.2g}")
    return lines + (["", *notes] if notes else [])


def markdown(results: dict[str, Any]) -> str:
    m = results.get("machine", {})
    s = results.get("settings", {})
    out = [
        f"# batchscore benchmark: `{results['profile']}` profile",
        "",
        f"Run {results.get('started_at')} → {results.get('finished_at')}. Median of {s.get('runs')} timed runs "
        f"per contender after {s.get('warmup_rounds', 1)} untimed warm-up round(s) of every contender (the first "
        "starts the Python workers, loads the model, traces the first call and checks the output against "
        "bare TF's; later ones let the Spark JVM's JIT compiler settle, a one-off cost per JVM); rounds "
        "rotate the order; each run writes a fresh Parquet output; time from the start of the read "
        "to the committed write. Warm-up times are listed under each table.",
        "",
        f"Machine: {_machine_line(m)}.",
        "",
    ]
    load = load_summary(results)
    if load:
        cores = m.get("usable_cores") or 1
        # the benchmark's own JVM and Python workers keep ~2-3 runnable on their own
        busy = " **The machine was busy with other work too: treat these figures as noisy.**" \
            if load["max"] > 2 * cores else ""
        out += [f"1-minute load average around the runs (the benchmark's own processes included): "
                f"{load['min']:.1f}–{load['max']:.1f} (median {load['median']:.1f}) on {cores} cores.{busy}", ""]
    if results.get("pool_pings"):
        out += [f"Spark stops a pool's idle Python workers after a minute unused; {results['pool_pings']} times a "
                "pool idle for 10 s was touched with a one-row task between runs, so no contender's timed run "
                "started cold.", ""]
    for w in (results.get("workloads") or {}).values():
        extra = ", ".join(f"`{k}={v}`" for k, v in (w.get("spark_conf") or {}).items())
        own = ""
        if w.get("warmup_rounds", s.get("warmup_rounds")) != s.get("warmup_rounds") or \
                w.get("runs", s.get("runs")) != s.get("runs"):
            own = (f" Median of {w.get('runs')} timed runs after {w.get('warmup_rounds')} warm-up round(s): the "
                   "Spark JVM and the lanes' Python workers are warm from the workload before.")
        out += [f"## {w['title']}", "",
                f"{w['rows']:,} rows, model batch size {w['batch_size']:,} for every contender"
                + (f"; Spark: {extra}" if extra else "") + "." + own, ""]
        out += workload_table(w)
        out.append("")
    sweeps = results.get("sweeps") or {}
    if sweeps.get("batch_size"):
        out += _batch_sweep_section(sweeps["batch_size"])
    if sweeps.get("rows"):
        out += _rows_sweep_section(sweeps["rows"])
    out += ["## Targets", ""]
    for t in results.get("targets") or []:
        out.append(f"- **{t['status']}**: {t['target']}: {t['figure']}")
    out += ["", "Model loads count the warm-up and all timed runs: for the peers, one file written per load "
            "inside the worker; for the lanes, the manifests' `model_loads` summed, against the Python "
            "workers the RSS monitor saw working. Peak worker RSS is sampled (psutil, every 50 ms) over the "
            "Python workers below the Spark JVM (the bare TF process for bare TF). Every Spark contender "
            "runs in Python workers of its own (one worker pool per contender, as separate jobs would "
            "have): none finds TensorFlow started, or another contender's model, in its workers.", ""]
    return "\n".join(out)


def _batch_sweep_section(bs: dict[str, Any]) -> list[str]:
    out = [f"## Batch-size sweep ({bs['workload']}, {bs['rows']:,} rows)", "",
           "| lane | model batch size | rows/s (median) | seconds (median) | peak worker RSS |",
           "|---|---:|---:|---:|---:|"]
    for lane, pts in bs["lanes"].items():
        for p in pts:
            out.append(f"| {LABELS.get(lane, lane)} | {p['batch_size']:,} | "
                       f"{_num(p.get('median_rows_per_second'))} | {_num(p.get('median_seconds'), '{:.2f}')} | "
                       f"{_num(p.get('peak_worker_rss_mb'), '{:,.0f} MB')} |")
    return [*out, ""]


def _rows_sweep_section(rs: dict[str, Any]) -> list[str]:
    out = ["## Rows sweep (MLP)", "",
           "| lane | rows | seconds (median) | rows/s | s per 1M rows | peak worker RSS |",
           "|---|---:|---:|---:|---:|---:|"]
    fits = []
    for lane, pts in rs["lanes"].items():
        if lane.endswith("_fit"):
            if pts:
                r2 = f"R² = {pts['r2']}" if pts.get("r2") is not None else \
                    "two points only: no linearity check (the full profile has three)"
                fits.append(f"- {LABELS.get(lane[:-4], lane)}: seconds ≈ {pts['intercept_seconds']:.2f} + "
                            f"{pts['seconds_per_million_rows']:.2f} × (rows / 1M), {r2}")
            continue
        for p in pts:
            per_m = p["median_seconds"] / p["rows"] * 1e6 if p.get("median_seconds") else None
            out.append(f"| {LABELS.get(lane, lane)} | {p['rows']:,} | {_num(p.get('median_seconds'), '{:.2f}')} | "
                       f"{_num(p.get('median_rows_per_second'))} | {_num(per_m, '{:.2f}')} | "
                       f"{_num(p.get('peak_worker_rss_mb'), '{:,.0f} MB')} |")
    out += ["", "Least-squares fit over the medians (linear cost: R² near 1, a small intercept):", ""]
    out += fits or ["- too few points"]
    return [*out, ""]


# ---------------------------------------------------------------- chart


def _compact(v: float, _pos: Any = None) -> str:
    """Axis labels: 1,500 -> 1.5k, 2,000,000 -> 2M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def chart(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax, name in zip(axes[0], ("mlp", "cnn"), strict=True):
        w = (results.get("workloads") or {}).get(name)
        if w:
            _bars(ax, w, name, FuncFormatter(_compact))
        else:
            ax.set_axis_off()
    sweeps = results.get("sweeps") or {}
    if sweeps.get("batch_size"):
        _batch_sweep_plot(axes[1][0], sweeps["batch_size"], FuncFormatter(_compact))
    else:
        axes[1][0].set_axis_off()
    if sweeps.get("rows"):
        _rows_sweep_plot(axes[1][1], sweeps["rows"])
    else:
        axes[1][1].set_axis_off()
    m = results.get("machine", {})
    fig.suptitle(f"batchscore benchmark ({results['profile']}): {m.get('cpu_model')}, "
                 f"{m.get('usable_cores')} cores, Spark {m.get('spark', {}).get('master')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax: Any, w: dict[str, Any], name: str, formatter: Any) -> None:
    """One workload's contenders: median rows/s, and the ratio to bare TF."""
    keys = list(w["contenders"])
    vals = [w["contenders"][k].get("median_rows_per_second") or 0 for k in keys]
    colors = ["#888888" if k == "bare_tf" else "#1f77b4" if k in LANES else "#ff7f0e" for k in keys]
    ypos = range(len(keys))
    ax.barh(ypos, vals, color=colors)
    ax.set_yticks(list(ypos), [w["contenders"][k].get("label", k) for k in keys])
    ax.invert_yaxis()
    for y, (k, v) in enumerate(zip(keys, vals, strict=True)):
        c = w["contenders"][k]
        text = "n/a" if not c.get("available") else f"{v:,.0f}" + (
            f"  ({c['x_bare_tf']:.2f}× bare)" if c.get("x_bare_tf") and k != "bare_tf" else "")
        ax.text(v, y, " " + text, va="center", fontsize=8)
    ax.set_xlabel("rows/s (median)")
    ax.xaxis.set_major_formatter(formatter)
    ax.set_title(f"{name.upper()}: {w['rows']:,} rows", fontsize=10)
    ax.set_xlim(0, max([*vals, 1]) * 1.45)


def _batch_sweep_plot(ax: Any, bs: dict[str, Any], formatter: Any) -> None:
    for lane, pts in bs["lanes"].items():
        ax.plot([p["batch_size"] for p in pts], [p.get("median_rows_per_second") or 0 for p in pts],
                marker="o", label=LABELS.get(lane, lane))
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs["batch_sizes"], [f"{b:,}" for b in bs["batch_sizes"]])
    ax.minorticks_off()
    ax.set_xlabel("model batch size (rows per call)")
    ax.set_ylabel("rows/s (median)")
    ax.yaxis.set_major_formatter(formatter)
    top = max([p.get("median_rows_per_second") or 0 for pts in bs["lanes"].values() for p in pts] + [1])
    ax.set_ylim(0, top * 1.2)
    ax.set_title(f"Batch-size sweep, MLP {bs['rows']:,} rows", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def _rows_sweep_plot(ax: Any, rs: dict[str, Any]) -> None:
    """Median seconds (left axis) and peak worker RSS (right axis) against rows."""
    ax2 = ax.twinx()
    for lane, pts in rs["lanes"].items():
        if lane.endswith("_fit"):
            continue
        xs = [p["rows"] / 1e6 for p in pts]
        line = ax.plot(xs, [p.get("median_seconds") or 0 for p in pts], marker="o",
                       label=f"{LABELS.get(lane, lane)}: seconds")[0]
        ax2.plot(xs, [p.get("peak_worker_rss_mb") or 0 for p in pts], marker="s", linestyle="--",
                 color=line.get_color(), alpha=0.6, label=f"{LABELS.get(lane, lane)}: peak RSS")
    ax.set_xlabel("rows (millions)")
    ax.set_ylabel("seconds (median)")
    ax2.set_ylabel("peak worker RSS (MB)")
    rss_max = max([p.get("peak_worker_rss_mb") or 0 for k, pts in rs["lanes"].items()
                   if not k.endswith("_fit") for p in pts] + [1])
    ax2.set_ylim(0, rss_max * 1.8)  # keep the RSS lines clear of the seconds lines
    sec_max = max([p.get("median_seconds") or 0 for k, pts in rs["lanes"].items()
                   if not k.endswith("_fit") for p in pts] + [1])
    ax.set_ylim(0, sec_max * 1.15)
    ax.set_title("Rows sweep, MLP", fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)


def write_all(results: dict[str, Any], directory: str, name: str) -> list[str]:
    """`<directory>/<name>.json`, `.md`, `.png`; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, name)
    with open(base + ".json", "w") as fh:
        json.dump(results, fh, indent=1, sort_keys=False)
        fh.write("\n")
    with open(base + ".md", "w") as fh:
        fh.write(markdown(results) + "\n")
    chart(results, base + ".png")
    return [base + ".json", base + ".md", base + ".png"]
