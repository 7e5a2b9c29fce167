"""Round planning, the JSONL manifest, and the round runner's resume / fault handling (no models needed)."""

from __future__ import annotations

import json

import pytest
import torch

from blindspot.filters import Candidates, DegenerateFilter
from blindspot.generation.backends import GenerationOutput
from blindspot.generation.manifest import append_records, manifest_path, read_manifest, read_records
from blindspot.generation.rounds import (GenerationFailedError, RoundRunner, load_plan, plan_round, remove_strays,
                                         save_plan, split_budget)
from blindspot.generation.contrast import swap_class
from blindspot.images import load_image
from blindspot.modes import FailureMode


class SeededNoiseBackend:
    """Test double of a text-to-image backend: an image is a pure function of its seed; some prompts fail."""

    def __init__(self, fail_on=(), blank_on=()):
        self.fail_on, self.blank_on, self.calls = set(fail_on), set(blank_on), 0

    def generate(self, prompts, seeds):
        self.calls += 1
        if any(p in self.fail_on for p in prompts):
            raise RuntimeError("backend exploded")
        imgs = torch.stack([torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
        for i, p in enumerate(prompts):
            if p in self.blank_on:
                imgs[i] = float("nan")
        return GenerationOutput(imgs, list(prompts), list(seeds))


def judge(images, prompts, labels):
    return Candidates(images=images, labels=labels, prompts=prompts)


def modes(n=2):
    return [FailureMode(i, f"c{i}", [1, 2, 3], 0.8, 0.1, score=float(n - i), mode_id=f"c{i}-0",
                        captions=[(f"a c{i} on water", 0.5), (f"a small c{i}", 0.4)]) for i in range(n)]


def test_split_budget_is_proportional_and_exact():
    counts = split_budget([3.0, 1.0], 40)
    assert sum(counts) == 40 and counts[0] == 30
    assert sum(split_budget([1.0] * 7, 10)) == 10
    with pytest.raises(ValueError, match="budget"):
        split_budget([1.0], 0)


def test_plan_is_deterministic_with_unique_ids_and_seeds(tmp_path):
    a = plan_round(modes(), 20, 0, 7, str(tmp_path))
    b = plan_round(modes(), 20, 0, 7, str(tmp_path))
    assert a == b and len(a) == 20
    assert len({i.id for i in a}) == 20 and len({i.seed for i in a}) == 20
    assert {i.prompt for i in a if i.label == 0} == {"a c0 on water", "a small c0"}
    untargeted = plan_round(modes(), 20, 0, 7, str(tmp_path), untargeted=True)
    assert {i.prompt for i in untargeted} == {"a photo of a c0", "a photo of a c1"}
    save_plan(tmp_path / "plan.json", a, modes())
    items, ms = load_plan(tmp_path / "plan.json")
    assert items == a and [m.mode_id for m in ms] == ["c0-0", "c1-0"]


def confused_modes():
    ms = modes()
    labels = torch.full((6,), 0)
    ms[0].members = [0, 1, 2, 3]
    ms[0].set_confusions(torch.tensor([2, 2, 2, 1, 0, 0]), labels, ["c0", "c1", "c2"])
    return ms


def test_a_mode_records_which_classes_its_errors_went_to():
    m = confused_modes()[0]
    assert m.confused_with == [{"class_index": 2, "class_name": "c2", "errors": 3},
                               {"class_index": 1, "class_name": "c1", "errors": 1}]
    assert FailureMode.from_dict(m.to_dict()).confused_with == m.confused_with


def test_contrast_images_show_the_confused_classes_in_the_same_contexts(tmp_path):
    plain = plan_round(confused_modes(), 41, 0, 7, str(tmp_path))
    items = plan_round(confused_modes(), 41, 0, 7, str(tmp_path), contrast=0.25)
    assert len(items) == 41 and len({i.id for i in items}) == 41 and len({i.seed for i in items}) == 41
    contrast = [i for i in items if i.role == "contrast"]
    assert sum(i.mode_id == "c0-0" for i in items) == 27  # 1 each, then 2 : 1 by score, as without contrast
    assert len(contrast) == 7 and {i.mode_id for i in contrast} == {"c0-0"}  # mode c1 has no recorded confusions
    assert [i.label for i in contrast].count(2) == 5 and [i.label for i in contrast].count(1) == 2  # errors 3 : 1
    assert {i.prompt for i in contrast if i.label == 2} == {"a c2 on water", "a small c2"}
    assert all(i.class_name == f"c{i.label}" for i in items)
    assert [i.label for i in plain if i.mode_id == "c1-0"] == [i.label for i in items if i.mode_id == "c1-0"]
    assert plan_round(confused_modes(), 41, 0, 7, str(tmp_path), contrast=0.0) == plain
    untargeted = plan_round(confused_modes(), 41, 0, 7, str(tmp_path), untargeted=True, contrast=0.25)
    assert all(i.role == "target" for i in untargeted)
    with pytest.raises(ValueError, match="contrast"):
        plan_round(confused_modes(), 41, 0, 7, str(tmp_path), contrast=1.0)


def test_swap_class_names_the_other_class_with_a_matching_article():
    assert swap_class("a photo of a small star on grass", "star", "cross") == "a photo of a small cross on grass"
    assert swap_class("a photo of a star", "star", "owl") == "a photo of an owl"
    assert swap_class("a starfish beside a star", "star", "cat") == "a starfish beside a cat"


def test_a_modes_images_follow_its_caption_scores(tmp_path):
    mode = FailureMode(0, "star", [1, 2, 3], 0.8, 0.1, score=1.0, mode_id="star-0",
                       captions=[("a star on grass", 0.6), ("a purple star", 0.2), ("a large star", 0.1)])
    scored = [i.prompt for i in plan_round([mode], 40, 0, 7, str(tmp_path))]
    assert scored.count("a star on grass") == 30 and scored.count("a purple star") == 10
    uniform = [i.prompt for i in plan_round([mode], 40, 0, 7, str(tmp_path), caption_weighting="uniform")]
    assert uniform.count("a star on grass") == 20 and uniform.count("a purple star") == 20
    assert plan_round([mode], 3, 0, 7, str(tmp_path), prompts_per_mode=3)[0].prompt == "a star on grass"
    with pytest.raises(ValueError, match="caption_weighting"):
        plan_round([mode], 4, 0, 7, str(tmp_path), caption_weighting="softmax")


def test_manifest_ignores_a_torn_last_line(tmp_path):
    path = manifest_path(tmp_path, 0)
    append_records(path, [{"id": "a", "round": 0}, {"id": "b", "round": 0}])
    with open(path, "a") as f:
        f.write('{"id": "c", "rou')  # a kill in the middle of a write
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    append_records(manifest_path(tmp_path, 1), [{"id": "b", "round": 0}, {"id": "d", "round": 1}])
    assert [r["id"] for r in read_manifest(tmp_path)] == ["a", "b", "d"]


def run_round(tmp_path, backend, items, batch_size=4, **kw):
    runner = RoundRunner(backend, [DegenerateFilter()], judge, batch_size=batch_size, progress=False, **kw)
    return runner.run(items, 0, manifest_path(tmp_path, 0), tmp_path)


def test_round_writes_every_image_once_and_resumes_without_duplicates(tmp_path):
    items = plan_round(modes(), 12, 0, 1, str(tmp_path / "images"))
    (tmp_path / "images").mkdir()
    first = run_round(tmp_path, SeededNoiseBackend(), items[:5])  # "killed" after 5 items
    assert first.generated == 5
    again = run_round(tmp_path, SeededNoiseBackend(), items)  # resume the whole round
    assert again.skipped_done == 5 and again.generated == 7
    records = read_manifest(tmp_path)
    assert len(records) == 12 and len({(r["mode_id"], r["seed"]) for r in records}) == 12
    for r in records:
        assert load_image(r["path"]).shape == (3, 8, 8)


def test_orphan_images_are_reused_and_strays_removed(tmp_path):
    items = plan_round(modes(), 6, 0, 1, str(tmp_path / "images"))
    (tmp_path / "images").mkdir()
    run_round(tmp_path, SeededNoiseBackend(), items)
    reference = {r["id"]: load_image(r["path"]) for r in read_manifest(tmp_path)}
    manifest_path(tmp_path, 0).unlink()  # images written, manifest lines lost: all orphans
    (tmp_path / "images" / ".x.png.123.tmp").write_text("half")
    (tmp_path / "images" / "unplanned.png").write_text("junk")
    assert remove_strays(tmp_path / "images", {i.path for i in items}) == 2
    backend = SeededNoiseBackend()
    stats = run_round(tmp_path, backend, items)
    assert stats.reused == 6 and stats.generated == 0 and backend.calls == 0
    assert {r["id"]: load_image(r["path"]) for r in read_manifest(tmp_path)}.keys() == reference.keys()


def test_a_failing_prompt_is_skipped_and_reported(tmp_path):
    items = plan_round(modes(), 8, 0, 1, str(tmp_path / "images"))
    (tmp_path / "images").mkdir()
    bad = items[0].prompt
    stats = run_round(tmp_path, SeededNoiseBackend(fail_on={bad}), items, max_failure_fraction=1.0)
    n_bad = sum(i.prompt == bad for i in items)
    assert len(stats.failed_prompts) == n_bad and stats.generated == 8 - n_bad
    with pytest.raises(GenerationFailedError, match="max_failure_fraction"):
        run_round(tmp_path / "x", SeededNoiseBackend(fail_on={bad}), items, max_failure_fraction=0.1)


def test_nan_images_are_filtered_and_counted(tmp_path):
    items = plan_round(modes(1), 4, 0, 1, str(tmp_path / "images"))
    (tmp_path / "images").mkdir()
    stats = run_round(tmp_path, SeededNoiseBackend(blank_on={items[0].prompt}), items)
    assert stats.rejected_by.get("degenerate") == sum(i.prompt == items[0].prompt for i in items)
    kept = [r for r in read_manifest(tmp_path) if r["kept"]]
    assert all(r["prompt"] != items[0].prompt for r in kept)
    assert json.loads(json.dumps(read_manifest(tmp_path)))  # records are plain JSON


def test_a_confused_class_that_already_fills_the_failure_context_gets_no_contrast_images():
    from blindspot.generation.contrast import ContextCounts

    mode = confused_modes()[0]  # class c0; errors went to c2 (3) and c1 (1)
    reads = {"c0": [{"place": "on water"}] * 2 + [{"place": "on sand"}] * 8,
             "c1": [{"place": "on water"}] * 2 + [{"place": "on sand"}] * 8,
             "c2": [{"place": "on water"}] * 9 + [{"place": "on sand"}] * 1}  # c2's shortcut: water
    counts = ContextCounts(reads, scale=10.0)
    assert counts.count("c2", "place", "on water") == 90.0
    view = counts.prune(mode, ("place", "on water"), planned=30)  # c0 on water: 20 real + 30 planned < 90
    assert [c["class_name"] for c in view.confused_with] == ["c1"] and len(mode.confused_with) == 2
    assert counts.prune(mode, ("place", "on water"), planned=100) is mode  # 120 > 90: both kept
    assert counts.prune(mode, None, planned=30) is mode  # context unknown (a caption not from the vocabulary)
