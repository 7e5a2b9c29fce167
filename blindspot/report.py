"""Render a run's report (a plain dict) as report.json, report.md and a self-contained index.html.

Lightning-free: the reporting callback gathers the facts into a dict, this module only formats them (DESIGN.md,
"Run outputs"). Every key is optional; what is absent is skipped. The keys it reads:

    title, method, wall_seconds, machine{}, config{}
    metrics: {val|test|baseline_test: {avg_acc, worst_group_acc, per_group{name: acc}, per_class{name: acc}}}
    discovery: {planted_recall, caption_hit, k, planted[{group, found, mode_id, caption_hit, value}]}
    rounds[{round, epoch, method, seconds{stage: s}, generated, kept, rejected_by{filter: n}, failed_prompts[],
            modes[FailureMode.to_dict() + thumbnail, generated_thumbnail, rejected_thumbnail (relative paths),
                  acc_before, acc_after, group_acc_before, group_acc_after, majority_group,
                  images_planned, images_kept]}]
    mode_accuracy{mode_id: [{epoch, acc}]}, breakdown{stage: s}, timeline[{epoch, val_acc, val_worst_group_acc}]

Epochs are 0-based in the dict (Lightning's current_epoch) and shown 1-based. Accuracies are fractions in [0, 1];
None/NaN/inf mean "unknown" (shown as "–", written to JSON as null).
The content is built once as a short list of blocks (headings, facts, tables, thumbnail galleries) and then
written out by a Markdown and an HTML renderer, so the two files always say the same thing. All text from
the dict (captions, class and group names) is escaped by the renderer; nothing is trusted as markup.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote

MISSING = "–"  # how a missing or non-finite value is shown
REPORT_FILES = {"json": "report.json", "markdown": "report.md", "html": "index.html"}
THUMBNAIL_KEYS = (("thumbnail", "members"), ("generated_thumbnail", "kept samples"),
                  ("rejected_thumbnail", "rejected samples"))
MAX_LISTED_PROMPTS = 10  # failed prompts listed per round (the rest counted)
MAX_TIMELINE_ROWS = 20  # longer timelines are shown every n-th epoch (first and last always kept)


# --------------------------------------------------------------------------------------------- public API

def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and index.html into `out_dir` atomically; return their paths by kind."""
    if not isinstance(report, Mapping):
        raise TypeError(f"write_report needs a dict, got {type(report).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = to_jsonable(report)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    _atomic_write_text(paths["json"], json.dumps(clean, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    _atomic_write_text(paths["markdown"], render_markdown(clean))
    _atomic_write_text(paths["html"], render_html(clean))
    return paths


def load_report(path: str | os.PathLike) -> dict:
    """Read a report.json (or the report.json inside a report directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / REPORT_FILES["json"]
    if not p.is_file():
        raise FileNotFoundError(f"no report at {p}: pass a report.json or the directory write_report wrote to")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as GitHub-flavoured Markdown."""
    return "\n".join(_md_block(b) for b in build_blocks(report)).rstrip() + "\n"


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS, no scripts, no external resources)."""
    body = "\n".join(_html_block(b) for b in build_blocks(report))
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


def _yes_no(x: Any) -> str:
    """A boolean as "yes"/"no", "–" when missing."""
    return MISSING if x is None else ("yes" if x else "no")


def _dict(x: Any) -> Mapping:
    """`x` if it is a mapping, else an empty one (so a malformed section is skipped, not fatal)."""
    return x if isinstance(x, Mapping) else {}


def _list(x: Any) -> list:
    """`x` if it is a list, else an empty one."""
    return list(x) if isinstance(x, (list, tuple)) else []


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
    """A bullet list of "label: value" lines."""

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


Block = Union[Heading, Para, Facts, Table, Gallery]


def build_blocks(report: Mapping[str, Any]) -> list[Block]:
    """The report's content, in order, as renderer-independent blocks."""
    blocks: list[Block] = [Heading(1, _title(report))]
    for section in (_headline, _discovery, _rounds, _method_details, _mode_accuracy, _groups, _timeline, _breakdown,
                    _settings):
        blocks += section(report)
    return blocks


def _title(report: Mapping[str, Any]) -> str:
    """The report's title."""
    return _text(report.get("title") or "Blindspot report")


def _headline(report: Mapping[str, Any]) -> list[Block]:
    """Test average / worst-group accuracy (before → after when the baseline is known), validation too."""
    metrics = _dict(report.get("metrics"))
    test, base, val = _dict(metrics.get("test")), _dict(metrics.get("baseline_test")), _dict(metrics.get("val"))
    items: list[tuple[str, str]] = []
    if report.get("method") is not None:
        items.append(("Method", _text(report["method"])))
    for key, label in (("avg_acc", "Test accuracy"), ("worst_group_acc", "Test worst-group accuracy")):
        if key in base:
            items.append((label, fmt_change(base.get(key), test.get(key))))
        elif key in test:
            items.append((label, fmt_pct(test.get(key))))
    for key, label in (("avg_acc", "Validation accuracy"), ("worst_group_acc", "Validation worst-group accuracy")):
        if key in val:
            items.append((label, fmt_pct(val.get(key))))
    if report.get("wall_seconds") is not None:
        items.append(("Wall time", fmt_seconds(report.get("wall_seconds"))))
    if not test and not base:
        items.append(("Test metrics", "none recorded"))
    return [Facts(items)]


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
    """A round's facts, its modes table and its thumbnails."""
    title = f"Round {_int(rnd.get('round', index))}"
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
    return blocks


def _round_facts(rnd: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Method, images generated / kept / rejected by filter, and stage times of one round."""
    items: list[tuple[str, str]] = []
    if rnd.get("method") is not None:
        items.append(("Method", _text(rnd["method"])))
    if rnd.get("generated") is not None or rnd.get("kept") is not None:
        items.append(("Images", f"{_int(rnd.get('generated'))} generated, {_int(rnd.get('kept'))} kept"))
    rejected = _dict(rnd.get("rejected_by"))
    if rejected:
        items.append(("Rejected by filter", ", ".join(f"{_text(k)}: {_int(v)}" for k, v in rejected.items())))
    seconds = _dict(rnd.get("seconds"))
    if seconds:
        items.append(("Time", ", ".join(f"{_text(k)} {fmt_seconds(v)}" for k, v in seconds.items())))
    failed = [_text(p) for p in _list(rnd.get("failed_prompts"))]
    if failed:
        more = f" … (+{len(failed) - MAX_LISTED_PROMPTS} more)" if len(failed) > MAX_LISTED_PROMPTS else ""
        items.append((f"Failed prompts ({len(failed)})", "; ".join(failed[:MAX_LISTED_PROMPTS]) + more))
    return items


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
    """Mode id, class, top caption, support, error rate vs. class, accuracy before → after (and group, images)."""
    with_group = any(m.get("majority_group") is not None for m in modes)
    with_images = any(m.get("images_planned") is not None or m.get("images_kept") is not None for m in modes)
    headers = ["Mode", "Class", "Caption (score)", "Support", "Error (class)", "Acc before → after"]
    headers += ["Majority group: acc before → after"] * with_group + ["Images kept / planned"] * with_images
    rows = []
    for m in modes:
        caption, score = _top_caption(m)
        support = m.get("support", len(_list(m.get("members"))) if "members" in m else None)
        row = [_mode_label(m), _text(m.get("class_name", m.get("class_index"))),
               caption + (f" ({_score(score)})" if score is not None else ""), _int(support),
               f"{fmt_pct(m.get('error_rate'))} ({fmt_pct(m.get('class_error_rate'))})",
               fmt_change(m.get("acc_before"), m.get("acc_after"))]
        if with_group:
            group = m.get("majority_group")
            row.append(MISSING if group is None else
                       f"{_text(group)}: {fmt_change(m.get('group_acc_before'), m.get('group_acc_after'))}")
        if with_images:
            row.append(f"{_int(m.get('images_kept'))} / {_int(m.get('images_planned'))}")
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
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafafa; }
ul.facts { padding-left: 1.2rem; }
p.note { color: #666; font-size: .85rem; margin-top: -.6rem; }
table.gallery td { text-align: center; }
img.thumb { width: 12rem; max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
.caption { color: #555; font-size: .85rem; }
"""

_NUMERIC = re.compile(r"^(–|[+-]?\d[^A-Za-z]*(\b(pts|min|s|h)\b[^A-Za-z]*)*)$")  # numbers, units, arrows


def _td(cell: str) -> str:
    """An escaped table cell, right-aligned when it holds a number."""
    cls = ' class="num"' if _NUMERIC.match(cell) else ""
    return f"<td{cls}>{html.escape(cell)}</td>"


def _html_block(block: Block) -> str:
    """One block as HTML."""
    e = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}>{e(block.text)}</h{block.level}>"
    if isinstance(block, Para):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Facts):
        items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in block.items)
        return f'<ul class="facts">{items}</ul>' if items else ""
    if isinstance(block, Table):
        head = "".join(f"<th>{e(h)}</th>" for h in block.headers)
        body = "\n".join("<tr>" + "".join(_td(c) for c in row) + "</tr>" for row in block.rows)
        note = f'\n<p class="note">{e(block.note)}</p>' if block.note else ""
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{note}"
    if isinstance(block, Gallery):
        head = "<th>Mode</th>" + "".join(f"<th>{e(c.capitalize())}</th>" for c in block.columns)
        rows = []
        for title, caption, cells in block.rows:
            imgs = "".join(f'<td><img class="thumb" src="{e(img[1], quote=True)}" alt="{e(img[0], quote=True)}">'
                           f"</td>" if img else f"<td>{MISSING}</td>" for img in cells)
            rows.append(f'<tr><td><b>{e(title)}</b><br><span class="caption">{e(caption)}</span></td>{imgs}</tr>')
        return f'<table class="gallery">\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + \
            "\n</tbody>\n</table>"
    raise TypeError(f"unknown report block {type(block).__name__}")


# ------------------------------------------------------------------------------------------------- writing

def _atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and os.replace."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
