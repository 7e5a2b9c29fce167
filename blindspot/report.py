"""Render a run's report (a plain dict) as report.json, report.md, index.html and PNG charts in charts/.

Lightning-free: the reporting callback gathers the facts into a dict, this module only formats them (DESIGN.md,
"Run outputs"). Every key is optional; what is absent is skipped. The keys it reads:

    title, method, wall_seconds, machine{}, config{}, regression_margin, regressions[]
    metrics: {val|test|baseline_test: {avg_acc, worst_group_acc, per_group{name: acc}, per_class{name: acc}}}
    discovery: {planted_recall, caption_hit, k, planted[{group, found, mode_id, caption_hit, value}]}
    rounds[{round, epoch, method, remedy, status, seconds{stage: s}, generated, kept, injected,
            rejected_by{filter: n}, failed_prompts[], diversity{},
            probes[{mode_id, caption, n, error, ci_low, ci_high, kept}],
            modes[FailureMode.to_dict() + thumbnail, generated_thumbnail, rejected_thumbnail (relative paths),
                  acc_before, acc_after, group_acc_before, group_acc_after, majority_group,
                  images_planned, images_kept, images_contrast, images_real, test_slice{n, acc_before, acc_after, ci_before, ci_after}]}]
    mode_accuracy{mode_id: [{epoch, acc}]}, breakdown{stage: s}, timeline[{epoch, val_acc, val_worst_group_acc}]

Epochs and rounds are 0-based in the dict (Lightning's current_epoch, the round index) and shown 1-based.
Accuracies are fractions in [0, 1]; None/NaN/inf mean "unknown" (shown as "–", written to JSON as null).
The content is built once as a short list of blocks (headings, facts, tables, charts, thumbnail galleries) and
then written out by a Markdown and an HTML renderer, so the two files always say the same thing. All text from
the dict (captions, class and group names) is escaped by the renderer; nothing is trusted as markup.
Regressions (a group, class or mode that got worse by more than `regression_margin`) are flagged at the top.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote

from .files import atomic_write

log = logging.getLogger(__name__)

MISSING = "–"  # how a missing or non-finite value is shown
REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "index.html"}
THUMBNAIL_KEYS = (("thumbnail", "members"), ("generated_thumbnail", "kept samples"),
                  ("rejected_thumbnail", "rejected samples"))
MAX_LISTED_PROMPTS = 10  # failed prompts listed per round (the rest counted)
MAX_TIMELINE_ROWS = 20  # longer timelines are shown every n-th epoch (first and last always kept)
DEFAULT_REGRESSION_MARGIN = 0.05  # "got worse" means by more than 5 points (absolute) unless the report says
CHART_FILES = {  # chart name -> path inside the report folder (write_report returns the drawn ones as "charts")
    "validation": "charts/validation.png", "modes": "charts/mode_accuracy.png",
    "test": "charts/test_before_after.png", "test_slices": "charts/test_slices.png"}


# --------------------------------------------------------------------------------------------- public API

def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write charts/*.png, report.json, report.md and index.html into `out_dir` atomically; return their paths.

    Returns {"json": Path, "markdown": Path, "html": Path, "charts": [Path, ...]}: the charts drawn, in
    CHART_FILES order (a chart without data is skipped). report.json gets `regressions` (find_regressions) and
    `regression_margin` when absent. The input dict is not modified.
    """
    if not isinstance(report, Mapping):
        raise TypeError(f"write_report needs a dict, got {type(report).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = to_jsonable(report)
    margin = regression_margin(clean)
    clean.setdefault("regression_margin", margin)
    if not isinstance(clean.get("regressions"), list):
        clean["regressions"] = find_regressions(clean, margin)
    charts = write_charts(clean, out, margin)  # first: the pages only link charts that exist
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    links = {name: p.relative_to(out).as_posix() for name, p in charts.items()}
    _atomic_write_text(paths["json"], json.dumps(clean, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    _atomic_write_text(paths["markdown"], render_markdown(clean, links))
    _atomic_write_text(paths["html"], render_html(clean, links))
    _remove_stale_charts(out, charts)  # last: a failed write above leaves the old pages' charts in place
    return {**paths, "charts": [charts[name] for name in CHART_FILES if name in charts]}


def summary_lines(report: Mapping[str, Any], html_path: str | os.PathLike, max_modes: int = 8) -> list[str]:
    """A few lines for the end of a run's log: test before → after, each mode's held-out slice, regressions, where."""
    values = _test_values(report)
    parts = [f"{name} {values[key]}" for key, name in (("avg_acc", "accuracy"), ("worst_group_acc", "worst group"))
             if key in values]
    before = _dict(_dict(report.get("metrics")).get("baseline_test"))
    lines = [("test, before the first round → end: " if before else "test: ") + "; ".join(parts) if parts else
             "no test metrics recorded"]
    modes = [m for r in map(_dict, _list(report.get("rounds"))) for m in map(_dict, _list(r.get("modes")))]
    for m in modes[:max_modes]:
        ts = _dict(m.get("test_slice"))
        change = fmt_change(ts.get("acc_before"), ts.get("acc_after"))
        verdict = (f"held-out test slice {change} (n={_int(ts.get('n'))})" if ts
                   else f"validation {fmt_change(m.get('acc_before'), m.get('acc_after'))}")
        lines.append(f"{_mode_label(m)} '{_top_caption(m)[0]}': {verdict}")
    if len(modes) > max_modes:
        lines.append(f"… and {len(modes) - max_modes} more modes")
    regressions = _listed_regressions(report, regression_margin(report))
    if regressions:
        n = len(regressions)
        lines.append(f"{n} regression{'s' * (n != 1)}: " + "; ".join(map(_regression_line, regressions[:3]))
                     + (" …" if n > 3 else ""))
    return [*lines, f"report: {html_path}"]


def load_report(path: str | os.PathLike) -> dict:
    """Read a report.json (or the report.json inside a report directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILES["json"]
    if not p.is_file():
        raise FileNotFoundError(f"no report at {p}: pass a report.json or the directory write_report wrote to")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def render_markdown(report: Mapping[str, Any], charts: Mapping[str, str] | None = None) -> str:
    """The report as GitHub-flavoured Markdown; `charts` maps chart names to relative paths to embed."""
    return "\n".join(_md_block(b) for b in build_blocks(report, charts)).rstrip() + "\n"


def render_html(report: Mapping[str, Any], charts: Mapping[str, str] | None = None) -> str:
    """The report as one HTML page (inline CSS, no scripts; images only from relative paths beside it)."""
    body = "\n".join(_html_block(b) for b in build_blocks(report, charts))
    title = html.escape(_title(report))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def to_jsonable(obj: Any) -> Any:
    """A copy of `obj` that json.dumps accepts strictly: NaN/inf become None, numpy/torch scalars plain."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):  # FailureMode and friends
        return to_jsonable(obj.to_dict())
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return to_jsonable(obj.item())
    return str(obj)


# ----------------------------------------------------------------------------------------------- formatting

def fmt_pct(x: Any) -> str:
    """A fraction as a percentage with one decimal ("87.5%"), or "–" when missing."""
    v = _num(x)
    return MISSING if v is None else f"{100 * v:.1f}%"


def fmt_points(before: Any, after: Any) -> str:
    """The change between two fractions in percentage points ("+3.0 pts"), or "" when either is missing."""
    b, a = _num(before), _num(after)
    return "" if a is None or b is None else f"{100 * (a - b):+.1f} pts"


def fmt_change(before: Any, after: Any) -> str:
    """Two fractions as "before → after (+d pts)"; "–" stands in for a missing side."""
    if _num(before) is None and _num(after) is None:
        return MISSING
    delta = fmt_points(before, after)
    return f"{fmt_pct(before)} → {fmt_pct(after)}" + (f" ({delta})" if delta else "")


def fmt_ci(x: Any, ci: Any) -> str:
    """A fraction with its interval: "25.0% [13.0–41.0]" (the bracket left out when the interval is unknown)."""
    lo, hi = (_num(ci[0]), _num(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    interval = f" [{100 * lo:.1f}–{100 * hi:.1f}]" if lo is not None and hi is not None else ""
    return fmt_pct(x) + (interval if _num(x) is not None else "")


def _ci_change(ts: Mapping[str, Any]) -> str:
    """A test slice's "before [ci] → after [ci] (+d pts)"."""
    before, after = ts.get("acc_before"), ts.get("acc_after")
    if _num(before) is None and _num(after) is None:
        return MISSING
    delta = fmt_points(before, after)
    return (f"{fmt_ci(before, ts.get('ci_before'))} → {fmt_ci(after, ts.get('ci_after'))}"
            + (f" ({delta})" if delta else ""))


def fmt_seconds(x: Any) -> str:
    """A duration: "12.3 s", "4 min 05 s" or "1 h 02 min"."""
    s = _num(x)
    if s is None:
        return MISSING
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _num(x: Any) -> float | None:
    """A finite float, or None for missing, non-numeric and NaN/inf values."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _int(x: Any) -> str:
    """An integer count, or "–"."""
    v = _num(x)
    return MISSING if v is None else str(int(v))


def _epoch(x: Any) -> str:
    """A 0-based epoch index shown 1-based, as configs and logs count epochs ("after epoch 5"), or "–"."""
    v = _num(x)
    return MISSING if v is None else str(int(v) + 1)


def _score(x: Any) -> str:
    """A caption/ranking score with three decimals, or "–"."""
    v = _num(x)
    return MISSING if v is None else f"{v:.3f}"


def _text(x: Any, limit: int = 200) -> str:
    """Any value as one short line of text (dicts/lists as compact JSON)."""
    if x is None:
        return MISSING
    if isinstance(x, float):
        return MISSING if not math.isfinite(x) else f"{x:g}"
    s = x if isinstance(x, str) else json.dumps(to_jsonable(x), ensure_ascii=False) if isinstance(
        x, (Mapping, list, tuple)) else str(x)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _fact(x: Any) -> str:
    """A value in a facts line: integers as they are, other numbers with 3 significant decimals, the rest short."""
    if isinstance(x, Mapping):  # e.g. filter_thresholds: "near_duplicate 0.9986"
        return ", ".join(f"{_text(k)} {_fact(v)}" for k, v in x.items()) or MISSING
    v = _num(x)
    if v is None:
        return _text(x, 80)
    return str(int(v)) if v.is_integer() and not isinstance(x, float) else f"{v:.4g}"


def _yes_no(x: Any) -> str:
    """A boolean as "yes"/"no", "–" when missing."""
    return MISSING if x is None else ("yes" if x else "no")


def _support(mode: Mapping[str, Any], support: Any) -> str:
    """A mode's support; when loop.trim_covered cut it, also what it had and what the cut members were captioned."""
    extra = _dict(mode.get("extra"))
    trimmed = _num(extra.get("trimmed_from"))
    if trimmed is None:
        return _int(support)
    covered = _list(extra.get("covered_captions"))
    named = f"; the covered rest: {_text(covered[0][0])}" if covered and _list(covered[0]) else ""
    return f"{_int(support)} (of {_int(trimmed)}: the uncovered part{named})"


def _dict(x: Any) -> Mapping:
    """`x` if it is a mapping, else an empty one (so a malformed section is skipped, not fatal)."""
    return x if isinstance(x, Mapping) else {}


def _list(x: Any) -> list:
    """`x` if it is a list, else an empty one."""
    return list(x) if isinstance(x, (list, tuple)) else []


# ------------------------------------------------------------------------------------------- regressions

def regression_margin(report: Mapping[str, Any]) -> float:
    """The report's `regression_margin` (a fraction, e.g. 0.05), or DEFAULT_REGRESSION_MARGIN when unset."""
    value = report.get("regression_margin")
    return DEFAULT_REGRESSION_MARGIN if value is None else _check_margin(value)


def _check_margin(margin: Any) -> float:
    """`margin` as a float in [0, 1], or a ValueError naming the key to fix."""
    v = _num(margin)
    if v is None or not 0.0 <= v <= 1.0:
        raise ValueError(f"regression_margin must be a fraction in [0, 1] (0.05 = 5 points), got {margin!r}")
    return v


def _comparisons(report: Mapping[str, Any]) -> Iterable[dict]:
    """Every (before, after) pair the report can compare: test groups and classes, modes on val and test slice."""
    metrics = _dict(report.get("metrics"))
    test, base = _dict(metrics.get("test")), _dict(metrics.get("baseline_test"))
    for key, kind in (("per_group", "group"), ("per_class", "class")):
        after = _dict(test.get(key))
        for name, before in _dict(base.get(key)).items():
            yield {"kind": kind, "name": str(name), "split": "test", "before": before, "after": after.get(name)}
    for i, rnd in enumerate(r for r in map(_dict, _list(report.get("rounds"))) if r):
        for m in (m for m in map(_dict, _list(rnd.get("modes"))) if m):
            label, caption = _mode_label(m), _top_caption(m)[0]
            common = {"kind": "mode", "name": label, "caption": caption, "round": rnd.get("round", i)}
            yield {**common, "split": "val", "before": m.get("acc_before"), "after": m.get("acc_after")}
            ts = _dict(m.get("test_slice"))
            if ts:
                yield {**common, "split": "test", "n": ts.get("n"), "before": ts.get("acc_before"),
                       "after": ts.get("acc_after")}


def find_regressions(report: Mapping[str, Any], margin: float = DEFAULT_REGRESSION_MARGIN) -> list[dict]:
    """Groups, classes and modes whose accuracy dropped by more than `margin` (absolute), worst first.

    Groups and classes compare metrics.baseline_test with metrics.test; modes compare acc_before with acc_after
    (validation, split "val") and, when present, their held-out test_slice (split "test"). Each entry:
    {kind, name, split, before, after, change} (change = after - before), plus caption/round/n for modes.
    """
    margin = _check_margin(margin)
    found = []
    for c in _comparisons(report):
        before, after = _num(c["before"]), _num(c["after"])
        if before is None or after is None or after - before >= -margin - 1e-9:  # tolerance: 0.80 → 0.75 at 0.05
            continue
        found.append({**c, "before": before, "after": after, "change": after - before})
    return sorted(found, key=lambda r: r["change"])


def _compared_count(report: Mapping[str, Any]) -> int:
    """How many before/after pairs had both values (what the regression check looked at)."""
    return sum(_num(c["before"]) is not None and _num(c["after"]) is not None for c in _comparisons(report))


# ------------------------------------------------------------------------------------------------- charts

def write_charts(report: Mapping[str, Any], out_dir: str | os.PathLike,
                 margin: float = DEFAULT_REGRESSION_MARGIN) -> dict[str, Path]:
    """Draw the report's charts into `out_dir`/charts (CHART_FILES); a chart without data, or failing, is skipped."""
    try:
        from . import charts as ch
    except ImportError as e:  # matplotlib missing: the report still renders, without charts
        log.warning("report charts skipped (%s): install matplotlib", e)
        return {}
    out = Path(out_dir)
    rounds = [r for r in map(_dict, _list(report.get("rounds"))) if r]
    marks = [(v + 1, f"round {_round_no(r, i)}")
             for i, r in enumerate(rounds) if (v := _num(r.get("epoch"))) is not None]
    drawers = {"validation": lambda p: _validation_chart(ch, report, marks, p),
               "test": lambda p: _test_chart(ch, report, margin, p),
               "modes": lambda p: _modes_chart(ch, report, rounds, marks, p),
               "test_slices": lambda p: _test_slices_chart(ch, rounds, margin, p)}
    written = {}
    for name, draw in drawers.items():
        try:
            path = draw(out / CHART_FILES[name])
        except Exception as e:  # noqa: BLE001 - a chart must never cost the report
            log.warning("report chart %r skipped: %s: %s", name, type(e).__name__, e)
            continue
        if path is not None:
            written[name] = Path(path)
    return written


def _round_no(rnd: Mapping[str, Any], index: int) -> str:
    """A round's number as shown (1-based)."""
    v = _num(rnd.get("round", index))
    return MISSING if v is None else str(int(v) + 1)


def _validation_chart(ch, report: Mapping[str, Any], marks: list, path: Path) -> Path | None:
    """Validation accuracy and worst-group accuracy over 1-based epochs, rounds marked."""
    points = [p for p in map(_dict, _list(report.get("timeline"))) if _num(p.get("epoch")) is not None]
    series = [(label, [(_num(p["epoch"]) + 1, _num(p.get(key))) for p in points], ch.COLORS[color])
              for key, label, color in (("val_acc", "validation accuracy", "val"),
                                        ("val_worst_group_acc", "validation worst-group accuracy", "worst"))]
    return ch.curves_chart(series, marks, path, "Validation over epochs (dashed: discovery rounds)")


def _test_chart(ch, report: Mapping[str, Any], margin: float, path: Path) -> Path | None:
    """Per-group (per-class when there are no groups) test accuracy, baseline → final."""
    metrics = _dict(report.get("metrics"))
    test, base = _dict(metrics.get("test")), _dict(metrics.get("baseline_test"))
    for key, what in (("per_group", "group"), ("per_class", "class")):
        final, before = _dict(test.get(key)), _dict(base.get(key))
        if final or before:
            names = dict.fromkeys([*before, *final])
            rows = [{"name": n, "before": before.get(n), "after": final.get(n)} for n in names]
            title = f"Test accuracy per {what}" + (": baseline → final" if before and final else "")
            return ch.dumbbell_chart(rows, path, title, margin)
    return None


def _modes_chart(ch, report: Mapping[str, Any], rounds: list, marks: list, path: Path) -> Path | None:
    """Per-mode validation accuracy curves, labelled with the mode's caption."""
    captions = {_mode_label(m): _top_caption(m)[0] for r in rounds for m in map(_dict, _list(r.get("modes"))) if m}
    curves = [(str(k), [p for p in map(_dict, _list(v)) if _num(p.get("epoch")) is not None])
              for k, v in _dict(report.get("mode_accuracy")).items()]
    curves = [(k, pts) for k, pts in curves if pts]
    total = len(curves)
    series = [(f"{k}: {captions[k]}" if captions.get(k, MISSING) != MISSING else k,
               [(_num(p["epoch"]) + 1, _num(p.get("acc"))) for p in pts], ch.MODE_COLORS[i % len(ch.MODE_COLORS)])
              for i, (k, pts) in enumerate(curves[:ch.MAX_CURVES])]
    more = f" (first {len(series)} of {total})" if total > len(series) else ""
    return ch.curves_chart(series, marks, path, "Failure-mode accuracy on validation" + more)


def _test_slices_chart(ch, rounds: list, margin: float, path: Path) -> Path | None:
    """Per-mode held-out test slice accuracy before → after with 95% intervals."""
    rows = []
    for r in rounds:
        for m in (m for m in map(_dict, _list(r.get("modes"))) if m):
            ts = _dict(m.get("test_slice"))
            if ts:
                rows.append({"name": f"{_mode_label(m)} (n={_int(ts.get('n'))})", "before": ts.get("acc_before"),
                             "after": ts.get("acc_after"), "ci_before": ts.get("ci_before"),
                             "ci_after": ts.get("ci_after")})
    return ch.dumbbell_chart(rows, path, "Held-out test slice per mode: before → after", margin,
                             before_label="before", after_label="after") if rows else None


def _remove_stale_charts(out: Path, keep: Mapping[str, Path]) -> None:
    """Delete chart files of an earlier write that this report no longer has (and charts/ when empty)."""
    for name, rel in CHART_FILES.items():
        p = out / rel
        if name not in keep and p.is_file():
            p.unlink()
    charts_dir = out / "charts"
    if charts_dir.is_dir() and not any(charts_dir.iterdir()):
        charts_dir.rmdir()


# ------------------------------------------------------------------------------------------ content blocks

@dataclass
class Heading:
    """A section heading."""

    level: int
    text: str


@dataclass
class Para:
    """A paragraph of plain text."""

    text: str


@dataclass
class Facts:
    """A bullet list of "label: value" lines (as cards in HTML when `cards`)."""

    items: list[tuple[str, str]]
    cards: bool = False


@dataclass
class Notice:
    """A boxed message at the top: level "warning" (regressions) or "ok"."""

    level: str
    title: str
    items: list[str] = field(default_factory=list)


@dataclass
class Charts:
    """Chart images: (relative src, alt text) each."""

    items: list[tuple[str, str]]


@dataclass
class Table:
    """A table of plain-text cells."""

    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass
class Gallery:
    """Thumbnail images per row: (row title, caption, [(label, relative src) or None per column])."""

    columns: list[str]
    rows: list[tuple[str, str, list[Union[tuple[str, str], None]]]] = field(default_factory=list)


Block = Union[Heading, Para, Facts, Notice, Charts, Table, Gallery]
CHART_ALT = {"validation": "Validation accuracy and worst-group accuracy over epochs, rounds marked",
             "test": "Test accuracy of each group (or class), baseline to final",
             "modes": "Failure-mode accuracy on validation over epochs",
             "test_slices": "Held-out test slice accuracy per mode, before to after, with 95% intervals"}


def build_blocks(report: Mapping[str, Any], charts: Mapping[str, str] | None = None) -> list[Block]:
    """The report's content, in order, as renderer-independent blocks (`charts`: name -> relative path)."""
    blocks: list[Block] = [Heading(1, _title(report))]
    blocks += _regressions(report)
    blocks += _headline(report)
    blocks += _charts(charts or {})
    for section in (_discovery, _rounds, _method_details, _mode_accuracy, _groups, _timeline, _breakdown,
                    _settings):
        blocks += section(report)
    return blocks


def _listed_regressions(report: Mapping[str, Any], margin: float) -> list[Mapping[str, Any]]:
    """The report's own `regressions` list when it has one (shown as it is), else those found with `margin`."""
    listed = report.get("regressions")
    if isinstance(listed, list):
        return [r for r in map(_dict, _list(listed)) if r]
    return find_regressions(report, margin)


def _regressions(report: Mapping[str, Any]) -> list[Block]:
    """A warning box listing what got worse by more than the margin, or a one-line all-clear."""
    try:
        margin = regression_margin(report)
    except ValueError as e:
        return [Notice("warning", f"Regression check not run: {e}")]
    regressions = _listed_regressions(report, margin)
    pts = f"{100 * margin:.1f} pts"
    if regressions:
        n = len(regressions)
        return [Notice("warning", f"{n} regression{'s' * (n != 1)}: worse by more than {pts}",
                       [_regression_line(r) for r in regressions])]
    compared = _compared_count(report)
    if not compared:
        return []
    return [Notice("ok", f"No regressions: none of {compared} before/after comparisons (groups, classes, modes) "
                         f"got worse by more than {pts}.")]


def _regression_line(r: Mapping[str, Any]) -> str:
    """One regression as a sentence: what, where measured, before → after."""
    kind, name = _text(r.get("kind") or "slice"), _text(r.get("name"))
    caption = f' "{_text(r["caption"])}"' if r.get("caption") not in (None, "", MISSING, name) else ""
    if kind == "mode":
        where = f"held-out test slice, n={_int(r.get('n'))}" if r.get("split") == "test" else "validation"
    else:
        where = "test" if r.get("split") in (None, "test") else _text(r.get("split"))
    return f"{kind} {name}{caption} ({where}): {fmt_change(r.get('before'), r.get('after'))}"


def _charts(charts: Mapping[str, str]) -> list[Block]:
    """The charts write_report drew, in CHART_FILES order."""
    items = [(charts[name], CHART_ALT[name]) for name in CHART_FILES if charts.get(name)]
    items = [img for img in (_image(src, alt) for src, alt in items) if img]
    return [Charts([(src, alt) for alt, src in items])] if items else []


def _title(report: Mapping[str, Any]) -> str:
    """The report's title."""
    return _text(report.get("title") or "Blindspot report")


def _test_values(report: Mapping[str, Any]) -> dict[str, str]:
    """Test avg_acc / worst_group_acc: "before → after" when the baseline (model at round 1) has it, else final."""
    metrics = _dict(report.get("metrics"))
    test, base = _dict(metrics.get("test")), _dict(metrics.get("baseline_test"))
    return {key: fmt_change(base.get(key), test.get(key)) if key in base else fmt_pct(test.get(key))
            for key in ("avg_acc", "worst_group_acc") if key in base or key in test}


def _headline(report: Mapping[str, Any]) -> list[Block]:
    """Test average / worst-group accuracy (before → after when the baseline is known), validation too."""
    metrics = _dict(report.get("metrics"))
    test, base, val = _dict(metrics.get("test")), _dict(metrics.get("baseline_test")), _dict(metrics.get("val"))
    items: list[tuple[str, str]] = []
    if report.get("method") is not None:
        items.append(("Method", _text(report["method"])))
    values = _test_values(report)
    for key, label in (("avg_acc", "Test accuracy"), ("worst_group_acc", "Test worst-group accuracy")):
        if key in values:
            items.append((label, values[key]))
    for key, label in (("avg_acc", "Validation accuracy"), ("worst_group_acc", "Validation worst-group accuracy")):
        if key in val:
            items.append((label, fmt_pct(val.get(key))))
    if report.get("wall_seconds") is not None:
        items.append(("Wall time", fmt_seconds(report.get("wall_seconds"))))
    if not test and not base:
        items.append(("Test metrics", "none recorded"))
    return [Facts(items, cards=True)]


def _discovery(report: Mapping[str, Any]) -> list[Block]:
    """Discovery scores against the planted ground truth, when the data has one."""
    disc = _dict(report.get("discovery"))
    if not disc:
        return []
    k = f" (top {_int(disc['k'])} modes)" if disc.get("k") is not None else ""
    blocks: list[Block] = [Heading(2, "Discovery vs. planted blind spots"),
                           Facts([("Planted recall" + k, fmt_pct(disc.get("planted_recall"))),
                                  ("Caption hit rate", fmt_pct(disc.get("caption_hit")))])]
    rows = [[_text(p.get("group")), _text(p.get("value")), _yes_no(p.get("found")), _text(p.get("mode_id")),
             _yes_no(p.get("caption_hit"))] for p in map(_dict, _list(disc.get("planted")))]
    if rows:
        blocks.append(Table(["Planted group", "Value", "Found", "Mode", "Caption hit"], rows))
    return blocks


def _rounds(report: Mapping[str, Any]) -> list[Block]:
    """One section per discovery/generation round, or a sentence saying there were none."""
    rounds = [r for r in map(_dict, _list(report.get("rounds"))) if r]
    if not rounds:
        method = f" (method: {_text(report['method'])})" if report.get("method") is not None else ""
        return [Heading(2, "Rounds"), Para(f"No discovery rounds were run{method}.")]
    blocks: list[Block] = []
    for i, rnd in enumerate(rounds):
        blocks += _round(rnd, i)
    return blocks


def _round(rnd: Mapping[str, Any], index: int) -> list[Block]:
    """A round's facts, its caption probes, its modes table and its thumbnails."""
    title = f"Round {_round_no(rnd, index)}"
    if rnd.get("epoch") is not None:
        title += f" · after epoch {_epoch(rnd['epoch'])}"
    blocks: list[Block] = [Heading(2, title), Facts(_round_facts(rnd))]
    modes = [m for m in map(_dict, _list(rnd.get("modes"))) if m]
    if modes:
        blocks.append(_modes_table(modes))
        gallery = _gallery(modes)
        if gallery.rows:
            blocks.append(gallery)
    else:
        blocks.append(Para("No failure modes found in this round."))
    probes = _probes_table(rnd)
    if probes:
        blocks += [Heading(3, "Caption probes (images generated to test a caption; never trained on)"), probes]
    return blocks


def _round_facts(rnd: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Method, remedy, status, images generated / kept / injected / rejected by filter, and stage times."""
    items: list[tuple[str, str]] = []
    for key in ("method", "remedy", "status"):
        if rnd.get(key) is not None:
            items.append((key.capitalize(), _text(rnd[key])))
    counts = [(k, rnd.get(k)) for k in ("generated", "kept", "injected") if rnd.get(k) is not None]
    if counts:
        items.append(("Images", ", ".join(f"{_int(v)} {k}" for k, v in counts)))
    rejected = _dict(rnd.get("rejected_by"))
    if rejected:
        items.append(("Rejected by filter", ", ".join(f"{_text(k)}: {_int(v)}" for k, v in rejected.items())))
    for key in ("diversity", "details"):  # remedy-specific facts, e.g. prompt diversity, retrieval pool size
        facts = _dict(rnd.get(key))
        if facts:
            items.append((key.capitalize(), ", ".join(f"{_text(k)}: {_fact(v)}" for k, v in facts.items())))
    seconds = _dict(rnd.get("seconds"))
    if seconds:
        items.append(("Time", ", ".join(f"{_text(k)} {fmt_seconds(v)}" for k, v in seconds.items())))
    failed = [_text(p) for p in _list(rnd.get("failed_prompts"))]
    if failed:
        more = f" … (+{len(failed) - MAX_LISTED_PROMPTS} more)" if len(failed) > MAX_LISTED_PROMPTS else ""
        items.append((f"Failed prompts ({len(failed)})", "; ".join(failed[:MAX_LISTED_PROMPTS]) + more))
    return items


def _probes_table(rnd: Mapping[str, Any]) -> Table | None:
    """Caption probes of a round: images generated per caption, the model's error on them, kept for budget."""
    probes = [p for p in map(_dict, _list(rnd.get("probes"))) if p]
    if not probes:
        return None
    rows = [[_text(p.get("mode_id")), _text(p.get("caption")), _int(p.get("n")),
             fmt_ci(p.get("error"), [p.get("ci_low"), p.get("ci_high")]), _yes_no(p.get("kept"))] for p in probes]
    return Table(["Mode", "Caption", "Probe images", "Error [95% interval]", "Kept for budget"], rows)


def _top_caption(mode: Mapping[str, Any]) -> tuple[str, float | None]:
    """The mode's top-ranked caption and its score (the bare caption/class name when not captioned)."""
    for c in _list(mode.get("captions"))[:1]:
        if isinstance(c, (list, tuple)) and c:
            return _text(c[0]), _num(c[1]) if len(c) > 1 else None
        if isinstance(c, Mapping):
            return _text(c.get("caption", c.get("text"))), _num(c.get("score"))
        return _text(c), None
    return _text(mode.get("caption", mode.get("class_name"))), None


def _mode_label(mode: Mapping[str, Any]) -> str:
    """A mode's id, or its class name when it has none."""
    return _text(mode.get("mode_id") or mode.get("class_name"))


def _modes_table(modes: list[Mapping[str, Any]]) -> Table:
    """Mode id, top caption, support, error rate vs. class, accuracy before → after (test slice, group, images)."""
    with_group = any(m.get("majority_group") is not None for m in modes)
    with_images = any(m.get("images_planned") is not None or m.get("images_kept") is not None for m in modes)
    with_slice = any(_dict(m.get("test_slice")) for m in modes)
    with_coverage = any(_num(_dict(m.get("extra")).get("train_coverage")) is not None for m in modes)
    with_shared = any(_num(_dict(m.get("extra")).get("shared_error_overlap")) is not None for m in modes)
    headers = ["Mode", "Caption (score)", "Support", "Error (class)", "Val acc before → after"]  # ids name the class
    headers += ["Test slice n", "Test slice acc before → after [95% interval]"] * with_slice  # fixed or not, first
    headers += ["Majority group: acc before → after"] * with_group + ["Images injected / generated"] * with_images
    headers += ["Training coverage (slice score → rank score)"] * with_coverage
    headers += ["Shared with other classes' errors (removed before captioning)"] * with_shared
    rows = []
    for m in modes:
        caption, score = _top_caption(m)
        support = m.get("support", len(_list(m.get("members"))) if "members" in m else None)
        row = [_mode_label(m), caption + (f" ({_score(score)})" if score is not None else ""), _support(m, support),
               f"{fmt_pct(m.get('error_rate'))} ({fmt_pct(m.get('class_error_rate'))})",
               fmt_change(m.get("acc_before"), m.get("acc_after"))]
        if with_slice:
            ts = _dict(m.get("test_slice"))
            row += [_int(ts.get("n")), _ci_change(ts) if ts else MISSING]
        if with_group:
            group = m.get("majority_group")
            row.append(MISSING if group is None else
                       f"{_text(group)}: {fmt_change(m.get('group_acc_before'), m.get('group_acc_after'))}")
        if with_images:
            parts = [f"{_int(m[k])} {name}" for k, name in (("images_contrast", "contrast"), ("images_real", "real"))
                     if m.get(k)]
            detail = f" ({', '.join(parts)})" if parts else ""
            row.append(f"{_int(m.get('images_kept'))}{detail} / {_int(m.get('images_planned'))}")
        if with_coverage:
            extra = _dict(m.get("extra"))
            cover, slice_score = _num(extra.get("train_coverage")), _num(extra.get("slice_score"))
            row.append(MISSING if cover is None else f"{cover:.2f}" + (
                f" ({_score(slice_score)} → {_score(m.get('score'))})" if slice_score is not None else ""))
        if with_shared:
            shared = _num(_dict(m.get("extra")).get("shared_error_overlap"))
            row.append(MISSING if shared is None else f"{shared:.2f}")
        rows.append(row)
    return Table(headers, rows)


def _gallery(modes: list[Mapping[str, Any]]) -> Gallery:
    """Member / kept / rejected thumbnail grids of the modes that have any."""
    gallery = Gallery([label for _, label in THUMBNAIL_KEYS])
    for m in modes:
        cells = [_image(m.get(key), f"{_mode_label(m)} {label}") for key, label in THUMBNAIL_KEYS]
        if any(cells):
            gallery.rows.append((_mode_label(m), _top_caption(m)[0], cells))
    return gallery


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two+ letters, so "C:\..." is not a scheme


def _image(src: Any, alt: str) -> tuple[str, str] | None:
    """(alt, URL-quoted src) for a local thumbnail path; None when absent or a URL (nothing external loads)."""
    if not isinstance(src, str) or not src.strip() or _URL_SCHEME.match(src.strip()):
        return None
    return alt, quote(src.strip().replace("\\", "/"), safe="/")


def _mode_accuracy(report: Mapping[str, Any]) -> list[Block]:
    """Per-mode validation accuracy over epochs: first, last and the whole curve."""
    curves = _dict(report.get("mode_accuracy"))
    rows = []
    for mode_id, points in curves.items():
        pts = [p for p in map(_dict, _list(points)) if p]
        if not pts:
            continue
        curve = " · ".join(f"e{_epoch(p.get('epoch'))} {fmt_pct(p.get('acc'))}" for p in pts)
        rows.append([_text(mode_id), fmt_change(pts[0].get("acc"), pts[-1].get("acc")), curve])
    if not rows:
        return []
    return [Heading(2, "Mode accuracy over training (validation)"),
            Table(["Mode", "First → last", "Curve"], rows)]


def _group_rows(final: Mapping[str, Any], base: Mapping[str, Any]) -> list[list[str]]:
    """Rows of a per-name accuracy table, worst final accuracy first (missing values last)."""
    names = list(dict.fromkeys([*final, *base]))

    def key(name: str) -> tuple[bool, float]:
        v = _num(final.get(name)) if final else _num(base.get(name))
        return v is None, v if v is not None else 0.0

    rows = []
    for name in sorted(names, key=key):
        if base and final:
            rows.append([_text(name), fmt_pct(base.get(name)), fmt_pct(final.get(name)),
                         fmt_points(base.get(name), final.get(name)) or MISSING])
        else:
            rows.append([_text(name), fmt_pct((final or base).get(name))])
    return rows


def _groups(report: Mapping[str, Any]) -> list[Block]:
    """Per-group and per-class test accuracy, baseline vs. final when both are known."""
    metrics = _dict(report.get("metrics"))
    test, base = _dict(metrics.get("test")), _dict(metrics.get("baseline_test"))
    blocks: list[Block] = []
    for key, what in (("per_group", "group"), ("per_class", "class")):
        final, before = _dict(test.get(key)), _dict(base.get(key))
        if not final and not before:
            continue
        if final and before:
            headers = [what.capitalize(), "Baseline", "Final", "Change"]
        else:
            headers = [what.capitalize(), "Baseline" if before else "Accuracy"]
        blocks += [Heading(2, f"Test accuracy per {what}"),
                   Table(headers, _group_rows(final, before), note="Sorted worst first.")]
    return blocks


def _timeline(report: Mapping[str, Any]) -> list[Block]:
    """Validation accuracy per epoch (subsampled when long)."""
    points = [p for p in map(_dict, _list(report.get("timeline"))) if p]
    if not points:
        return []
    step = max(1, math.ceil(len(points) / MAX_TIMELINE_ROWS))
    shown = points[::step] + ([points[-1]] if (len(points) - 1) % step else [])
    rows = [[_epoch(p.get("epoch")), fmt_pct(p.get("val_acc")), fmt_pct(p.get("val_worst_group_acc"))]
            for p in shown]
    note = f"Every {step}th of {len(points)} epochs shown." if step > 1 else ""
    return [Heading(2, "Validation over epochs"), Table(["Epoch", "Accuracy", "Worst-group accuracy"], rows, note)]


def _breakdown(report: Mapping[str, Any]) -> list[Block]:
    """Where the time went: seconds and share per stage."""
    stages = {str(k): _num(v) for k, v in _dict(report.get("breakdown")).items()}
    if not stages:
        return []
    total = sum(v for v in stages.values() if v is not None)
    rows = [[name, fmt_seconds(s), fmt_pct(s / total) if s is not None and total > 0 else MISSING]
            for name, s in stages.items()]
    rows.append(["total", fmt_seconds(total), fmt_pct(1.0) if total > 0 else MISSING])
    if _num(report.get("wall_seconds")) is not None:
        rows.append(["wall clock", fmt_seconds(report.get("wall_seconds")), ""])
    return [Heading(2, "Time breakdown"), Table(["Stage", "Time", "Share"], rows)]


def _method_details(report: Mapping[str, Any]) -> list[Block]:
    """What a baseline method did (report['extra']: e.g. the JTT error set, the DFR head's C)."""
    blocks: list[Block] = []
    for name, facts in _dict(report.get("extra")).items():
        rows = [[_text(k), _text(v if not isinstance(v, float) else f"{v:.4g}")] for k, v in _dict(facts).items()
                if not isinstance(v, (list, dict))]
        if rows:
            blocks += [Heading(2, f"Method details: {name}"), Table(["Fact", "Value"], rows)]
    return blocks


def _settings(report: Mapping[str, Any]) -> list[Block]:
    """The run's key configuration and machine."""
    blocks: list[Block] = []
    for key, title in (("config", "Configuration"), ("machine", "Machine")):
        section = _dict(report.get(key))
        if section:
            rows = [[_text(k), _text(v)] for k, v in section.items()]
            blocks += [Heading(2, title), Table(["Setting", "Value"], rows)]
    return blocks


# ------------------------------------------------------------------------------------------------ markdown

_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#])")
_MD_LONE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: str) -> str:
    """Plain text made inert in Markdown (and in table cells)."""
    text = _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))
    return _MD_LONE_UNDERSCORE.sub(r"\\_", text)


def _md_table(headers: list[str], rows: Iterable[list[str]]) -> str:
    """A GFM table from already-escaped cells."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _md_block(block: Block) -> str:
    """One block as Markdown (followed by a blank line)."""
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_md(block.text)}\n"
    if isinstance(block, Para):
        return f"{_md(block.text)}\n"
    if isinstance(block, Facts):
        return "".join(f"- **{_md(k)}**: {_md(v)}\n" for k, v in block.items) if block.items else ""
    if isinstance(block, Notice):
        kind = "WARNING" if block.level == "warning" else "NOTE"
        return f"> [!{kind}]\n> **{_md(block.title)}**\n" + "".join(f"> - {_md(i)}\n" for i in block.items)
    if isinstance(block, Charts):
        return "\n".join(f"![{_md(alt)}]({src})\n" for src, alt in block.items)
    if isinstance(block, Table):
        table = _md_table([_md(h) for h in block.headers], ([_md(c) for c in row] for row in block.rows))
        return table + "\n" + (f"\n_{_md(block.note)}_\n" if block.note else "")
    if isinstance(block, Gallery):
        rows = ([f"**{_md(title)}**<br>{_md(caption)}"] +
                [f"![{_md(img[0])}]({img[1]})" if img else MISSING for img in cells]
                for title, caption, cells in block.rows)
        return _md_table(["Mode"] + [_md(c.capitalize()) for c in block.columns], rows) + "\n"
    raise TypeError(f"unknown report block {type(block).__name__}")


# ---------------------------------------------------------------------------------------------------- html

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 80rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num.change { white-space: normal; min-width: 9.5rem; }
td.long { min-width: 12rem; }
td:first-child { white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
ul.facts { padding-left: 1.2rem; }
p.note { color: #666; font-size: .85rem; margin-top: -.6rem; }
table.gallery td { text-align: center; }
img.thumb { height: 2.5rem; width: auto; image-rendering: pixelated; border: 1px solid #ccc; }  /* one scale per strip */
.caption { color: #555; font-size: .85rem; }
.notice { border-left: 5px solid; border-radius: 4px; padding: .6rem 1rem; margin: 1rem 0; }
.notice.warning { background: #fff4ec; border-color: #d9480f; color: #6b2407; }
.notice.ok { background: #eef8f1; border-color: #2da44e; color: #14532d; }
.notice ul { margin: .3rem 0 0; padding-left: 1.2rem; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin: 1rem 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .8rem; min-width: 11rem; background: #fcfcfd; }
.card .label { color: #666; font-size: .78rem; text-transform: uppercase; letter-spacing: .03em; }
.card .value { font-size: 1.05rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr)); gap: 1rem; margin: 1rem 0;
          align-items: start; }
figure.chart { margin: 0; border: 1px solid #e3e3e3; border-radius: 6px; padding: .4rem; background: #fff; }
figure.chart img { width: 100%; height: auto; display: block; }
"""

LONG_CELL = 24  # characters of text above which a cell is kept at least 12rem wide (captions wrap to 2 lines)
_NUMERIC = re.compile(r"^(–|[+-]?\d[^A-Za-z]*(\b(pts|min|s|h)\b[^A-Za-z]*)*)$")  # numbers, units, arrows


def _td(cell: str) -> str:
    """An escaped table cell, right-aligned when it holds a number; long text gets a minimum width."""
    if _NUMERIC.match(cell):
        cls = ' class="num change"' if "→" in cell else ' class="num"'
    else:
        cls = ' class="long"' if len(cell) > LONG_CELL else ""
    return f"<td{cls}>{html.escape(cell)}</td>"


def _html_block(block: Block) -> str:
    """One block as HTML."""
    e = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}>{e(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Facts):
        if block.cards:
            cards = "".join(f'<div class="card"><div class="label">{e(k)}</div><div class="value">{e(v)}</div></div>'
                            for k, v in block.items)
            return f'<div class="cards">{cards}</div>' if cards else ""
        items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in block.items)
        return f'<ul class="facts">{items}</ul>' if items else ""
    if isinstance(block, Notice):
        items = "".join(f"<li>{e(i)}</li>" for i in block.items)
        role = "alert" if block.level == "warning" else "status"
        return (f'<div class="notice {e(block.level, quote=True)}" role="{role}">'
                f"<b>{'⚠ ' * (block.level == 'warning')}{e(block.title)}</b>"
                + (f"<ul>{items}</ul>" if items else "") + "</div>")
    if isinstance(block, Charts):
        figs = "".join(f'<figure class="chart"><img src="{e(src, quote=True)}" alt="{e(alt, quote=True)}"></figure>'
                       for src, alt in block.items)
        return f'<div class="charts">{figs}</div>'
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
        body = "\n".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block.rows)
        note = f'\n<p class="note">{e(block.note)}</p>' if block.note else ""
        return (f'<div class="table-wrap"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n'
                f"</table></div>{note}")
    if isinstance(block, Gallery):
        head = "<th>Mode</th>" + "".join(f"<th>{e(c.capitalize())}</th>" for c in block.columns)
        rows = []
        for title, caption, cells in block.rows:
            imgs = "".join(f'<td><img class="thumb" src="{e(img[1], quote=True)}" alt="{e(img[0], quote=True)}">'
                           f"</td>" if img else f"<td>{MISSING}</td>" for img in cells)
            rows.append(f'<tr><td><b>{e(title)}</b><br><span class="caption">{e(caption)}</span></td>{imgs}</tr>')
        return f'<div class="table-wrap"><table class="gallery">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + \
            "\n".join(rows) + "\n</tbody>\n</table></div>"
    raise TypeError(f"unknown report block {type(block).__name__}")


# ------------------------------------------------------------------------------------------------- writing

def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically."""
    atomic_write(path, lambda f: f.write(text))


def main(argv: list[str] | None = None) -> int:
    """Re-render report.md and index.html from a report.json: `python -m blindspot.report <report dir|json>`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m blindspot.report <report directory or report.json>", file=sys.stderr)
        return 2
    path = Path(args[0])
    paths = write_report(load_report(path), path if path.is_dir() else path.parent)
    print("\n".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
