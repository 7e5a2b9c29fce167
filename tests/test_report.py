"""The run report: report.json / report.md / index.html rendered from a plain dict."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest

from blindspot import charts
from blindspot.modes import FailureMode
from blindspot.report import (CHART_FILES, find_regressions, fmt_ci, fmt_pct, fmt_seconds, load_report, render_html,
                              render_markdown, summary_lines, write_report)

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
              majority_group="star|background=sand", images_planned=16, images_kept=12,
              test_slice={"n": 40, "acc_before": 0.2, "acc_after": 0.7, "ci_before": [0.1, 0.35],
                          "ci_after": [0.55, 0.82]}),
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
        "rounds": [{"round": 0, "epoch": 4, "method": "failure_diffusion", "remedy": "text2image",
                    "status": "remedied", "injected": 11, "details": {"prompts": 3, "pool_hit_rate": 2 / 3,
                                                                 "filter_thresholds": {"near_duplicate": 0.99856}},
                    "probes": [{"mode_id": "r0-star-0", "caption": "a star on sand", "n": 8, "error": 0.75,
                                "ci_low": 0.41, "ci_high": 0.93, "kept": True}],
                    "seconds": {"embed": 1.5, "discover": 0.4, "caption": 0.2, "generate": 61.0, "filter": 3.0},
                    "modes": modes, "generated": 24, "kept": 12, "rejected_by": {"clip_score": 9, "classifier": 3},
                    "failed_prompts": ["a star on lava"]}],
        "mode_accuracy": {"r0-star-0": [{"epoch": 4, "acc": 0.25}, {"epoch": 8, "acc": 0.6},
                                        {"epoch": 11, "acc": 0.875}]},
        "breakdown": {"train": 600.0, "embed": 1.5, "discover": 0.4, "caption": 0.2, "generate": 61.0,
                      "filter": 3.0, "test": float("inf")},
        "timeline": [{"epoch": e, "val_acc": 0.8 + e / 100, "val_worst_group_acc": 0.4 + e / 50} for e in range(12)],
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[dict[str, Path], dict]:
    report = full_report()
    return write_report(report, tmp_path_factory.mktemp("run") / "report"), report


def test_full_report_writes_all_three_files_and_the_charts(written):
    paths, _ = written
    assert set(paths) == {"json", "markdown", "html", "charts"}
    assert {paths[k].name for k in ("json", "markdown", "html")} == {"report.json", "report.md", "index.html"}
    out = paths["json"].parent
    assert paths["charts"] == [out / rel for rel in CHART_FILES.values()]  # every chart has data here, in order
    for p in [paths["json"], paths["markdown"], paths["html"], *paths["charts"]]:
        assert p.is_file() and p.stat().st_size > 500
    for p in paths["charts"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(out / "charts") if n.endswith(".tmp")]


def test_pages_embed_the_charts_by_relative_link(written):
    paths, _ = written
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for rel in CHART_FILES.values():
        assert re.search(rf"!\[[^]]+\]\({re.escape(rel)}\)", md)
        assert f'<img src="{rel}" alt="' in page
    headline = md.index("Test accuracy**")
    assert headline < md.index("](charts/validation.png)") < md.index("## Discovery")  # charts right under it


def test_empty_report_draws_no_charts(tmp_path):
    paths = write_report({}, tmp_path)
    assert paths["charts"] == [] and not (tmp_path / "charts").exists()
    assert "charts/" not in paths["markdown"].read_text() and "charts/" not in paths["html"].read_text()


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
    assert "Round 1" in md and "No failure modes found" in md  # rounds are shown 1-based, like epochs
    assert write_report({}, tmp_path)["html"].read_text().count("No discovery rounds were run") == 1


def test_writes_are_atomic_and_replace(tmp_path):
    out = tmp_path / "report"
    write_report(full_report(), out)
    first = {p.name: p.read_text() for p in out.iterdir() if p.is_file()}
    assert (out / CHART_FILES["validation"]).is_file()
    paths = write_report({"title": "second", "metrics": {"test": {"avg_acc": 0.5}}}, out)
    # no temporary files left, and the first report's charts are gone with it (charts/ too, now empty)
    assert sorted(os.listdir(out)) == ["index.html", "report.json", "report.md"]
    md = paths["markdown"].read_text()
    assert md.startswith("# second\n") and md.count("# second") == 1 and "a star on sand" not in md
    assert load_report(out) == {"title": "second", "metrics": {"test": {"avg_acc": 0.5}}, "regression_margin": 0.05,
                                "regressions": []}
    assert len(paths["html"].read_text()) < len(first["index.html"])


def test_failed_write_keeps_the_old_report(tmp_path, monkeypatch):
    write_report({"title": "old"}, tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_report({"title": "new"}, tmp_path)
    assert load_report(tmp_path)["title"] == "old"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_formatting_helpers():
    assert fmt_pct(0.875) == "87.5%" and fmt_pct(None) == "–" and fmt_pct(float("nan")) == "–"
    assert fmt_seconds(12.34) == "12.3 s" and fmt_seconds(125) == "2 min 05 s" and fmt_seconds(3720) == "1 h 02 min"


def _regression_report() -> dict:
    """Groups, classes and modes around a 5-point margin: -6 (flagged), -4 and exactly -5 (not flagged)."""
    return {
        "metrics": {"baseline_test": {"per_group": {"a|x": 0.80, "b|x": 0.80, "c|x": 0.80, "d|x": 0.5},
                                      "per_class": {"a": 0.90, "b": 0.70}},
                    "test": {"per_group": {"a|x": 0.74, "b|x": 0.76, "c|x": 0.75, "d|x": None},
                             "per_class": {"a": 0.95, "b": 0.60}}},
        "rounds": [{"round": 0, "epoch": 2, "modes": [
            _mode("r0-star-0", "a star on sand", 0.8, [1, 2], acc_before=0.5, acc_after=0.3,
                  test_slice={"n": 30, "acc_before": 0.6, "acc_after": 0.58}),
            _mode("r0-star-1", "a star on snow", 0.7, [3], acc_before=0.4, acc_after=0.9,
                  test_slice={"n": 25, "acc_before": 0.7, "acc_after": 0.45, "ci_before": [0.5, 0.85],
                              "ci_after": [0.3, 0.7]})]}],
    }


def test_find_regressions_uses_the_margin():
    found = find_regressions(_regression_report())
    assert [(r["kind"], r["name"], r["split"]) for r in found] == [
        ("mode", "r0-star-1", "test"), ("mode", "r0-star-0", "val"), ("class", "b", "test"), ("group", "a|x", "test")]
    assert [round(r["change"], 6) for r in found] == [-0.25, -0.2, -0.1, -0.06]  # worst first
    assert found[0]["n"] == 25 and found[0]["caption"] == "a star on snow" and found[0]["before"] == 0.7
    # b|x (-4 pts) is under the margin; c|x (exactly -5 pts) is not *more* than it; d|x has no final value
    assert [r["name"] for r in find_regressions(_regression_report(), margin=0.07)] == ["r0-star-1", "r0-star-0",
                                                                                        "b"]
    assert {r["name"] for r in find_regressions(_regression_report(), margin=0.039)} >= {"a|x", "b|x", "c|x"}
    assert find_regressions({}) == [] and find_regressions({"rounds": [None, {"modes": [{}]}]}) == []
    with pytest.raises(ValueError, match="regression_margin"):
        find_regressions({}, margin=-0.1)


def test_regressions_are_flagged_at_the_top(tmp_path):
    report = {**full_report(), **_regression_report()}
    paths = write_report(report, tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert md.index("> [!WARNING]") < md.index("**Method**") and "**4 regressions: worse by more than 5.0 pts**" in md
    assert r"group a\|x (test): 80.0% → 74.0% (-6.0 pts)" in md
    assert 'mode r0-star-1 "a star on snow" (held-out test slice, n=25): 70.0% → 45.0% (-25.0 pts)' in md
    assert page.index('<div class="notice warning"') < page.index('<div class="cards">') < page.index("charts/")
    assert "group a|x (test): 80.0% → 74.0% (-6.0 pts)" in page
    saved = load_report(tmp_path)
    assert saved["regression_margin"] == 0.05 and [r["name"] for r in saved["regressions"]] == [
        "r0-star-1", "r0-star-0", "b", "a|x"]
    assert "regressions" not in report  # the caller's dict is left alone


def test_report_margin_and_supplied_regressions_are_honoured(tmp_path):
    wide = write_report({**_regression_report(), "regression_margin": 0.5}, tmp_path)["markdown"].read_text()
    assert "[!WARNING]" not in wide and "No regressions: none of 9 before/after comparisons" in wide
    supplied = {**_regression_report(), "regressions": [{"kind": "group", "name": "z|y", "before": 0.9,
                                                         "after": 0.1, "change": -0.8}]}
    md = render_markdown(supplied)
    assert "**1 regression: worse by more than 5.0 pts**" in md and r"group z\|y (test): 90.0% → 10.0%" in md
    assert "a\\|x" not in md.split("##")[0]  # the supplied list is shown as it is, not recomputed
    with pytest.raises(ValueError, match="regression_margin"):
        write_report({"regression_margin": "lots"}, tmp_path)


def test_modes_table_shows_test_slice_probes_and_counts(written):
    paths, _ = written
    md = paths["markdown"].read_text()
    assert "Test slice acc before → after \\[95% interval\\]" in md
    assert "| 40 | 20.0% \\[10.0–35.0\\] → 70.0% \\[55.0–82.0\\] (+50.0 pts) |" in md
    assert "| – | – |" in md  # the second mode has no test slice
    assert "24 generated, 12 kept, 11 injected" in md and "**Remedy**: text2image" in md
    assert "**Details**: prompts: 3, pool_hit_rate: 0.6667, filter_thresholds: near_duplicate 0.9986" in md
    header = next(line for line in md.splitlines() if line.startswith("| Mode | Caption (score) |"))
    assert header.index("Test slice acc") < header.index("Majority group") < header.index("Images injected")  # verdict 1st
    long_caption = _mode("r0-star-0", "a photo of a star on grass", 0.6, [1])
    html = render_html({"rounds": [{"epoch": 4, "modes": [long_caption]}]})
    assert '<td>r0-star-0</td><td class="long">a photo of a star on grass (0.600)</td>' in html  # captions kept wide
    assert "| r0-star-0 | a star on sand | 8 | 75.0% \\[41.0–93.0\\] | yes |" in md  # caption probe
    assert fmt_ci(0.5, [0.25, None]) == "50.0%" and fmt_ci(None, [0.1, 0.2]) == "–"


def test_summary_lines_give_the_verdict_and_where_the_report_is():
    lines = summary_lines(full_report(), "run/report/index.html")
    assert lines[0] == ("test, before the first round → end: accuracy 90.0% → 92.5% (+2.5 pts); "
                        "worst group 40.0% → 80.0% (+40.0 pts)")
    assert lines[1] == "r0-star-0 'a star on sand': held-out test slice 20.0% → 70.0% (+50.0 pts) (n=40)"
    assert lines[2].startswith("r0-star-1 ") and lines[2].endswith(": validation 50.0% → –")  # no test slice
    assert lines[3:] == ["report: run/report/index.html"]  # no regression in this run
    worse = summary_lines(_regression_report(), "r/index.html")
    assert worse[-2].startswith('4 regressions: mode r0-star-1 "a star on snow" (held-out test slice, n=25): 70.0% → '
                                "45.0% (-25.0 pts); ") and worse[-2].endswith(" …")  # the first three, then "…"
    assert summary_lines({}, "r/index.html") == ["no test metrics recorded", "report: r/index.html"]


def test_modes_ranked_by_training_coverage_show_it_beside_both_scores():
    ranked = _mode("r0-star-0", "a star on grass", 0.6, [1, 2], extra={"slice_score": 2.0, "train_coverage": 0.25})
    md = render_markdown({"rounds": [{"epoch": 4, "modes": [ranked, _mode("r0-star-1", "a star", 0.5, [3])]}]})
    assert "Training coverage (slice score → rank score)" in md
    assert "| 0.25 (2.000 → 1.500) |" in md and md.count("| – |") >= 1  # the other mode has no coverage
    assert "Training coverage" not in render_markdown({"rounds": [{"epoch": 4, "modes": [_mode("m", "a", 1, [1])]}]})


def test_the_error_cue_shared_with_other_classes_is_shown_per_mode():
    mode = _mode("r0-circle-0", "a circle on grass", 0.5, [1], extra={"shared_error_overlap": 0.61})
    md = render_markdown({"rounds": [{"epoch": 4, "modes": [mode, _mode("r0-star-0", "a star", 0.5, [3])]}]})
    assert "Shared with other classes' errors (removed before captioning)" in md and "| 0.61 |" in md
    assert "Shared with other" not in render_markdown({"rounds": [{"epoch": 4, "modes": [_mode("m", "a", 1, [1])]}]})


def test_a_mode_cut_to_its_uncovered_members_says_how_many_it_had():
    mode = _mode("r0-circle-0", "a circle on grass", 0.5, [1, 2], extra={"trimmed_from": 29})
    md = render_markdown({"rounds": [{"epoch": 4, "modes": [mode, _mode("r0-star-0", "a star", 0.5, [3])]}]})
    assert "| 2 (of 29: the uncovered part) |" in md and "| 1 |" in md
    mode["extra"]["covered_captions"] = [["a circle on brick", 0.4], ["a small circle", 0.3]]
    md = render_markdown({"rounds": [{"epoch": 4, "modes": [mode]}]})
    assert "| 2 (of 29: the uncovered part; the covered rest: a circle on brick) |" in md


def test_a_modes_injected_images_say_how_many_are_contrast_and_how_many_real():
    mode = {**_mode("r0-cross-0", "a yellow cross", 0.5, [1]), "images_kept": 90, "images_contrast": 30,
            "images_real": 40, "images_planned": 70}
    plain = {**_mode("r0-star-0", "a star", 0.5, [3]), "images_kept": 96, "images_planned": 126}
    md = render_markdown({"rounds": [{"epoch": 4, "modes": [mode, plain]}]})
    assert "| 90 (30 contrast, 40 real) / 70 |" in md and "| 96 / 126 |" in md


def test_a_failing_chart_is_skipped_not_fatal(tmp_path, monkeypatch, caplog):
    def boom(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(charts, "curves_chart", boom)
    paths = write_report(full_report(), tmp_path)
    assert [p.name for p in paths["charts"]] == ["test_before_after.png", "test_slices.png"]
    assert "charts/validation.png" not in paths["html"].read_text() and "no fonts" in caplog.text


def test_partial_data_renders_and_skips_what_is_missing(tmp_path):
    report = {"timeline": [{"epoch": 0, "val_acc": None}, {"epoch": 1}, {"val_acc": 0.5}, None],
              "mode_accuracy": {"m": [{"epoch": 0, "acc": 0.2}, {"epoch": 1, "acc": float("nan")}], "n": []},
              "metrics": {"test": {"per_class": {"a": 0.9, "b": None}}},
              "rounds": [{"epoch": "x", "modes": [{"mode_id": "m", "test_slice": {"n": 3, "ci_after": [1]}}]}]}
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths["charts"]] == ["mode_accuracy.png", "test_before_after.png"]  # per class only
    md = paths["markdown"].read_text()
    assert "](charts/mode_accuracy.png)" in md and "validation.png" not in md and "[!" not in md
    assert charts.dumbbell_chart([{"name": "a"}], tmp_path / "x.png", "t", 0.05) is None
    assert charts.curves_chart([("a", [(1, None)], "#000")], [], tmp_path / "y.png", "t") is None
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
