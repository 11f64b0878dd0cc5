"""An HTML report of a scoring run: `batchscore report PATH [--out FILE]`.

PATH is the run's output directory (or its `_manifest.json`), local or any URI pyarrow
can open. The report holds the manifest's figures, the seconds of each phase and the
quarantined rows by reason, with inline SVG charts: one self-contained file, no network.
Written to `<PATH>/_report.html` unless `--out` says where (names starting with `_` are
skipped by Spark and pyarrow readers of the output). Exit 0, or 2 with one `error:` line
when the manifest is missing or malformed.
"""
from __future__ import annotations

import argparse
import html
import posixpath
import sys
from typing import Any

from batchscore.core.errors import OutputError
from batchscore.core.storage import absolute, pyarrow_fs, pyarrow_uri, read_bytes
from batchscore.jobs.runner import Job, Run, run_job
from batchscore.output.manifest import MANIFEST_NAME, ManifestError, RunManifest

REPORT_NAME = "_report.html"
_BAR_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1")


def read_manifest(path: str) -> RunManifest:
    """The manifest at `path` (a run's output directory or the JSON file).

    Raises:
        ManifestError: naming the file, when it is missing, unreadable or malformed.
    """
    file = path if path.rstrip("/").endswith(".json") else path.rstrip("/") + "/" + MANIFEST_NAME
    try:
        return RunManifest.from_json(read_bytes(file))
    except FileNotFoundError:
        raise ManifestError(f"manifest '{file}' not found (the run did not finish?)") from None
    except (OSError, ValueError) as e:
        raise ManifestError(f"manifest '{file}' cannot be read: {e}") from None


def render_report(m: RunManifest) -> str:
    """The whole HTML page of one run."""
    outcomes = [("scored", float(m.rows_scored)), *((r, float(n)) for r, n in sorted(m.quarantine_reasons.items()))]
    phases = [(k, float(v)) for k, v in m.seconds_by_phase.items()]
    title = f"batchscore run {m.run_id or '?'}"
    return "\n".join([
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="status {_e(m.status or "unknown")}">status: <b>{_e(m.status or "unknown")}</b>, '
        f"{_e(m.started_at or '?')} to {_e(m.finished_at or '?')}</p>",
        "<h2>Figures</h2>", _table(figures(m)),
        "<h2>Rows</h2>", _bar_svg(outcomes, unit="rows", fmt="{:,.0f}"),
        "<h2>Quarantine reasons</h2>",
        _table([(r, f"{n:,}") for r, n in sorted(m.quarantine_reasons.items())], head=("reason", "rows"))
        if m.quarantine_reasons else "<p>No row was quarantined.</p>",
        "<h2>Phases</h2>",
        _bar_svg(phases, unit="s", fmt="{:,.2f}") if phases else "<p>The manifest records no phases.</p>",
        _table([(k, f"{v:,.3f}") for k, v in phases], head=("phase", "seconds")) if phases else "",
        "</body></html>",
        ])


def figures(m: RunManifest) -> list[tuple[str, str]]:
    """The manifest's headline figures as (label, text) rows."""
    def num(v: Any, fmt: str = "{:,}") -> str:
        return "-" if v is None else fmt.format(v)

    return [
        ("rows in", num(m.rows_in)), ("rows scored", num(m.rows_scored)),
        ("rows quarantined", num(m.rows_quarantined)),
        ("rows per second", num(m.rows_per_second, "{:,.0f}")),
        ("seconds total", num(m.seconds_total, "{:,.1f}")), ("seconds scoring", num(m.seconds_scoring, "{:,.1f}")),
        ("lane", m.lane or "-"),
        ("model", f"{m.model.path or '-'} ({m.model.signature or '-'}, fingerprint {m.model.fingerprint or '-'})"),
        ("batch size", num(m.model.batch_size)), ("model loads", num(m.model_loads)),
        ("model calls", num(m.model_calls)), ("python workers", num(m.python_workers)),
        ("peak worker RSS (MB)", num(m.peak_worker_rss_mb, "{:,.0f}")),
        ("corrupt files skipped", num(m.corrupt_files_skipped)),
        ("input", f"{m.input.path or '-'} ({m.input.format or '-'})"
                  + (f", filter {m.input.filter}" if m.input.filter else "")),
        ("output", f"{m.output.path or '-'} (mode {m.output.mode or '-'})"),
        ("quarantine", m.output.quarantine_path or "-"),
        ("spark", f"{m.spark.version or '-'} on {m.spark.master or '-'}"),
    ]


def write_report(path: str, out: str | None = None) -> str:
    """Render the run at `path` into `out` (default `<path>/_report.html`); returns where it went."""
    manifest = read_manifest(path)
    base = path if not path.rstrip("/").endswith(".json") else posixpath.dirname(path.rstrip("/"))
    target = out or base.rstrip("/") + "/" + REPORT_NAME
    fs, file = pyarrow_fs(pyarrow_uri(absolute(target)))
    with fs.open_output_stream(file) as fh:
        fh.write(render_report(manifest).encode())
    return target


def _e(v: Any) -> str:
    return html.escape(str(v))


def _table(rows: list[tuple[str, str]], head: tuple[str, str] | None = None) -> str:
    th = f"<tr><th>{_e(head[0])}</th><th>{_e(head[1])}</th></tr>" if head else ""
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{th}{body}</table>"


def _bar_svg(items: list[tuple[str, float]], *, unit: str, fmt: str) -> str:
    """A horizontal bar chart as inline SVG: one labelled bar per item."""
    width, label_w, value_w, bar_h, gap = 640, 170, 110, 22, 6
    top = max((v for _, v in items), default=0.0) or 1.0
    span = width - label_w - value_w
    rows = []
    for i, (name, v) in enumerate(items):
        y = i * (bar_h + gap)
        w = max(v / top * span, 1.0 if v > 0 else 0.0)
        colour = _BAR_COLOURS[i % len(_BAR_COLOURS)]
        rows.append(
            f'<text x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end">{_e(name)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h * 0.7:.1f}">{_e(fmt.format(v))} {_e(unit)}</text>'
        )
    height = max(len(items) * (bar_h + gap), bar_h)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="13">{"".join(rows)}</svg>')


_CSS = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "text-align:left}td:last-child{font-variant-numeric:tabular-nums}"
        ".status.succeeded b{color:#2a7d2a}.status.failed b{color:#b22}")


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="the run's output directory (or its _manifest.json)")
    p.add_argument("--out", default=None, help=f"the HTML file to write (default: PATH/{REPORT_NAME})")


def _report(run: Run) -> str:
    try:
        return write_report(run.args.path, run.args.out)
    except OSError as e:  # reading the manifest raises ManifestError: this is the writing
        raise OutputError(f"cannot write the report: {e}") from None


JOB = Job(prog="batchscore report", description=__doc__.splitlines()[0], options=_options, run=_report,
          summary=lambda target: f"batchscore: report written to {target}", what="the report")


def main(argv: list[str] | None = None) -> int:
    """Write the report; returns the exit code (0, or 2 with one `error:` line)."""
    return run_job(JOB, argv)


if __name__ == "__main__":
    sys.exit(main())
