"""The run report: report.json / report.md / index.html rendered from a plain dict."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from blindspot.modes import FailureMode
from blindspot.report import fmt_pct, fmt_seconds, load_report, render_html, render_markdown, write_report

EVIL = "<script>alert(1)</script> on grass"


def _mode(mode_id: str, caption: str, score: float, members: list[int], **extra) -> dict:
    mode = FailureMode(class_index=0, class_name="star", members=members, error_rate=0.75, class_error_rate=0.2,
                       score=1.5, method="directions", mode_id=mode_id, captions=[(caption, score), ("a star", 0.1)])
    return {**mode.to_dict(), **extra}


def full_report() -> dict:
    """A report with every section filled, as the reporting callback would hand it over."""
    modes = [
        _mode("r0-star-0", "a star on sand", 0.812, [1, 2, 3, 4], thumbnail="thumbs/r0-star-0-members.png",
              generated_thumbnail="thumbs/r0-star-0-generated.png", rejected_thumbnail="thumbs/r0-star-0-rejected.png",
              acc_before=0.25, acc_after=0.875, group_acc_before=0.3, group_acc_after=0.9,
              majority_group="star|background=sand", images_planned=16, images_kept=12),
        _mode("r0-star-1", EVIL, 0.5, [5, 6], thumbnail="thumbs/r0-star-1-members.png",
              acc_before=0.5, acc_after=None, images_planned=8, images_kept=0),
    ]
    return {
        "title": "Blindspot: failure_diffusion on the built-in world",
        "method": "failure_diffusion",
        "wall_seconds": 754.2,
        "machine": {"gpus": 0, "cpu": "x86_64"},
        "config": {"seed": 0, "max_epochs": 12, "augment": {"images_per_mode": 16}},
        "metrics": {
            "val": {"avg_acc": 0.93, "worst_group_acc": 0.71},
            "test": {"avg_acc": 0.925, "worst_group_acc": 0.8, "per_class": {"star": 0.9, "moon": 0.95},
                     "per_group": {"star|background=sand": 0.8, "star|background=grass": 0.97,
                                   "moon|background=sand": float("nan")}},
            "baseline_test": {"avg_acc": 0.9, "worst_group_acc": 0.4, "per_class": {"star": 0.85, "moon": 0.95},
                              "per_group": {"star|background=sand": 0.4, "star|background=grass": 0.98,
                                            "moon|background=sand": 0.9}},
        },
        "discovery": {"planted_recall": 1.0, "caption_hit": 0.5, "k": 2,
                      "planted": [{"group": "star|background=sand", "found": True, "mode_id": "r0-star-0",
                                   "caption_hit": True, "value": "sand"}]},
        "rounds": [{"round": 0, "epoch": 4, "method": "failure_diffusion",
                    "seconds": {"embed": 1.5, "discover": 0.4, "caption": 0.2, "generate": 61.0, "filter": 3.0},
                    "modes": modes, "generated": 24, "kept": 12, "rejected_by": {"clip_score": 9, "classifier": 3},
                    "failed_prompts": ["a star on lava"]}],
        "mode_accuracy": {"r0-star-0": [{"epoch": 4, "acc": 0.25}, {"epoch": 8, "acc": 0.6},
                                        {"epoch": 11, "acc": 0.875}]},
        "breakdown": {"train": 600.0, "embed": 1.5, "discover": 0.4, "caption": 0.2, "generate": 61.0,
                      "filter": 3.0, "test": float("inf")},
        "timeline": [{"epoch": e, "val_acc": 0.8 + e / 100, "val_worst_group_acc": 0.4 + e / 50} for e in range(12)],
    }


@pytest.fixture
def written(tmp_path: Path) -> tuple[dict[str, Path], dict]:
    report = full_report()
    return write_report(report, tmp_path / "report"), report


def test_full_report_writes_all_three_files(written):
    paths, _ = written
    assert set(paths) == {"json", "markdown", "html"}
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "index.html"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 500


def test_json_round_trips_with_nan_as_null(written):
    paths, report = written
    text = paths["json"].read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)  # strict JSON: would not parse NaN as a bare token anyway, but must be valid
    loaded = load_report(paths["json"])
    assert loaded == load_report(paths["json"].parent)  # a directory works too
    assert loaded["metrics"]["test"]["per_group"]["moon|background=sand"] is None
    assert loaded["breakdown"]["test"] is None
    assert loaded["rounds"][0]["modes"][1]["acc_after"] is None
    assert loaded["rounds"][0]["modes"][0]["captions"] == [["a star on sand", 0.812], ["a star", 0.1]]
    assert FailureMode.from_dict(loaded["rounds"][0]["modes"][0]).caption == "a star on sand"
    assert loaded["title"] == report["title"] and loaded["timeline"] == report["timeline"]
    assert math.isnan(report["metrics"]["test"]["per_group"]["moon|background=sand"])  # input left untouched


def test_load_report_names_the_fix_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json"):
        load_report(tmp_path)


def test_markdown_has_headline_modes_and_thumbnails(written):
    paths, _ = written
    md = paths["markdown"].read_text()
    assert "90.0% → 92.5% (+2.5 pts)" in md  # test accuracy before → after
    assert "40.0% → 80.0% (+40.0 pts)" in md  # worst group
    assert "Planted recall (top 2 modes)**: 100.0%" in md and "Caption hit rate**: 50.0%" in md
    assert "a star on sand (0.812)" in md
    assert r"\<script\>alert(1)\</script\> on grass" in md  # escaped, still readable
    for name in ("r0-star-0-members", "r0-star-0-generated", "r0-star-0-rejected", "r0-star-1-members"):
        assert f"](thumbs/{name}.png)" in md
    assert "75.0% (20.0%)" in md  # error rate vs class error rate
    assert "25.0% → 87.5% (+62.5 pts)" in md and "50.0% → –" in md  # per-mode acc, missing after
    assert "12 / 16" in md and "24 generated, 12 kept" in md and "clip_score: 9, classifier: 3" in md
    assert "Failed prompts (1)**: a star on lava" in md
    assert "10 min 00 s" in md  # breakdown: train


def test_markdown_group_table_is_worst_first_with_missing_last(written):
    paths, _ = written
    md = paths["markdown"].read_text()
    section = md.split("per group")[1].split("##")[0]
    rows = [line for line in section.splitlines() if line.startswith("| star") or line.startswith("| moon")]
    assert [re.split(r"(?<!\\)\|", r)[1].strip() for r in rows] == [
        r"star\|background=sand", r"star\|background=grass", r"moon\|background=sand"]
    assert "| 40.0% | 80.0% | +40.0 pts |" in rows[0]
    assert "| 90.0% | – | – |" in rows[2]


def test_html_escapes_user_text_and_is_self_contained(written):
    paths, _ = written
    page = paths["html"].read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; on grass" in page
    assert "image-rendering: pixelated" in page
    assert re.findall(r'<img class="thumb" src="([^"]+)"', page) == [
        "thumbs/r0-star-0-members.png", "thumbs/r0-star-0-generated.png", "thumbs/r0-star-0-rejected.png",
        "thumbs/r0-star-1-members.png"]
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert "90.0% → 92.5% (+2.5 pts)" in page and "a star on sand (0.812)" in page


def test_thumbnail_urls_are_not_rendered():
    report = full_report()
    report["rounds"][0]["modes"][0]["thumbnail"] = "javascript:alert(1)"
    report["rounds"][0]["modes"][1]["thumbnail"] = "https://example.com/x.png"
    page, md = render_html(report), render_markdown(report)
    assert "javascript:" not in page and "example.com" not in page and "example.com" not in md
    assert 'src="thumbs/r0-star-0-generated.png"' in page


def test_thumbnail_paths_with_spaces_are_quoted():
    report = {"rounds": [{"modes": [_mode("r0-star-0", "a star", 0.3, [1], thumbnail="my thumbs/a (1).png")]}]}
    assert "](my%20thumbs/a%20%281%29.png)" in render_markdown(report)
    assert 'src="my%20thumbs/a%20%281%29.png"' in render_html(report)


def test_minimal_erm_report_says_no_rounds(tmp_path):
    paths = write_report({"method": "none", "metrics": {"test": {"avg_acc": 0.95, "worst_group_acc": 0.3}}}, tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (md, page):
        assert "No discovery rounds were run (method: none)." in text
        assert "95.0%" in text and "30.0%" in text
    assert "→" not in md  # no baseline: no before/after
    assert load_report(tmp_path)["metrics"]["test"]["avg_acc"] == 0.95


def test_empty_and_malformed_sections_do_not_crash(tmp_path):
    report = {"metrics": {"test": None, "baseline_test": {"avg_acc": "n/a"}}, "rounds": [{"modes": [{}, None]}, "x"],
              "discovery": {"planted": [None, {"group": "g"}]}, "breakdown": {}, "timeline": [None]}
    md = render_markdown(report)
    assert "Round 0" in md and "No failure modes found" in md
    assert write_report({}, tmp_path)["html"].read_text().count("No discovery rounds were run") == 1


def test_writes_are_atomic_and_replace(tmp_path):
    out = tmp_path / "report"
    write_report(full_report(), out)
    first = {p.name: p.read_text() for p in out.iterdir()}
    paths = write_report({"title": "second", "metrics": {"test": {"avg_acc": 0.5}}}, out)
    assert sorted(os.listdir(out)) == ["index.html", "report.json", "report.md"]  # no temporary files left
    md = paths["markdown"].read_text()
    assert md.startswith("# second\n") and md.count("# second") == 1 and "a star on sand" not in md
    assert load_report(out) == {"title": "second", "metrics": {"test": {"avg_acc": 0.5}}}
    assert len(paths["html"].read_text()) < len(first["index.html"])


def test_failed_write_keeps_the_old_report(tmp_path, monkeypatch):
    write_report({"title": "old"}, tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report({"title": "new"}, tmp_path)
    assert load_report(tmp_path) == {"title": "old"}
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_formatting_helpers():
    assert fmt_pct(0.875) == "87.5%" and fmt_pct(None) == "–" and fmt_pct(float("nan")) == "–"
    assert fmt_seconds(12.34) == "12.3 s" and fmt_seconds(125) == "2 min 05 s" and fmt_seconds(3720) == "1 h 02 min"
