"""PNG plots of an Evaluation: ROC and precision-recall curves, the calibration diagram.

Drawn with matplotlib's Agg canvas on a `Figure` of its own (no pyplot, so no global
backend switch in a notebook), from the sampled curve points `curves.rank_curves` collected.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from batchscore.evaluation.curves import Curve
from batchscore.evaluation.results import Evaluation

SIZE = (5.5, 5.0)  # inches, at 100 dpi
MAX_SLICE_LINES = 10  # slices drawn beside all rows on the curve plots


def render_plots(evaluation: Evaluation) -> dict[str, bytes]:
    """PNG bytes by file name: `roc.png`, `pr.png` for classifiers, `calibration.png` for binary.

    Returns {} for regression, and when matplotlib is not installed (it is in requirements.txt;
    the wheel's `plots` extra).
    """
    try:
        import matplotlib  # noqa: F401, PLC0415 - an optional dependency, needed only here
    except ImportError:
        return {}
    curves = _curves_to_draw(evaluation)
    if not curves:
        return {}
    out = {"roc.png": _png(lambda ax: _roc(ax, curves)), "pr.png": _png(lambda ax: _pr(ax, curves))}
    if evaluation.task == "binary":
        out["calibration.png"] = _png(lambda ax: _calibration(ax, evaluation))
    return out


def _curves_to_draw(ev: Evaluation) -> list[tuple[str, Curve, bool]]:
    """(legend, curve, is the main line): binary, all rows then the slices; multiclass, each class."""
    if ev.task == "binary":
        main = [("all rows", ev.overall.curves[""], True)] if "" in ev.overall.curves else []
        slices = [(f"{ev.slice_column}={g.name}", g.curves[""], False) for g in ev.slices if "" in g.curves]
        return main + slices[:MAX_SLICE_LINES]
    if ev.task == "multiclass":
        return [(f"class {k}", c, True) for k, c in ev.overall.curves.items()]
    return []


def _roc(ax: Any, curves: list[tuple[str, Curve, bool]]) -> None:
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for name, c, main in curves:
        fpr, tpr = c.roc()
        auc = "-" if c.auc_roc is None else f"{c.auc_roc:.3f}"
        ax.plot(fpr, tpr, linewidth=2 if main else 1, alpha=1 if main else 0.6, label=f"{name} (AUC {auc})")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize="small")


def _pr(ax: Any, curves: list[tuple[str, Curve, bool]]) -> None:
    for name, c, main in curves:
        recall, precision = c.pr()
        ap = "-" if c.auc_pr is None else f"{c.auc_pr:.3f}"
        # the step-wise curve AUC-PR sums: precision held from each recall to the next
        ax.step([0.0, *recall], [precision[0] if precision else 1.0, *precision], where="pre",
                linewidth=2 if main else 1, alpha=1 if main else 0.6, label=f"{name} (AP {ap})")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize="small")


def _calibration(ax: Any, ev: Evaluation) -> None:
    bins = [b for b in ev.overall.calibration if b["count"]]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    ax.plot([b["mean_score"] for b in bins], [b["observed_rate"] for b in bins], marker="o", linewidth=2,
            label="all rows")
    ax.set(xlabel=f"mean {ev.score} in the bin", ylabel=f"observed rate of {ev.label}",
           title="Calibration", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize="small")
    counts = ax.twinx()  # rows per bin, behind the line
    edges = ev.overall.calibration
    counts.bar([(b["lower"] + b["upper"]) / 2 for b in edges], [b["count"] for b in edges],
               width=[b["upper"] - b["lower"] for b in edges], color="grey", alpha=0.2)
    counts.set_ylabel("rows")


def _png(draw: Callable[[Any], None]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - optional dependency
    from matplotlib.figure import Figure  # noqa: PLC0415 - optional dependency

    fig = Figure(figsize=SIZE, dpi=100)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
