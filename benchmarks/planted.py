"""The built-in world's planted slices as the benchmarks read them: its spec, its default world, a slice's accuracy."""

from __future__ import annotations

import statistics
from pathlib import Path

from omegaconf import OmegaConf

from blindspot.world.spec import WorldSpec
from blindspot.world.suite import Planted, SuiteWorld

ROOT = Path(__file__).resolve().parents[1]


def world_spec_and_default() -> tuple[WorldSpec, list[dict]]:
    """The world's classes/attributes and its default planted list, from conf/data/world.yaml."""
    data = OmegaConf.load(ROOT / "conf" / "data" / "world.yaml")
    spec = WorldSpec(tuple(data.classes), tuple(data.backgrounds), tuple(data.colors), tuple(data.sizes),
                     int(data.image_size))
    return spec, OmegaConf.to_container(data.planted)


def default_world():
    """The world spec and the default world (conf/data/world.yaml's planted list) as the suite sees them."""
    spec, planted = world_spec_and_default()
    return spec, SuiteWorld("default", 0, tuple(Planted(**dict(p)) for p in planted))


def blind_spots() -> list[dict]:
    """The default world's planted slices (e.g. star|grass), with the test groups each covers."""
    spec, world = default_world()
    return world.slices(spec)


def slice_accuracy(report: dict, slice_: dict, split: str = "test") -> float | None:
    """Test accuracy of a planted slice: the mean over its groups (the test split is balanced over groups)."""
    return slice_mean(report.get("metrics", {}).get(split, {}).get("per_group", {}) or {}, slice_)


def slice_mean(per_group: dict, slice_: dict) -> float | None:
    """A slice's accuracy from per-group accuracies: the mean over its groups, or its own group's entry."""
    groups = slice_.get("groups") or [slice_["group"]]
    accs = [per_group.get(g) for g in groups]
    if any(a is None for a in accs):
        return per_group.get(slice_["group"])
    return statistics.mean(accs) if accs else None
