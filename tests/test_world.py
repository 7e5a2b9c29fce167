"""The built-in world: deterministic renders, balanced evaluation splits, planted rates, captions, bad input."""

from __future__ import annotations

import collections

import pytest
import torch

from blindspot.world.corpus import corpus_batch
from blindspot.world.dataset import Planted, SplitSizes, build_split, group_names
from blindspot.world.render import render
from blindspot.world.spec import BACKGROUNDS, CLASSES, WorldSpec

SPEC = WorldSpec()
PLANTED = [Planted("star", "background", "water", 0.9, exclusive=True), Planted("cross", "background", "grass", 0.9),
           Planted("star", "background", "grass", 0.01)]
SMALL = SplitSizes(train_per_class=300, val_per_group=4, test_per_group=6, pool_per_class=20)


def test_render_is_deterministic_and_seed_dependent():
    idx = torch.arange(12) % 6
    a = render(idx, idx, idx % 5, idx % 2, seed=3)
    b = render(idx, idx, idx % 5, idx % 2, seed=3)
    c = render(idx, idx, idx % 5, idx % 2, seed=4)
    assert a.dtype == torch.uint8 and a.shape == (12, 3, 32, 32)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_backgrounds_differ_in_colour():
    n = 64
    means = []
    for b in range(len(BACKGROUNDS)):
        img = render(torch.zeros(n, dtype=torch.long), torch.full((n,), b), torch.zeros(n, dtype=torch.long),
                     torch.zeros(n, dtype=torch.long), seed=b)
        means.append(img.float().mean(dim=(0, 2, 3)))
    means = torch.stack(means)
    dist = torch.cdist(means, means) + torch.eye(len(means)) * 1e3
    assert dist.min() > 10  # every background has its own average colour


def test_split_is_a_pure_function_of_the_seed(tmp_path):
    a = build_split(SPEC, PLANTED, "val", SMALL, seed=0)
    b = build_split(SPEC, PLANTED, "val", SMALL, seed=0, cache_dir=tmp_path)
    c = build_split(SPEC, PLANTED, "val", SMALL, seed=0, cache_dir=tmp_path)  # from the cache
    d = build_split(SPEC, PLANTED, "val", SMALL, seed=1)
    assert torch.equal(a.images, b.images) and torch.equal(b.images, c.images)
    assert a.fingerprint == c.fingerprint != d.fingerprint
    assert not torch.equal(a.images, d.images)
    assert len(list(tmp_path.glob("world-val-*.pt"))) == 1


@pytest.mark.parametrize("split,per", [("val", SMALL.val_per_group), ("test", SMALL.test_per_group)])
def test_evaluation_splits_are_balanced_over_groups(split, per):
    s = build_split(SPEC, PLANTED, split, SMALL, seed=0)
    counts = torch.bincount(s.groups, minlength=len(s.group_names))
    assert len(s.group_names) == len(CLASSES) * len(BACKGROUNDS)
    assert torch.all(counts == per)
    name = s.group_names[int(s.groups[0])]
    assert name == f"{SPEC.classes[int(s.labels[0])]}|{SPEC.backgrounds[int(s.attributes['background'][0])]}"


def test_planted_rates_hold_in_train():
    s = build_split(SPEC, PLANTED, "train", SMALL, seed=0)
    bg = s.attributes["background"]
    for p in PLANTED:
        c, v = SPEC.classes.index(p.cls), SPEC.backgrounds.index(p.value)
        rate = (bg[s.labels == c] == v).float().mean().item()
        assert abs(rate - p.rate) < 0.05
    circle = s.labels == SPEC.classes.index("circle")
    # an unplanted class sees every background, but (exclusive) rarely the planted values
    seen = collections.Counter(bg[circle].tolist())
    assert set(seen) == set(range(len(BACKGROUNDS)))
    assert seen[SPEC.backgrounds.index("water")] < seen[SPEC.backgrounds.index("sand")]


def test_a_train_like_pool_keeps_the_blind_spots_as_rare_as_train_does():
    sizes = SplitSizes(train_per_class=300, val_per_group=4, test_per_group=6, pool_per_class=300)
    grass, star = SPEC.backgrounds.index("grass"), SPEC.classes.index("star")
    share, fingerprints = {}, {}
    for pool in ("uniform", "train"):
        s = build_split(SPEC, PLANTED, "pool", sizes, seed=0, pool=pool)
        share[pool] = (s.attributes["background"][s.labels == star] == grass).float().mean().item()
        fingerprints[pool] = s.fingerprint
    assert share["uniform"] > 0.1 and share["train"] < 0.05  # 1/6 of the stars vs the planted 0.01
    assert fingerprints["uniform"] != fingerprints["train"]
    with pytest.raises(ValueError, match="data.pool"):
        build_split(SPEC, PLANTED, "pool", sizes, seed=0, pool="balanced")


def test_rare_entries_are_the_planted_blind_spots():
    from blindspot.world.dataset import planted_slices

    s = build_split(SPEC, PLANTED, "train", SplitSizes(train_per_class=2000), seed=0)
    star = s.labels == SPEC.classes.index("star")
    on_grass = (s.attributes["background"][star] == SPEC.backgrounds.index("grass")).float().mean().item()
    assert on_grass < 0.02
    slices = planted_slices(SPEC, PLANTED)
    assert [(p["class"], p["value"]) for p in slices] == [("star", "grass")] and slices[0]["groups"] == ["star|grass"]


def test_captions_describe_the_image_attributes():
    s = build_split(SPEC, PLANTED, "test", SMALL, seed=0)
    for i in range(10):
        cap = s.captions[i]
        assert SPEC.classes[int(s.labels[i])] in cap
        assert SPEC.colors[int(s.attributes["color"][i])] in cap


def test_corpus_covers_every_combination_uniformly():
    b = corpus_batch(SPEC, 4000, seed=7)
    combos = collections.Counter(zip(b.classes.tolist(), b.backgrounds.tolist()))
    assert len(combos) == len(CLASSES) * len(BACKGROUNDS)
    assert max(combos.values()) < 3 * min(combos.values())
    assert len(b.captions) == 4000 and all(SPEC.classes[c] in t for c, t in zip(b.classes.tolist(), b.captions))


@pytest.mark.parametrize("bad,match", [
    (Planted("dragon", "background", "water", 0.9), "planted class 'dragon'"),
    (Planted("star", "mood", "happy", 0.9), "planted attribute 'mood'"),
    (Planted("star", "background", "lava", 0.9), "planted value 'lava'"),
    (Planted("star", "background", "water", 1.5), "must be in"),
])
def test_bad_planted_config_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        build_split(SPEC, [bad], "val", SMALL)


def test_planted_rates_must_leave_room():
    with pytest.raises(ValueError, match="sum to"):
        build_split(SPEC, [Planted("star", "background", "water", 0.7), Planted("star", "background", "grass", 0.5)],
                    "val", SMALL)


def test_unknown_world_vocabulary_is_named():
    with pytest.raises(ValueError, match="unknown or empty"):
        WorldSpec(classes=("star", "dragon"))


def test_group_names_cover_class_by_planted_attribute():
    names = group_names(SPEC, PLANTED)
    assert "star|water" in names and len(names) == 36


def test_provenance_records_how_a_checkpoint_was_made(tmp_path):
    import json

    from blindspot.world.training import write_provenance

    write_provenance(tmp_path, steps=3)
    facts = json.loads((tmp_path / "training.json").read_text())
    assert facts["command"].startswith("python ") and facts["steps"] == 3 and facts["machine"]["cpu_count"] >= 1
