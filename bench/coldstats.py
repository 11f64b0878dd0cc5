"""The cold benchmark's arithmetic: medians per point, the least-squares line, ratios vs bare TF."""
from __future__ import annotations

import statistics
from typing import Any


def fit_line(xs: list[float], ys: list[float]) -> dict[str, float] | None:
    """Least squares `y = intercept + slope * x` with R²; None with fewer than 2 distinct x."""
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"intercept": intercept, "slope": slope, "r2": r2, "n": n}


def predict(fit: dict[str, float] | None, x: float) -> float | None:
    return None if fit is None else fit["intercept"] + fit["slope"] * x


def _median(vals: list[float]) -> float | None:
    return statistics.median(vals) if vals else None


def accepted_runs(slots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The accepted attempt of every slot (the one that counts)."""
    return [a for s in slots for a in s["attempts"] if a.get("accepted")]


def summarize(slots: list[dict[str, Any]], *, contenders: list[str], points: tuple[int, ...],
              ratio_rows: tuple[int, ...], unit: int) -> dict[str, Any]:
    """Per contender: per-point medians, the fit (slope per `unit` rows), ratios vs bare TF.

    A ratio is bare TF's seconds over the contender's at the same rows (> 1: faster than
    bare TF), from the measured medians where the point was run and from the two fits.
    """
    runs = accepted_runs(slots)
    out: dict[str, Any] = {}
    for key in contenders:
        mine = [a for a in runs if a["key"] == key]
        per_point = {}
        for rows in points:
            at = [a for a in mine if a["rows"] == rows]
            median = _median([a["seconds"] for a in at])
            loads = {a["model_loads"] for a in at if a.get("model_loads") is not None}
            per_point[str(rows)] = {
                "median_seconds": median,
                "seconds": [a["seconds"] for a in at],
                "runs": len(at),
                "contended_runs": sum(a["contention"]["contended"] for a in at),
                "rows_per_second": rows / median if median is not None else None,
                "model_loads": sorted(loads),
                "peak_worker_rss_mb": max((a["peak_worker_rss_mb"] or 0 for a in at), default=None),
                "manifest_peak_worker_rss_mb": max(
                    ((a.get("manifest") or {}).get("peak_worker_rss_mb") or 0 for a in at), default=None),
            }
        pts = [(rows / unit, v["median_seconds"]) for rows, v in zip(points, per_point.values(), strict=True)
               if v["median_seconds"] is not None]
        fit = fit_line([x for x, _ in pts], [y for _, y in pts])
        failed = [a for s in slots if s["key"] == key for a in s["attempts"] if not a["ok"]]
        out[key] = {"points": per_point, "fit": fit, "failed_runs": len(failed),
                    "failures": sorted({"; ".join(a["problems"]) for a in failed})[:5]}
    bare = out.get("bare_tf")
    for c in out.values():
        c["ratios_vs_bare_tf"] = {}
        if bare is None:
            continue
        for rows in ratio_rows:
            mine = c["points"].get(str(rows), {}).get("median_seconds")
            theirs = bare["points"].get(str(rows), {}).get("median_seconds")
            fb, fc = predict(bare["fit"], rows / unit), predict(c["fit"], rows / unit)
            c["ratios_vs_bare_tf"][str(rows)] = {
                "measured": theirs / mine if mine and theirs else None,
                "fit": fb / fc if fb and fc and fc > 0 else None,
            }
    return out
