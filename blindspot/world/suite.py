"""A seeded generator of planted world configurations for the suite benchmark (blind spots, shortcuts, ceilings).

Each `SuiteWorld` is a world seed plus a `planted` list (blindspot.world.dataset.Planted) and the split sizes,
turned into Hydra overrides for `data` by `overrides()`. Its `ceiling()` is the same world with every blind spot
filled at its natural rate (the share the class would show that value with the blind-spot entry removed), so
ERM on the ceiling is what perfect data repair would reach at equal training size. Lightning-free.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

from .dataset import Planted, _attribute_probs, group_attributes, planted_slices, validate_planted
from .spec import WorldSpec

KINDS = ("background", "color", "size")  # the attributes a blind spot can be planted on

# Shapes that look alike at 32 px (hand-picked from their outlines, not measured): a shortcut planted on the
# confusable class pulls the blind spot's images towards it, as crosses-on-grass do for stars on grass.
CONFUSABLE = {"star": "cross", "cross": "star", "circle": "heart", "heart": "circle", "square": "circle",
              "triangle": "star"}
SHORTCUT_RATES = {"background": 0.35, "color": 0.4, "size": 0.8}  # share of the confusable class with the value
BLIND_SPOT_RATES = (0.0, 0.01, 0.02, 0.05)  # train share of the blind-spot class with the value


@dataclass(frozen=True)
class SuiteWorld:
    """One world of the suite: its data seed, planted entries and balanced val/test split sizes."""

    name: str
    seed: int
    planted: tuple[Planted, ...] = ()
    val_per_group: int = 20
    test_per_group: int = 50
    role: str = "generated"  # default | control | generated | ceiling
    meta: dict = field(default_factory=dict, compare=False)

    def blind_spots(self, spec: WorldSpec) -> list[Planted]:
        """The planted entries below their attribute's uniform share (the rare combinations)."""
        return [p for p in self.planted if p.rate < 1.0 / len(spec.values(p.attribute))]

    def slices(self, spec: WorldSpec) -> list[dict]:
        """The planted slices with the test/val group names they cover (blindspot.world.dataset.planted_slices)."""
        out = planted_slices(spec, list(self.planted))
        for s in out:
            s["shortcut"] = shortcut_of(spec, self.planted, s["class"], s["attribute"], s["value"])
        return out

    def overrides(self) -> list[str]:
        """Hydra overrides that make `python train.py` train on this world."""
        return [f"data.seed={self.seed}", f"data.planted={planted_override(self.planted)}",
                f"data.val_per_group={self.val_per_group}", f"data.test_per_group={self.test_per_group}"]

    def ceiling(self, spec: WorldSpec) -> "SuiteWorld":
        """The same world with each blind spot at its natural rate (real renders fill it; groups unchanged)."""
        rare = self.blind_spots(spec)
        kept = [q for q in self.planted if q not in rare]  # every blind spot at once (two may share a class)
        filled = []
        for p in self.planted:
            if p in rare:
                p = replace(p, rate=round(natural_rate(spec, kept + [p], p), 6), exclusive=False)
            filled.append(p)
        validate_planted(spec, filled)
        return replace(self, name=f"{self.name}-ceiling", planted=tuple(filled), role="ceiling")

    def describe(self, spec: WorldSpec) -> dict:
        """Which attributes carry blind spots, how many, and whether one has a shortcut on a confusable class."""
        slices = self.slices(spec)
        return {"blind_spots": [s["attribute"] for s in slices], "n_blind_spots": len(slices),
                "shortcut": any(s["shortcut"] for s in slices), "rates": [s["rate"] for s in slices],
                "control": not slices}

    def to_dict(self, spec: WorldSpec) -> dict:
        """A JSON-ready record of the world (what it plants, its overrides and its slices)."""
        return {"name": self.name, "seed": self.seed, "role": self.role, "planted": [asdict(p) for p in self.planted],
                "val_per_group": self.val_per_group, "test_per_group": self.test_per_group,
                "overrides": self.overrides(), **self.describe(spec), "slices": self.slices(spec), **self.meta}


def planted_override(planted: Sequence[Planted]) -> str:
    """The Hydra list literal for data.planted, e.g. [{cls:star,attribute:background,value:grass,rate:0.0}]."""
    items = []
    for p in planted:
        fields = [f"cls:{p.cls}", f"attribute:{p.attribute}", f"value:{p.value}", f"rate:{float(p.rate)!r}"]
        if p.exclusive:
            fields.append("exclusive:true")
        items.append("{" + ",".join(fields) + "}")
    return "[" + ",".join(items) + "]"


def natural_rate(spec: WorldSpec, planted: Sequence[Planted], entry: Planted) -> float:
    """The train share of `entry.cls` with `entry.value` if `entry` were not planted (how the world samples)."""
    others = [p for p in planted if p != entry]
    probs = _attribute_probs(spec, others, entry.attribute)
    return float(probs[spec.classes.index(entry.cls), spec.values(entry.attribute).index(entry.value)])


def shortcut_of(spec: WorldSpec, planted: Sequence[Planted], cls: str, attribute: str, value: str) -> str | None:
    """The other class planted above the uniform share on the same value (a shortcut), or None."""
    uniform = 1.0 / len(spec.values(attribute))
    for p in planted:
        if p.cls != cls and p.attribute == attribute and p.value == value and p.rate > uniform:
            return p.cls
    return None


def split_sizes(spec: WorldSpec, planted: Sequence[Planted], val_per_slice: int,
                test_per_slice: int) -> tuple[int, int]:
    """Per-group val/test sizes giving every (class, value) slice at least these many images (slices span groups)."""
    # with two planted attributes star|grass is star|grass|red, star|grass|orange, ...: smaller groups, same splits
    attrs = group_attributes(list(planted))
    if not attrs:
        return val_per_slice, test_per_slice
    spans = [math.prod(len(spec.values(b)) for b in attrs if b != a) for a in attrs]
    n = min(spans)
    return max(1, math.ceil(val_per_slice / n)), max(1, math.ceil(test_per_slice / n))


def _draw_world(rng: random.Random, spec: WorldSpec, blind_spots: Sequence[str], shortcut: bool,
                rates: Sequence[float], shortcut_rates: Mapping[str, float], confusable: Mapping[str, str],
                tries: int = 200) -> list[Planted]:
    """Random planted entries for one template: distinct blind-spot classes, each optionally with a shortcut."""
    for attribute in blind_spots:
        if attribute not in KINDS:
            raise ValueError(f"suite template blind spot {attribute!r} unknown; known: {list(KINDS)} "
                             "(fix worlds.templates in conf/suite/)")
    for _ in range(tries):
        classes = rng.sample(list(spec.classes), len(blind_spots))
        if any(confusable.get(c) in classes for c in classes):
            continue  # a shortcut class must not itself carry a blind spot
        planted = []
        for cls, attribute in zip(classes, blind_spots):
            value = rng.choice(list(spec.values(attribute)))
            planted.append(Planted(cls, attribute, value, float(rng.choice(list(rates)))))
            if shortcut:
                other = confusable.get(cls)
                if other not in spec.classes:
                    raise ValueError(f"no confusable class for {cls!r} in worlds.confusable ({dict(confusable)})")
                planted.append(Planted(other, attribute, value, float(shortcut_rates[attribute])))
        try:
            validate_planted(spec, planted)
        except ValueError:
            continue
        return planted
    raise ValueError(f"could not draw a valid world for blind spots {list(blind_spots)} in {tries} tries")


def _control(rng: random.Random, spec: WorldSpec, shortcut: bool, shortcut_rates: Mapping[str, float]) -> list[Planted]:
    """A world without a blind spot: one shortcut (or a no-op natural-rate entry that only defines the groups)."""
    attribute = rng.choice(list(KINDS))
    cls, value = rng.choice(list(spec.classes)), rng.choice(list(spec.values(attribute)))
    rate = float(shortcut_rates[attribute]) if shortcut else 1.0 / len(spec.values(attribute))
    return [Planted(cls, attribute, value, rate)]


def generate_worlds(templates: Sequence[Mapping], n_worlds: int = 12, seed: int = 0, spec: WorldSpec | None = None,
                    default_world: Mapping | None = None, controls: int = 1, control_shortcut: bool = True,
                    rates: Sequence[float] = BLIND_SPOT_RATES, shortcut_rates: Mapping[str, float] | None = None,
                    confusable: Mapping[str, str] | None = None, val_per_slice: int = 20,
                    test_per_slice: int = 50) -> list[SuiteWorld]:
    """`n_worlds` worlds: the default world (if given), `controls` controls, then one per template in turn."""
    # templates: [{blind_spots: [background, color], shortcut: true}, ...]; world i depends only on (seed, i, template)
    spec = spec or WorldSpec()
    shortcut_rates = dict(SHORTCUT_RATES if shortcut_rates is None else shortcut_rates)
    confusable = dict(CONFUSABLE if confusable is None else confusable)
    bad = [r for r in rates if not 0.0 <= float(r) < 1.0 / max(len(spec.values(a)) for a in KINDS)]
    if bad:
        raise ValueError(f"worlds.rates {bad}: blind-spot rates must be in [0, 1/#values) (e.g. 0-0.05)")
    if not templates and n_worlds > controls + bool(default_world):
        raise ValueError("worlds.templates is empty: name at least one {blind_spots: [...], shortcut: ...}")
    worlds: list[SuiteWorld] = []

    def add(name: str, world_seed: int, planted: list[Planted], role: str, **meta) -> None:
        validate_planted(spec, planted)
        val, test = split_sizes(spec, planted, val_per_slice, test_per_slice)
        worlds.append(SuiteWorld(name, int(world_seed), tuple(planted), val, test, role, meta))

    if default_world is not None:
        add(str(default_world.get("name", "default")), int(default_world.get("seed", 0)),
            [Planted(**dict(p)) for p in default_world["planted"]], "default")
    for c in range(controls):
        if len(worlds) >= n_worlds:
            break
        rng = random.Random(f"suite:{seed}:control:{c}")
        add(f"control{c}" if controls > 1 else "control", rng.randrange(1, 10_000),
            _control(rng, spec, control_shortcut, shortcut_rates), "control")
    index = 0
    while len(worlds) < n_worlds:
        template = templates[index % len(templates)]
        rng = random.Random(f"suite:{seed}:world:{index}")
        kinds = list(template["blind_spots"])
        planted = _draw_world(rng, spec, kinds, bool(template.get("shortcut", False)), rates, shortcut_rates,
                              confusable)
        label = "+".join(f"{p.cls}-{p.value}" for p in planted if p.rate < 1.0 / len(spec.values(p.attribute)))
        add(f"w{index + 1:02d}-{label}", rng.randrange(1, 10_000), planted, "generated",
            template={"blind_spots": kinds, "shortcut": bool(template.get("shortcut", False))})
        index += 1
    names = [w.name for w in worlds]
    if len(set(names)) != len(names):
        raise ValueError(f"suite world names collide: {names}")
    return worlds


def coverage(worlds: Sequence[SuiteWorld], spec: WorldSpec | None = None) -> dict:
    """What a suite covers: blind-spot attributes, 1/2 blind spots, with/without shortcut, rates, controls."""
    spec = spec or WorldSpec()
    described = [w.describe(spec) for w in worlds]
    return {"attributes": sorted({a for d in described for a in d["blind_spots"]}),
            "n_blind_spots": sorted({d["n_blind_spots"] for d in described if not d["control"]}),
            "shortcut": sorted({d["shortcut"] for d in described if not d["control"]}),
            "rates": sorted({r for d in described for r in d["rates"]}),
            "controls": sum(d["control"] for d in described)}
