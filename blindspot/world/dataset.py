"""World task splits with planted spurious correlations, group labels and captions, cached to disk."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .corpus import _global_codes
from .render import RENDERER_VERSION, render
from .spec import BACKGROUNDS, CLASSES, COLORS, SIZES, WorldSpec, caption

log = logging.getLogger(__name__)

ATTRIBUTES = ("background", "color", "size")
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2, "pool": 3}  # added to 1000 * seed: task data never meets the corpus


@dataclass(frozen=True)
class Planted:
    """A planted correlation: in train, a share `rate` of the images of `cls` have `attribute` == `value`.

    A rate above the uniform share makes a shortcut (stars live on water); a rate below it makes a rare
    combination (stars almost never on grass): a planted blind spot, the ground truth discovery is scored
    against. With `exclusive`, other classes show the value only as often as `cls` shows each other value,
    so the value alone almost identifies the class.
    """

    cls: str
    attribute: str
    value: str
    rate: float
    exclusive: bool = False


@dataclass(frozen=True)
class SplitSizes:
    """How many images each split gets."""

    train_per_class: int = 1000
    val_per_group: int = 20
    test_per_group: int = 50
    pool_per_class: int = 500


@dataclass
class WorldSplit:
    """One rendered split: images with every label and its caption."""

    images: torch.Tensor  # uint8 [n, 3, s, s]
    labels: torch.Tensor  # class index [n]
    attributes: dict[str, torch.Tensor]  # attribute name -> value index [n]
    groups: torch.Tensor  # group index [n]
    group_names: list[str]
    captions: list[str]
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def validate_planted(spec: WorldSpec, planted: list[Planted]) -> None:
    """Raise a clear error for planted entries naming unknown classes, attributes or values."""
    for p in planted:
        if p.cls not in spec.classes:
            raise ValueError(f"planted class {p.cls!r} is not a world class; known: {list(spec.classes)} "
                             f"(fix data.planted in conf/data/world.yaml)")
        if p.attribute not in ATTRIBUTES:
            raise ValueError(f"planted attribute {p.attribute!r} unknown; known: {list(ATTRIBUTES)}")
        values = spec.values(p.attribute)
        if p.value not in values:
            raise ValueError(f"planted value {p.value!r} is not a world {p.attribute}; known: {list(values)}")
        if not 0.0 <= p.rate <= 1.0:
            raise ValueError(f"planted rate {p.rate} for {p.cls}/{p.value} must be in [0, 1]")
    seen = [(p.cls, p.attribute, p.value) for p in planted]
    if len(set(seen)) != len(seen):
        raise ValueError("planted: at most one entry per (class, attribute, value)")
    for cls, attribute in {(p.cls, p.attribute) for p in planted}:
        entries = [p for p in planted if (p.cls, p.attribute) == (cls, attribute)]
        total, n_values = sum(p.rate for p in entries), len(spec.values(attribute))
        if total > 1 + 1e-9 or (len(entries) == n_values and abs(total - 1) > 1e-6):
            raise ValueError(f"planted rates of {cls}/{attribute} sum to {total:.3f}: they must leave a share "
                             "for the values not named (sum <= 1; = 1 when every value is named)")


def planted_slices(spec: WorldSpec, planted: list[Planted]) -> list[dict]:
    """The planted blind spots: rare (class, value) combinations, with the group names they cover."""
    names = group_names(spec, planted)
    attrs = group_attributes(planted)
    out = []
    for p in planted:
        if p.rate < 1.0 / len(spec.values(p.attribute)):
            position = 1 + attrs.index(p.attribute)
            groups = [g for g in names if g.split("|")[0] == p.cls and g.split("|")[position] == p.value]
            out.append({"class": p.cls, "attribute": p.attribute, "value": p.value, "rate": p.rate,
                        "group": "|".join([p.cls, p.value]), "groups": groups})
    return out


def group_attributes(planted: list[Planted]) -> tuple[str, ...]:
    """Attributes that define groups (those named by a planted entry), in a fixed order."""
    named = {p.attribute for p in planted}
    return tuple(a for a in ATTRIBUTES if a in named)


def group_names(spec: WorldSpec, planted: list[Planted]) -> list[str]:
    """Names like 'star|water' for every class x planted-attribute combination (the group index order)."""
    attrs = group_attributes(planted)
    axes = [spec.classes] + [spec.values(a) for a in attrs]
    return ["|".join(combo) for combo in itertools.product(*axes)]


def _attribute_probs(spec: WorldSpec, planted: list[Planted], attribute: str) -> torch.Tensor:
    """[n_classes, n_values] train-time P(value | class) for one attribute."""
    values = spec.values(attribute)
    n = len(values)
    probs = torch.full((len(spec.classes), n), 1.0 / n)
    entries = [p for p in planted if p.attribute == attribute]
    for cls in {p.cls for p in entries}:
        c = spec.classes.index(cls)
        named = {values.index(p.value): p.rate for p in entries if p.cls == cls}
        rest = (1.0 - sum(named.values())) / max(1, n - len(named))
        probs[c] = rest
        for v, rate in named.items():
            probs[c, v] = rate
    for p in entries:
        if p.exclusive:
            v = values.index(p.value)
            owners = {q.cls for q in entries if q.value == p.value}
            cap = (1 - p.rate) / max(1, n - 1)
            for other, name in enumerate(spec.classes):
                if name not in owners:
                    probs[other, v] = min(float(probs[other, v]), cap)
    return probs / probs.sum(1, keepdim=True)


POOLS = ("uniform", "train")  # the retrieval pool: even over attribute values | drawn like train (rare blind spots)


def check_pool(pool: str) -> None:
    """Raise ValueError naming the knob when `pool` is unknown."""
    if pool not in POOLS:
        raise ValueError(f"data.pool={pool!r}: use one of {', '.join(POOLS)}")


def _sample_table(spec: WorldSpec, planted: list[Planted], split: str, sizes: SplitSizes, seed: int,
                  pool: str = "uniform") -> dict:
    """Class and attribute indices for every image of a split (before rendering)."""
    g = torch.Generator().manual_seed(1000 * seed + SPLIT_SEEDS[split])
    n_cls = len(spec.classes)
    g_attrs = group_attributes(planted)
    table: dict[str, torch.Tensor] = {}
    if split in ("train", "pool"):
        per = sizes.train_per_class if split == "train" else sizes.pool_per_class
        table["class"] = torch.arange(n_cls).repeat_interleave(per)
        for a in ATTRIBUTES:
            like_train = split == "train" or pool == "train"
            probs = _attribute_probs(spec, planted if like_train else [], a)
            table[a] = torch.multinomial(probs[table["class"]], 1, generator=g).flatten()
    else:
        per = sizes.val_per_group if split == "val" else sizes.test_per_group
        combos = torch.tensor(list(itertools.product(range(n_cls), *[range(len(spec.values(a))) for a in g_attrs])))
        combos = combos.repeat_interleave(per, dim=0)
        table["class"] = combos[:, 0]
        for a in ATTRIBUTES:
            if a in g_attrs:
                table[a] = combos[:, 1 + g_attrs.index(a)]
            else:
                table[a] = torch.randint(len(spec.values(a)), (len(combos),), generator=g)
    perm = torch.randperm(len(table["class"]), generator=g)
    return {k: v[perm] for k, v in table.items()}


def _group_index(spec: WorldSpec, planted: list[Planted], table: dict) -> torch.Tensor:
    idx = table["class"].clone()
    for a in group_attributes(planted):
        idx = idx * len(spec.values(a)) + table[a]
    return idx


def fingerprint(spec: WorldSpec, planted: list[Planted], split: str, sizes: SplitSizes, seed: int,
                pool: str = "uniform") -> str:
    """A short hash of everything that determines a split's pixels and labels."""
    fields = {"spec": asdict(spec), "planted": [asdict(p) for p in planted], "split": split,
              "sizes": asdict(sizes), "seed": seed, "renderer": RENDERER_VERSION}
    if split == "pool" and pool != "uniform":
        fields["pool"] = pool
    key = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_split(spec: WorldSpec, planted: list[Planted], split: str, sizes: SplitSizes = SplitSizes(),
                seed: int = 0, cache_dir: str | os.PathLike | None = None, chunk: int = 2048,
                pool: str = "uniform") -> WorldSplit:
    """Render (or load from the cache) one split of the world task; `pool` says how the pool split is drawn."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; known: {list(SPLIT_SEEDS)}")
    check_pool(pool)
    validate_planted(spec, planted)
    fp = fingerprint(spec, planted, split, sizes, seed, pool)
    path = Path(cache_dir) / f"world-{split}-{fp}.pt" if cache_dir else None
    table = _sample_table(spec, planted, split, sizes, seed, pool)
    if path is not None and path.is_file():
        images = torch.load(path, weights_only=True)
    else:
        codes = {
            "class": _global_codes(spec.classes, CLASSES), "background": _global_codes(spec.backgrounds, BACKGROUNDS),
            "color": _global_codes(spec.colors, COLORS), "size": _global_codes(spec.sizes, SIZES),
        }
        parts = []
        for start in range(0, len(table["class"]), chunk):
            sl = slice(start, start + chunk)
            parts.append(render(codes["class"][table["class"][sl]], codes["background"][table["background"][sl]],
                                codes["color"][table["color"][sl]], codes["size"][table["size"][sl]],
                                seed=(int(fp, 16) + start) % 2**31, image_size=spec.image_size))
        images = torch.cat(parts)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(images, tmp)
            os.replace(tmp, path)
    captions = [
        caption(spec.classes[c], spec.backgrounds[b], spec.colors[k], spec.sizes[z])
        for c, b, k, z in zip(*(table[a].tolist() for a in ("class", "background", "color", "size")))
    ]
    return WorldSplit(
        images=images,
        labels=table["class"],
        attributes={a: table[a] for a in ATTRIBUTES},
        groups=_group_index(spec, planted, table),
        group_names=group_names(spec, planted),
        captions=captions,
        fingerprint=fp,
        meta={"split": split, "seed": seed, "planted": [asdict(p) for p in planted]},
    )
