"""`batchscore report`: the HTML report of a run's manifest."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from batchscore import cli
from batchscore.output.manifest import ModelInfo, OutputInfo, RunManifest, SparkInfo


def _manifest() -> RunManifest:
    return RunManifest(
        status="succeeded", run_id="20260101T000000Z-abc", rows_in=12_345, rows_scored=12_000,
        rows_quarantined=345, quarantine_reasons={"null_feature": 300, "bad_shape": 45},
        model=ModelInfo("/models/m<1>", "f00d", "serving_default", "broadcast", 1024),
        output=OutputInfo("/out/p", "overwrite", "/out/p_quarantine", ["id", "score"]),
        lane="arrow", seconds_total=20.5, seconds_scoring=18.25,
        seconds_by_phase={"read_and_check": 1.5, "plan": 0.25, "score_and_write": 15.75, "count": 0.5, "publish": 0.25},
        rows_per_second=676.4, model_loads=2, model_calls=14, python_workers=2, spark=SparkInfo("4.1.1", "local[2]"),
    )


class _Cells(HTMLParser):
    """Table cells (text), SVG bar labels and rects of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.svg_text: list[str] = []
        self.rects: list[dict[str, str | None]] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("td", "th", "text"):
            self._in = tag
        if tag == "rect":
            self.rects.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in in ("td", "th"):
            self.cells.append(data)
        elif self._in == "text":
            self.svg_text.append(data)


def test_report_renders_the_manifest_figures_phases_and_reasons(tmp_path, capsys) -> None:
    run = tmp_path / "out"
    run.mkdir()
    (run / "_manifest.json").write_bytes(_manifest().to_json())
    assert cli.main(["report", str(run)]) == 0
    page = (run / "_report.html").read_text()
    assert f"report written to {run}/_report.html" in capsys.readouterr().out
    p = _Cells()
    p.feed(page)
    pairs = dict(zip(p.cells[::2], p.cells[1::2], strict=True))
    assert pairs["rows in"] == "12,345" and pairs["rows scored"] == "12,000" and pairs["rows quarantined"] == "345"
    assert pairs["rows per second"] == "676" and pairs["lane"] == "arrow" and pairs["model loads"] == "2"
    assert pairs["null_feature"] == "300" and pairs["bad_shape"] == "45"
    assert pairs["score_and_write"] == "15.750" and pairs["publish"] == "0.250"
    assert pairs["model"] == "/models/m<1> (serving_default, fingerprint f00d)"  # escaped in the page
    assert "/models/m&lt;1&gt;" in page
    # charts: rows by outcome, then seconds by phase, bar lengths proportional to the values
    assert p.svg_text[:6] == ["scored", "12,000 rows", "bad_shape", "45 rows", "null_feature", "300 rows"]
    widths = [float(r["width"] or 0) for r in p.rects]
    assert len(widths) == 3 + 5
    assert abs(widths[2] / widths[0] - 300 / 12_000) < 1e-3
    phase_w = widths[3:]
    assert phase_w[2] == max(phase_w) and abs(phase_w[0] / phase_w[2] - 1.5 / 15.75) < 1e-3


def test_report_to_another_file_and_a_missing_manifest(tmp_path, capsys) -> None:
    data = json.loads(_manifest().to_json())
    del data["seconds_by_phase"], data["quarantine_reasons"]  # an older manifest
    (tmp_path / "m.json").write_text(json.dumps(data))
    out = tmp_path / "r.html"
    assert cli.main(["report", str(tmp_path / "m.json"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "No row was quarantined." in page and "records no phases" in page
    assert cli.main(["report", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: manifest '.*/none/_manifest.json' not found \(the run did not finish\?\)\n", err)
