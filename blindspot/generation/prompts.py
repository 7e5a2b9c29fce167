"""Diverse prompts for a failure mode: its failure attribute combined with the other attributes that vary within
its class (backgrounds, colours, sizes, places, ...), so the generator does not choose one context for every image.

The mode's captions name its failure attribute ("a photo of a purple triangle": colour = purple); a prompt keeps
that attribute and adds values of the vocabulary's other kinds ("a photo of a small purple triangle on water").
How those values are chosen is the strategy: `caption` (the bare caption, as before), `vocabulary` (every
combination in turn, seeded), `members` (as often as the mode's validation members show them, read off CLIP:
the nearest attribute phrase per member per kind) or `mixed` (a share of each). Diverse prompts that cover the
contexts a slice spans follow ALIA (Dunlap et al. 2023) and Chegini & Feizi 2023.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..captioning import Vocabulary
from ..modes import FailureMode

log = logging.getLogger(__name__)

STRATEGIES = ("caption", "vocabulary", "members", "mixed")
CAPTION_WEIGHTINGS = ("score", "uniform")
# English adjective order: "a small old round red wooden box"; prefix kinds not listed here go first
ADJECTIVE_ORDER = ("size", "age", "shape", "color", "colour", "pattern", "material")
JOINT_LIMIT = 4096  # up to this many combinations, every combination is cycled through; beyond, each kind alone

EncodeTexts = Callable[[list[str]], torch.Tensor]


@dataclass
class Prompt:
    """One prompt, the mode caption it was built from, and the attribute phrases it names (kind -> phrase)."""

    text: str
    caption: str
    attributes: dict[str, str] = field(default_factory=dict)
    source: str = "caption"  # caption | vocabulary | members


def allocate(weights: Sequence[float], total: int, minimum: int = 0) -> list[int]:
    """Split `total` into integer counts proportional to `weights` (largest remainders; `minimum` each first)."""
    n = len(weights)
    if n == 0 or total <= 0:
        return [0] * n
    base = min(minimum, total // n)
    w = [max(float(x), 0.0) for x in weights]
    if sum(w) <= 0:
        w = [1.0] * n
    share = [x / sum(w) * (total - base * n) for x in w]
    counts = [base + math.floor(s) for s in share]
    order = sorted(range(n), key=lambda i: (-(share[i] - math.floor(share[i])), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def is_frame(value: str) -> bool:
    """Whether an attribute phrase is a whole caption of its own ("a sketch of a {cls}")."""
    return "{cls}" in value


def caption_attribute(caption: str, cls: str, vocabulary: Vocabulary) -> tuple[str, str, str] | None:
    """(kind, phrase, template) a caption was built from with `vocabulary.phrase`, or None (e.g. a proposer's)."""
    target = _norm(caption)
    for template in vocabulary.templates:
        for kind, values in vocabulary.attributes.items():
            for value in values:
                if _norm(vocabulary.phrase(cls, kind, value, template)) == target:
                    return kind, value, template
                if is_frame(value) and _norm(value.format(cls=cls)) == target:
                    return kind, value, template
    return None


def _fix_article(head: str, word: str) -> str:
    """'a' / 'an' at the end of `head` agreeing with the word that follows it."""
    m = re.search(r"(^|\s)(a|an)\s*$", head, flags=re.IGNORECASE)
    if not m or not word:
        return head
    article = "an" if word[0].lower() in "aeiou" else "a"
    if m.group(2)[0].isupper():
        article = article.capitalize()
    return head[: m.start(2)] + article + " "


def compose(cls: str, attributes: Mapping[str, str], vocabulary: Vocabulary, template: str | None = None,
            order: Sequence[str] | None = None) -> str:
    """A caption naming several attributes in natural word order: 'a photo of a small red star on grass'.

    Kinds in `vocabulary.prefix_attributes` go before the class (in `order`, default English adjective order),
    the others after it in vocabulary order; a phrase containing {cls} ("a sketch of a {cls}") frames the rest.
    """
    template = template or vocabulary.templates[0]
    order = list(order) if order else list(ADJECTIVE_ORDER)
    frames = [k for k, v in attributes.items() if is_frame(v)]
    prefix = [k for k in attributes if k in vocabulary.prefix_attributes and k not in frames]
    prefix.sort(key=lambda k: (order.index(k) if k in order else -1, list(attributes).index(k)))
    kinds = list(vocabulary.attributes) + [k for k in attributes if k not in vocabulary.attributes]
    suffix = [k for k in kinds if k in attributes and k not in prefix and k not in frames]
    obj = " ".join([attributes[k] for k in prefix] + [cls])
    rest = " ".join(attributes[k] for k in suffix)
    frame = attributes[frames[0]] if frames else template.replace("{attr}", "{rest}")
    head, _, tail = frame.partition("{cls}")
    text = (_fix_article(head, obj) + obj + tail).replace("{rest}", rest)
    if frames and rest:
        text = f"{text} {rest}"
    return re.sub(r"\s+", " ", text).strip()


def _balanced(values: list, count: int, rng: random.Random) -> list:
    """`count` items cycling through `values`, reshuffled every cycle (each value equally often, +-1)."""
    out: list = []
    while len(out) < count:
        cycle = list(values)
        rng.shuffle(cycle)
        out += cycle
    return out[:count]


class PromptComposer:
    """Prompts for a mode: its captions' failure attribute with the other kinds' values, by a strategy.

    `vary`: the kinds that vary (default: every kind but the failure attribute's, leaving out kinds of
    whole-caption phrases such as styles); `max_other`: at most this many of them per prompt (the kinds used
    rotate); `members_fraction`: the share of `mixed` prompts that follow the members; `smoothing`: a
    pseudo-count per combination in `members` (0: only combinations some member shows).
    """

    def __init__(self, vocabulary: Vocabulary, strategy: str = "vocabulary", prompts_per_mode: int = 2,
                 caption_weighting: str = "score", vary: Sequence[str] | None = None, max_other: int | None = 2,
                 members_fraction: float = 0.5, smoothing: float = 0.0, prompt_template: str = "{caption}",
                 order: Sequence[str] | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"prompts.strategy={strategy!r}: use one of {STRATEGIES}")
        if caption_weighting not in CAPTION_WEIGHTINGS:
            raise ValueError(f"caption_weighting={caption_weighting!r}: use one of {CAPTION_WEIGHTINGS}")
        if prompts_per_mode < 1:
            raise ValueError(f"prompts_per_mode={prompts_per_mode}: must be >= 1")
        if max_other is not None and max_other < 1:
            raise ValueError(f"prompts.max_other={max_other}: must be >= 1, or null for every varying kind")
        if not 0.0 <= members_fraction <= 1.0:
            raise ValueError(f"prompts.members_fraction={members_fraction}: must be in [0, 1]")
        if smoothing < 0:
            raise ValueError(f"prompts.smoothing={smoothing}: must be >= 0")
        unknown = [k for k in (vary or ()) if k not in vocabulary.attributes]
        if unknown:
            raise ValueError(f"prompts.vary names kinds {unknown} the vocabulary lacks; known: "
                             f"{list(vocabulary.attributes)}")
        if "{caption}" not in prompt_template:
            raise ValueError(f"prompt_template={prompt_template!r} needs {{caption}}")
        self.vocabulary, self.strategy, self.prompts_per_mode = vocabulary, strategy, prompts_per_mode
        self.caption_weighting, self.vary, self.max_other = caption_weighting, list(vary) if vary else None, max_other
        self.members_fraction, self.smoothing, self.prompt_template = members_fraction, smoothing, prompt_template
        self.order = order
        self._phrase_cache: dict[tuple[str, str, str], torch.Tensor] = {}
        self._parse_cache: dict[tuple[str, str], tuple[str, str, str] | None] = {}

    # which kinds vary ---------------------------------------------------------------------------------
    def varying_kinds(self, failure_kind: str | None, failure_value: str | None = None) -> list[str]:
        """The kinds a prompt for this failure attribute varies."""
        frames_ok = failure_value is None or not is_frame(failure_value)
        if self.vary is not None:
            kinds = [k for k in self.vary if k != failure_kind]
            return [k for k in kinds if frames_ok or not any(map(is_frame, self.vocabulary.attributes[k]))]
        return [k for k, values in self.vocabulary.attributes.items()
                if k != failure_kind and values and not any(map(is_frame, values))]

    def _subsets(self, kinds: list[str], count: int, rng: random.Random) -> list[tuple[str, ...]]:
        if self.max_other is None or len(kinds) <= self.max_other:
            return [tuple(kinds)] * count
        return _balanced(list(itertools.combinations(kinds, self.max_other)), count, rng)

    def _product(self, kinds: tuple[str, ...]) -> list[tuple[str, ...]] | None:
        size = math.prod(len(self.vocabulary.attributes[k]) for k in kinds)
        if size > JOINT_LIMIT:
            return None
        return list(itertools.product(*(self.vocabulary.attributes[k] for k in kinds)))

    # the strategies -----------------------------------------------------------------------------------
    def _uniform(self, subsets: list[tuple[str, ...]], rng: random.Random) -> list[dict[str, str]]:
        """Values for each prompt: all combinations of its kinds in turn (or each kind's values in turn)."""
        out: list[dict[str, str]] = [{} for _ in subsets]
        for kinds in dict.fromkeys(subsets):
            slots = [i for i, s in enumerate(subsets) if s == kinds]
            combos = self._product(kinds)
            if combos is not None:
                for i, combo in zip(slots, _balanced(combos, len(slots), rng)):
                    out[i] = dict(zip(kinds, combo))
            else:
                streams = {k: _balanced(self.vocabulary.attributes[k], len(slots), rng) for k in kinds}
                for j, i in enumerate(slots):
                    out[i] = {k: streams[k][j] for k in kinds}
        return out

    def _follow_members(self, subsets: list[tuple[str, ...]], members: list[dict[str, str]],
                        rng: random.Random) -> list[dict[str, str]]:
        """Values for each prompt in proportion to how many members show them (plus `smoothing` each)."""
        out: list[dict[str, str]] = [{} for _ in subsets]
        for kinds in dict.fromkeys(subsets):
            slots = [i for i, s in enumerate(subsets) if s == kinds]
            votes = Counter(tuple(m[k] for k in kinds) for m in members)
            combos = self._product(kinds) if self.smoothing > 0 else None
            support = combos if combos is not None else sorted(votes)
            weights = [votes.get(c, 0) + self.smoothing for c in support]
            picked = [c for c, n in zip(support, allocate(weights, len(slots))) for _ in range(n)]
            rng.shuffle(picked)
            for i, combo in zip(slots, picked):
                out[i] = dict(zip(kinds, combo))
        return out

    def phrase_embeddings(self, cls: str, kind: str, encode_texts: EncodeTexts) -> torch.Tensor:
        """Normalised text embeddings of a kind's phrases for a class (mean over the vocabulary's templates)."""
        values = self.vocabulary.attributes[kind]
        missing = [(cls, kind, v) for v in values if (cls, kind, v) not in self._phrase_cache]
        if missing:
            texts = [self.vocabulary.phrase(cls, kind, v, t) for *_, v in missing for t in self.vocabulary.templates]
            emb = F.normalize(encode_texts(texts).float(), dim=-1)
            emb = emb.view(len(missing), len(self.vocabulary.templates), -1)
            for key, e in zip(missing, F.normalize(emb.mean(1), dim=-1)):
                self._phrase_cache[key] = e
        return torch.stack([self._phrase_cache[(cls, kind, v)] for v in values])

    def member_attributes(self, cls: str, member_embeddings: torch.Tensor, encode_texts: EncodeTexts,
                          kinds: Sequence[str]) -> list[dict[str, str]]:
        """The nearest phrase of each kind for each member (CLIP image embedding vs phrase text embeddings)."""
        emb = F.normalize(member_embeddings.float(), dim=-1)
        nearest = {}
        for kind in kinds:
            phrases = self.phrase_embeddings(cls, kind, encode_texts).to(emb.device)
            nearest[kind] = [self.vocabulary.attributes[kind][j] for j in (emb @ phrases.T).argmax(1).tolist()]
        return [{k: nearest[k][i] for k in kinds} for i in range(len(emb))]

    # putting it together ------------------------------------------------------------------------------
    def caption_counts(self, mode: FailureMode, count: int) -> list[tuple[str, int]]:
        """How many prompts each of the mode's top captions gets (as `rounds.mode_prompts` splits them)."""
        captions = mode.captions[: self.prompts_per_mode] or [(mode.class_name, 1.0)]
        if self.caption_weighting == "uniform" or len(captions) == 1:
            return [(c, len(range(k, count, len(captions)))) for k, (c, _) in enumerate(captions)]
        return list(zip([c for c, _ in captions], allocate([s for _, s in captions], count)))

    def prompts(self, mode: FailureMode, count: int, seed: int = 0, member_embeddings: torch.Tensor | None = None,
                encode_texts: EncodeTexts | None = None) -> list[Prompt]:
        """`count` prompts for a mode, deterministic given (mode, count, seed, members)."""
        needs_members = self.strategy == "members" or (self.strategy == "mixed" and self.members_fraction > 0)
        if needs_members and (member_embeddings is None or encode_texts is None or not len(member_embeddings)):
            raise ValueError(f"prompts.strategy={self.strategy!r} needs the CLIP embeddings of mode {mode.mode_id}'s "
                             "members and a text encoder; use prompts.strategy=vocabulary without them")
        cls, out = mode.class_name, []
        captions = self.caption_counts(mode, count)
        if self.strategy == "caption":
            if self.caption_weighting == "uniform" and len(captions) > 1:
                texts = [captions[k % len(captions)][0] for k in range(count)]
            else:
                texts = [c for c, n in captions for _ in range(n)]
            return [Prompt(self._wrap(t, cls), t, self._parsed(t, cls), "caption") for t in texts]
        for k, (caption, n) in enumerate(captions):
            if n == 0:
                continue
            rng = random.Random(f"{seed}:{mode.mode_id}:{k}")
            parsed = self.parse(caption, cls)
            kinds = self.varying_kinds(*(parsed[:2] if parsed else (None, None)))
            if parsed is None or not kinds:
                if parsed is None:
                    log.debug("caption %r of mode %s is not from the vocabulary: used as it is", caption, mode.mode_id)
                out += [Prompt(self._wrap(caption, cls), caption, self._parsed(caption, cls), "caption")] * n
                continue
            kind, value, template = parsed
            n_members = {"vocabulary": 0, "members": n, "mixed": round(n * self.members_fraction)}[self.strategy]
            subsets = self._subsets(kinds, n, rng)
            chosen: list[tuple[dict[str, str], str]] = []
            if n_members:
                members = self.member_attributes(cls, member_embeddings, encode_texts, kinds)
                chosen += [(a, "members") for a in self._follow_members(subsets[:n_members], members, rng)]
            chosen += [(a, "vocabulary") for a in self._uniform(subsets[n_members:], rng)]
            for others, source in chosen:
                attributes = {kind: value, **others}
                text = compose(cls, attributes, self.vocabulary, template, self.order)
                out.append(Prompt(self._wrap(text, cls), caption, attributes, source))
        return out

    def parse(self, caption: str, cls: str) -> tuple[str, str, str] | None:
        """`caption_attribute`, remembered per (caption, class)."""
        if (caption, cls) not in self._parse_cache:
            self._parse_cache[(caption, cls)] = caption_attribute(caption, cls, self.vocabulary)
        return self._parse_cache[(caption, cls)]

    def _parsed(self, caption: str, cls: str) -> dict[str, str]:
        parsed = self.parse(caption, cls)
        return {parsed[0]: parsed[1]} if parsed else {}

    def _wrap(self, text: str, cls: str) -> str:
        return self.prompt_template.format(caption=text, cls=cls)

    def __call__(self, mode: FailureMode, count: int, seed: int = 0, member_embeddings: torch.Tensor | None = None,
                 encode_texts: EncodeTexts | None = None) -> list[str]:
        """The prompt texts of `prompts`."""
        return [p.text for p in self.prompts(mode, count, seed, member_embeddings, encode_texts)]


def diverse_prompts(mode: FailureMode, vocabulary: Vocabulary, count: int, strategy: str = "vocabulary",
                    seed: int = 0, member_embeddings: torch.Tensor | None = None,
                    encode_texts: EncodeTexts | None = None, **options) -> list[str]:
    """`count` prompts for a mode by a strategy (caption | vocabulary | members | mixed); see PromptComposer."""
    return PromptComposer(vocabulary, strategy, **options)(mode, count, seed, member_embeddings, encode_texts)


# diversity measures -----------------------------------------------------------------------------------
def entropy_bits(counts: Sequence[int] | Counter) -> float:
    """Shannon entropy (bits) of a histogram."""
    values = [c for c in (counts.values() if isinstance(counts, Mapping) else counts) if c > 0]
    total = sum(values)
    return max(0.0, float(-sum(c / total * math.log2(c / total) for c in values))) if total else 0.0


def prompt_diversity(prompts: Sequence[str | Prompt]) -> dict:
    """How varied a set of prompts is: distinct prompts, their entropy, and (for Prompt objects) per-kind spread."""
    texts = [p.text if isinstance(p, Prompt) else p for p in prompts]
    counts = Counter(texts)
    out = {"prompts": len(texts), "distinct": len(counts), "distinct_share": len(counts) / len(texts) if texts else 0.0,
           "entropy_bits": entropy_bits(counts),
           "max_entropy_bits": math.log2(len(texts)) if texts else 0.0}
    if prompts and all(isinstance(p, Prompt) for p in prompts):
        kinds = list(dict.fromkeys(k for p in prompts for k in p.attributes))
        out["attributes"] = attribute_spread({k: [p.attributes.get(k) for p in prompts] for k in kinds})
    return out


def attribute_spread(attributes: Mapping[str, Sequence], reference: Mapping[str, Sequence] | None = None) -> dict:
    """Spread of attribute values over a set of images (kind -> one value per image; None = unnamed).

    Per kind: distinct values, entropy and counts; jointly: distinct combinations and their entropy. With
    `reference` (e.g. the true attributes of a mode's validation members): the share of its distinct
    combinations the set shows, and the share of its samples whose combination the set shows.
    """
    kinds = list(attributes)
    n = len(next(iter(attributes.values()))) if kinds else 0
    if any(len(v) != n for v in attributes.values()):
        raise ValueError("attribute_spread needs one value per image for every kind")
    out: dict = {"n": n, "kinds": {}}
    for k in kinds:
        c = Counter(v for v in attributes[k] if v is not None)
        out["kinds"][k] = {"distinct": len(c), "entropy_bits": entropy_bits(c),
                           "counts": dict(sorted(c.items(), key=lambda kv: str(kv[0])))}
    combos = Counter(tuple(attributes[k][i] for k in kinds) for i in range(n))
    out["combinations"] = len(combos)
    out["joint_entropy_bits"] = entropy_bits(combos)
    if reference is not None:
        missing = [k for k in kinds if k not in reference]
        if missing:
            raise ValueError(f"attribute_spread reference lacks kinds {missing}")
        m = len(reference[kinds[0]]) if kinds else 0
        ref = Counter(tuple(reference[k][i] for k in kinds) for i in range(m))
        out["reference_combinations"] = len(ref)
        out["coverage"] = sum(1 for c in ref if c in combos) / len(ref) if ref else 0.0
        out["reference_mass_covered"] = sum(v for c, v in ref.items() if c in combos) / m if m else 0.0
    return out


def oracle_spread(images: torch.Tensor, oracle, target_class: str | None = None,
                  reference: Mapping[str, Sequence] | None = None,
                  kinds: Sequence[str] = ("background", "color", "size")) -> dict:
    """The world oracle's reading of images (uint8 or [0, 1]) as an attribute spread (see `attribute_spread`).

    With `target_class`, also the share of images the oracle reads as that class.
    """
    spec = oracle.spec
    names = {"class": spec.classes, "background": spec.backgrounds, "color": spec.colors, "size": spec.sizes}
    if len(images) == 0:
        return {"n": 0, "kinds": {}, "combinations": 0, "joint_entropy_bits": 0.0}
    pred = oracle.predict(images)
    out = attribute_spread({k: [names[k][i] for i in pred[k].tolist()] for k in kinds}, reference)
    if target_class is not None:
        out["class_agreement"] = sum(spec.classes[i] == target_class for i in pred["class"].tolist()) / len(images)
    return out
