"""Small PNG charts for the run report: curves over epochs with rounds marked, before → after dumbbells.

Lightning-free and schema-free: each function takes plain series (already 1-based epochs, fractions in [0, 1],
None for unknown), draws one matplotlib figure (object API with the Agg canvas, no pyplot state) and writes it
atomically. blindspot/report.py pulls the series out of the report dict and decides which charts exist.
A function returns None, and writes nothing, when it has nothing to draw.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import atomic_write

# one palette for every chart (and the page's CSS): before is grey, after blue, worse-than-margin a warning red
COLORS = {
    "val": "#1f6feb",          # validation accuracy
    "worst": "#bf5af2",        # worst-group accuracy
    "before": "#9aa4ae",       # baseline / before a round
    "after": "#1f6feb",        # final / after
    "regression": "#d9480f",   # got worse by more than the margin
    "round": "#6e7781",        # round markers
    "grid": "#e6e9ec",
}
MODE_COLORS = ("#1f6feb", "#2da44e", "#8250df", "#0a9396", "#9a6700", "#e85aad", "#57606a", "#1b7c83",
               "#bf5af2", "#3d9970", "#b08800", "#0b3d91")  # per-mode curves, in order (no warning red)
DPI = 160
WIDTH = 5.2  # inches: 832 px at DPI, shown about 560 px wide in the page (sharp on HiDPI screens too)
MAX_ROWS = 24  # dumbbell rows drawn (regressions first, then the worst final ones); the title says if any are left out
MAX_CURVES = len(MODE_COLORS)
EPS = 1e-9  # "worse by more than the margin" is strict, with room for float rounding (0.80 → 0.75 is not > 0.05)


def _finite(x: Any) -> float | None:
    """`x` as a finite float, else None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _short(text: str, limit: int = 42) -> str:
    """One line, cut to `limit` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _figure(height: float):
    """A new Figure (Agg canvas) of the standard width, with the report's font sizes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax, percent_axis: str = "y") -> None:
    """Light grid, no top/right spines, accuracy axis in percent from 0 to 100."""
    from matplotlib.ticker import PercentFormatter

    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8, length=3)
    ax.grid(True, color=COLORS["grid"], linewidth=0.8)
    ax.set_axisbelow(True)
    axis = ax.yaxis if percent_axis == "y" else ax.xaxis
    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    (ax.set_ylim if percent_axis == "y" else ax.set_xlim)(-0.02, 1.02)


def _mark_rounds(ax, rounds: Sequence[tuple[float, str]]) -> None:
    """Dashed vertical lines labelled at the top, one per round."""
    from matplotlib.transforms import blended_transform_factory

    where = blended_transform_factory(ax.transData, ax.transAxes)
    for x, label in rounds:
        ax.axvline(x, color=COLORS["round"], linestyle="--", linewidth=1, zorder=1)
        ax.annotate(label, (x, 1.0), xycoords=where, xytext=(-3, -3), textcoords="offset points", rotation=90,
                    va="top", ha="right", fontsize=7.5, color=COLORS["round"])


def _epoch_axis(ax, xs: Sequence[float]) -> None:
    """Integer epoch ticks (1-based), a little margin either side."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    if xs:
        lo, hi = min(xs), max(xs)
        pad = max(0.3, 0.03 * (hi - lo))
        ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("epoch", fontsize=8)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure as PNG atomically (a reader never sees half a chart)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, metadata={"Software": None}),
                        binary=True)


def curves_chart(series: Sequence[tuple[str, Sequence[tuple[float, float | None]], str]],
                 rounds: Sequence[tuple[float, str]], path: str | os.PathLike, title: str,
                 ylabel: str = "accuracy") -> Path | None:
    """Accuracy curves [(label, [(epoch, acc)], colour)] over 1-based epochs with rounds as dashed lines."""
    drawn = [(label, [(float(x), _finite(y)) for x, y in pts if _finite(x) is not None], c)
             for label, pts, c in series]
    drawn = [(label, pts, c) for label, pts, c in drawn if any(y is not None for _, y in pts)]
    if not drawn:
        return None
    columns = _legend_columns(len(drawn))
    fig = _figure(2.8 + 0.17 * math.ceil(len(drawn) / columns))
    ax = fig.add_subplot()
    xs: list[float] = []
    for label, pts, color in drawn:
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [math.nan if y is None else y for _, y in pts], marker="o", markersize=3.5,
                linewidth=1.8, color=color, label=_short(label, 60 if columns == 1 else 42))  # fits the width
        xs += [x for x, _ in pts]
    xs += [x for x, _ in rounds]
    _mark_rounds(ax, rounds)
    _style(ax)
    _epoch_axis(ax, xs)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9.5, loc="left")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=columns,
               fontsize=7.5, frameon=False)  # under the plot: it hides no curve
    return save_figure(fig, path)


def _legend_columns(n: int) -> int:
    """Legend columns for n curves: two short ones side by side, up to four in one column, else two."""
    return 2 if n <= 2 or n > 4 else 1


def dumbbell_chart(rows: Sequence[dict], path: str | os.PathLike, title: str, margin: float,
                   before_label: str = "baseline", after_label: str = "final") -> Path | None:
    """Before → after per row [{name, before, after, ci_before?, ci_after?}]: grey dot, coloured dot, a line.

    Rows that got worse by more than `margin` are drawn in the warning colour; the worst final accuracy is on top
    and at most MAX_ROWS rows are drawn. 95% intervals, when given as [lo, hi], are horizontal error bars.
    """
    items = []
    for r in rows:
        b, a = _finite(r.get("before")), _finite(r.get("after"))
        if a is None and b is None:
            continue
        items.append((str(r.get("name")), b, a, r.get("ci_before"), r.get("ci_after")))
    if not items:
        return None
    def worse(b: float | None, a: float | None) -> bool:
        return a is not None and b is not None and a - b < -margin - EPS

    final = lambda t: t[2] if t[2] is not None else t[1]  # noqa: E731
    total = len(items)
    if total > MAX_ROWS:  # keep every regression, then the worst final accuracies
        items.sort(key=lambda t: (not worse(t[1], t[2]), final(t)))
        items = items[:MAX_ROWS]
    items.sort(key=final)
    fig = _figure(1.2 + 0.2 * len(items))
    ax = fig.add_subplot()
    ys = list(range(len(items)))[::-1]  # worst on top
    any_ci = any_regression = False
    for y, (name, b, a, ci_b, ci_a) in zip(ys, items):
        regressed = worse(b, a)
        any_regression |= regressed
        color = COLORS["regression"] if regressed else COLORS["after"]
        split = 0.17 if ci_b is not None or ci_a is not None else 0.0  # intervals: before above, after below
        if a is not None and b is not None:
            ax.plot([b, a], [y + split, y - split], color=color, linewidth=2.2, alpha=0.45, solid_capstyle="round",
                    zorder=2)
        for x, ci, c, dy in ((b, ci_b, COLORS["before"], split), (a, ci_a, color, -split)):
            if x is None:
                continue
            lo, hi = (_finite(ci[0]), _finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None,
                                                                                                           None)
            if lo is not None and hi is not None:
                any_ci = True
                ax.errorbar([x], [y + dy], xerr=[[max(0.0, x - lo)], [max(0.0, hi - x)]], fmt="none", ecolor=c,
                            elinewidth=1.1, capsize=2.5, zorder=3)
            ax.scatter([x], [y + dy], s=30, color=c, zorder=4, edgecolors="white", linewidths=0.6)
    ax.set_yticks(ys, [_short(name, 34) for name, *_ in items], fontsize=7.5)
    ax.set_ylim(-0.6, len(items) - 0.4)
    _style(ax, percent_axis="x")
    ax.grid(False, axis="y")
    ax.set_xlabel("accuracy" + (" (bars: 95% interval)" if any_ci else ""), fontsize=8)
    more = f" ({len(items)} of {total} shown)" if total > len(items) else ""
    ax.set_title(title + more, fontsize=9.5, loc="left")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=COLORS["before"], label=before_label),
               Line2D([], [], marker="o", linestyle="", color=COLORS["after"], label=after_label)]
    if any_regression:
        handles.append(Line2D([], [], marker="o", linestyle="", color=COLORS["regression"],
                              label=f"worse by > {100 * margin:g} pts"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7.5, frameon=False,
               handletextpad=0.2, columnspacing=1.2)
    return save_figure(fig, path)
