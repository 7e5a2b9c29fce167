"""Pooling suite results over disjoint seeds: seed-weighted means, status and goals recomputed, bad inputs refused."""

import json

import pytest

from benchmarks.suite_seeds import main, pool

TH = {"fails_below": 0.7, "not_failed_at": 0.9, "min_gap": 0.02, "control_margin": 0.02}
WORLDS = [{"name": "w", "seed": 7, "planted": [{"cls": "star", "attribute": "background", "value": "grass",
                                                 "rate": 0.0}], "val_per_group": 20, "test_per_group": 50},
          {"name": "c", "seed": 8, "planted": [], "val_per_group": 20, "test_per_group": 50}]


def _result(seeds: list[int], methods: list[str], erm: float, fd: float, ceiling: float, found: float,
            control_fd: float) -> dict:
    """A minimal benchmarks.suite results JSON: one world with one planted slice, one control world."""
    n = len(seeds)
    accuracy = {"none": erm, "failure_diffusion": fd, "ceiling": ceiling}
    if "retrieval" in methods:
        accuracy["retrieval"] = 0.5

    def row(acc: float) -> dict:
        return {"avg_acc": 0.95, "worst_group_acc": acc, "images_added": 0, "wall_seconds": 60.0,
                "generate_seconds": 0.0, "seeds": n}
    per_world = [{"world": "w", "role": "planted", "control": False, "blind_spots": ["background"],
                  "shortcut": False, "methods": {m: row(a) for m, a in accuracy.items()}},
                 {"world": "c", "role": "control", "control": True, "blind_spots": [], "shortcut": False,
                  "methods": {"none": row(0.9), "failure_diffusion": row(control_fd), "ceiling": row(0.9)}}]
    slices = [{"id": "w:star|grass", "world": "w", "group": "star|grass", "class": "star",
               "attribute": "background", "value": "grass", "rate": 0.0, "shortcut": None,
               "groups": ["star|grass"], "accuracy": accuracy, "status": None, "gap_closed": {},
               "found": {"failure_diffusion": found}, "caption_hit": {"failure_diffusion": found},
               "handed": {"failure_diffusion": found}, "outranked_by": []}]
    return {"config": "default", "settings": {"methods": methods, "baseline": "none", "seeds": seeds,
                                              "run_prefix": ["+augment=<method>"], "common_overrides": []},
            "estimate_minutes_workers2": 1.0, "runs": {"planned": 1, "finished": 1, "missing": []},
            "worlds": WORLDS, "slices": slices, "per_world": per_world,
            "summary": {"thresholds": TH, "found_in_top_k": {"method": "failure_diffusion"}},
            "invocations": []}


def test_numbers_are_weighted_by_each_files_seeds_and_goals_recomputed():
    one = _result([0], ["none", "failure_diffusion", "retrieval"], 0.2, 0.5, 1.0, 0.0, 0.9)
    two = _result([1, 2], ["none", "failure_diffusion"], 0.8, 0.95, 1.0, 1.0, 0.84)
    out = pool([one, two])
    s = out["slices"][0]
    assert s["accuracy"]["none"] == pytest.approx((0.2 + 2 * 0.8) / 3)  # 0.6: failed by ERM, pooled
    assert s["status"] == "failed by ERM"  # neither file alone says so for seed 1-2 (0.8: partly failed)
    assert s["gap_closed"]["failure_diffusion"] == pytest.approx((0.8 - 0.6) / (1.0 - 0.6))
    assert s["found"]["failure_diffusion"] == pytest.approx(2 / 3)
    assert out["settings"]["methods"] == ["none", "failure_diffusion"]  # retrieval is in one file only
    assert out["settings"]["seeds"] == [0, 1, 2]
    control = out["summary"]["controls"]["failure_diffusion"]
    assert control["worst_delta"] == pytest.approx((0.0 + 2 * -0.06) / 3)  # -0.04: not within 2 points
    assert not control["within_margin"]
    assert out["runs"]["finished"] == 3 * 3 + 2 * 3  # world w: ERM, fd, ceiling; control: ERM, fd (ceiling = ERM)


def test_overlapping_seeds_or_other_worlds_are_refused():
    a = _result([0], ["none", "failure_diffusion"], 0.2, 0.5, 1.0, 1.0, 0.9)
    with pytest.raises(ValueError, match="more than one file"):
        pool([a, _result([0, 1], ["none", "failure_diffusion"], 0.2, 0.5, 1.0, 1.0, 0.9)])
    other = _result([1], ["none", "failure_diffusion"], 0.2, 0.5, 1.0, 1.0, 0.9)
    other["worlds"] = [dict(WORLDS[0], seed=99), WORLDS[1]]
    with pytest.raises(ValueError, match="different worlds"):
        pool([a, other])
    fresh = _result([1], ["none", "failure_diffusion"], 0.2, 0.5, 1.0, 1.0, 0.9)
    fresh["settings"]["test_split"] = {"name": "fresh_test", "factor": 4, "seed_offset": 7919}
    with pytest.raises(ValueError, match="different test splits"):
        pool([a, fresh])


def test_the_command_writes_the_pooled_tables(tmp_path, monkeypatch):
    for name, seeds, fd in (("s0.json", [0], 0.5), ("s12.json", [1, 2], 0.95)):
        result = _result(seeds, ["none", "failure_diffusion"], 0.6, fd, 1.0, 1.0, 0.9)
        result["settings"]["overrides"] = [f"seeds={seeds}", "worlds.seed=1"]  # the pooled file keeps the latter
        (tmp_path / name).write_text(json.dumps(result))
    monkeypatch.setenv("BLINDSPOT_RESULTS", str(tmp_path))
    assert main([str(tmp_path / "s0.json"), str(tmp_path / "s12.json"), "--stem", "pooled"]) == 0
    text = (tmp_path / "pooled.md").read_text()
    assert text.startswith("# Suite of planted worlds (`conf/suite/default.yaml` with `worlds.seed=1`)\n")
    assert "Pooled over seeds 0, 1, 2 from `s0.json` (seeds 0); `s12.json` (seeds 1, 2)" in text
    assert "| w | star\\|grass | 0 | no | 60% | 80% | 100% | 50% |" in text  # fd (0.5 + 2 x 0.95) / 3 = 0.8
    assert json.loads((tmp_path / "pooled.json").read_text())["summary"]["methods"]["failure_diffusion"][
        "gap_closed_mean"] == pytest.approx(0.5)
