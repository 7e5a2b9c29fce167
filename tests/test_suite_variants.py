"""The side-by-side table of a method's settings on the suite: means over the slices ERM fails, per variant."""

import json

import pytest

from benchmarks.suite_variants import main, variant_rows


def _result(fd: dict, control_worst: float, with_erm: bool = True, with_gap: bool = True) -> dict:
    """A minimal benchmarks.suite results JSON: slice a (ERM fails), slice b (ERM does not), one control world
    (ERM's worst group 0.9). Without ERM, the file has no ERM / ceiling accuracies and no gap closed."""
    def one(sid, erm, method, ceiling):
        gap = (method - erm) / (ceiling - erm) if method is not None and with_erm and with_gap else None
        acc = {"failure_diffusion": method, **({"none": erm, "ceiling": ceiling} if with_erm else {})}
        return {"id": sid, "accuracy": acc, "gap_closed": {"failure_diffusion": gap},
                "found": {"failure_diffusion": 1.0}, "caption_hit": {"failure_diffusion": 0.0}}
    methods = {"failure_diffusion": {"worst_group_acc": control_worst}}
    if with_erm:
        methods["none"] = {"worst_group_acc": 0.9}
    return {"slices": [one("w:a|x", 0.2, fd["a"], 1.0), one("w:b|y", 0.95, fd["b"], 1.0)],
            "per_world": [{"world": "c", "control": True, "methods": methods}],
            "summary": {"thresholds": {"min_gap": 0.02, "not_failed_at": 0.9}}}


def test_means_count_only_the_slices_erm_fails_and_erm_comes_from_any_file():
    results = {"old": _result({"a": 0.6, "b": 0.9}, 0.87, with_erm=False),
               "new": _result({"a": 0.84, "b": 0.97}, 0.9)}
    rows, summary = variant_rows(results, "failure_diffusion", 0.7)
    assert [r["failed"] for r in rows] == [True, False]
    assert rows[0]["erm"] == 0.2 and rows[0]["ceiling"] == 1.0  # read from "new", the file that has them
    # "old" has no ERM runs of its own: its gap closed and control delta come from the shared ERM and ceiling
    assert summary["old"]["mean"] == pytest.approx(0.5) and summary["new"]["mean"] == pytest.approx(0.8)
    assert summary["old"]["slices"] == 1 and summary["old"]["control_delta"] == [pytest.approx(-0.03)]
    assert summary["new"]["found"] == [True] and summary["new"]["caption_hit"] == [False]  # slice a: ERM < 90%


def test_the_command_writes_json_and_a_table(tmp_path):
    for label, fd in (("old", {"a": 0.6, "b": 0.9}), ("new", {"a": None, "b": 0.97})):
        (tmp_path / f"{label}.json").write_text(json.dumps(_result(fd, 0.91)))
    stem = tmp_path / "out"
    assert main([f"old={tmp_path / 'old.json'}", f"new={tmp_path / 'new.json'}", "--out", str(stem)]) == 0
    text = stem.with_suffix(".md").read_text()
    assert "| w:a\\|x | 20% | 60% (50%) | – (–) | 100% |" in text
    assert json.loads(stem.with_suffix(".json").read_text())["summary"]["new"]["slices"] == 0
