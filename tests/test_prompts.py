"""Diverse prompts: failure attribute + the other attributes of the class, by strategy; diversity measures."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from blindspot.captioning import Vocabulary, world_vocabulary
from blindspot.generation.prompts import (PromptComposer, allocate, attribute_spread, caption_attribute, compose,
                                          diverse_prompts, entropy_bits, oracle_spread, prompt_diversity)
from blindspot.generation.rounds import mode_prompts
from blindspot.modes import FailureMode
from blindspot.world.spec import BACKGROUND_PHRASES, BACKGROUNDS, CAPTION_TEMPLATES, COLORS, SIZES, caption

VOCAB = world_vocabulary(BACKGROUNDS, COLORS, SIZES)


def mode(captions, cls="triangle", members=10):
    return FailureMode(2, cls, list(range(members)), 0.5, 0.1, 1.0, mode_id=f"r0-{cls}-0", captions=captions)


def test_compose_says_attributes_in_the_world_caption_word_order():
    # one attribute: exactly the captioner's own wording, for every template and value
    for template in VOCAB.templates:
        for kind, values in VOCAB.attributes.items():
            for value in values:
                assert compose("star", {kind: value}, VOCAB, template) == VOCAB.phrase("star", kind, value, template)
    # all three: exactly the world's captions ("a small orange star on a brick wall"), whatever the dict order
    for bg, color, size in itertools.product(BACKGROUNDS, COLORS, SIZES):
        attrs = {"background": BACKGROUND_PHRASES[bg], "color": color, "size": size}
        reordered = dict(reversed(list(attrs.items())))
        expected = caption("star", bg, color, size, template=CAPTION_TEMPLATES[0])
        assert compose("star", attrs, VOCAB, "a {cls} {attr}") == compose("star", reordered, VOCAB, "a {cls} {attr}")
        assert compose("star", attrs, VOCAB, "a {cls} {attr}") == expected
    assert compose("arrow", {"color": "red"}, VOCAB) == "a photo of a red arrow"
    assert compose("arrow", {}, VOCAB) == "a photo of an arrow"


def test_a_whole_caption_phrase_frames_the_other_attributes():
    vocab = Vocabulary({"style": ["a sketch of a {cls}"], "colour": ["orange"], "place": ["on a beach"]},
                       prefix_attributes=("colour",))
    assert compose("dog", {"style": "a sketch of a {cls}", "colour": "orange", "place": "on a beach"},
                   vocab) == "a sketch of an orange dog on a beach"


def test_captions_are_parsed_back_into_their_attribute():
    for kind, value, text in VOCAB.candidates("triangle"):
        assert caption_attribute(text, "triangle", VOCAB) == (kind, value, VOCAB.templates[0])
    assert caption_attribute("a picture of a triangle on sand", "triangle", VOCAB)[:2] == ("background", "on sand")
    assert caption_attribute("a triangle made of cheese", "triangle", VOCAB) is None


@pytest.mark.parametrize("weighting", ["score", "uniform"])
def test_caption_strategy_is_todays_behaviour(weighting):
    m = mode([("a photo of a purple triangle", 0.31), ("a photo of a triangle on grass", 0.12),
              ("a photo of a small triangle", 0.05)])
    composer = PromptComposer(VOCAB, "caption", prompts_per_mode=2, caption_weighting=weighting,
                              prompt_template="{caption}, sharp")
    for count in (1, 7, 30):
        assert composer(m, count) == mode_prompts(m, count, 2, "{caption}, sharp", False, "", weighting)


def test_vocabulary_strategy_keeps_the_failure_attribute_and_covers_every_context():
    m = mode([("a photo of a purple triangle", 0.3)])
    prompts = PromptComposer(VOCAB, "vocabulary").prompts(m, 36, seed=3)
    assert all(p.attributes["color"] == "purple" and "purple triangle" in p.text for p in prompts)
    combos = Counter((p.attributes["background"], p.attributes["size"]) for p in prompts)
    assert len(combos) == len(BACKGROUNDS) * len(SIZES) and set(combos.values()) == {3}  # each context 3 times
    again = PromptComposer(VOCAB, "vocabulary").prompts(m, 36, seed=3)
    assert [p.text for p in again] == [p.text for p in prompts]  # deterministic given the seed
    other = PromptComposer(VOCAB, "vocabulary")(m, 36, seed=4)
    assert other != [p.text for p in prompts] and sorted(other) == sorted(p.text for p in prompts)
    assert prompt_diversity(prompts)["distinct"] == 12


def test_each_caption_gets_its_share_and_varies_the_other_kinds():
    m = mode([("a photo of a triangle on grass", 0.3), ("a photo of a large triangle", 0.1),
              ("a triangle made of cheese", 0.05)])
    prompts = PromptComposer(VOCAB, "vocabulary", prompts_per_mode=3).prompts(m, 40)
    by_caption = Counter(p.caption for p in prompts)
    assert [by_caption[c] for c, _ in m.captions] == allocate([s for _, s in m.captions], 40)
    grass = [p for p in prompts if p.caption == m.captions[0][0]]
    assert all(p.text.endswith("on grass") for p in grass) and len({p.attributes["color"] for p in grass}) == len(COLORS)
    large = [p for p in prompts if p.caption == m.captions[1][0]]
    assert all(p.attributes["size"] == "large" and "background" in p.attributes for p in large)
    foreign = [p for p in prompts if p.caption == m.captions[2][0]]
    assert {p.text for p in foreign} == {"a triangle made of cheese"}  # not from the vocabulary: used as it is


def fake_text_encoder():
    """Text embeddings with one axis per attribute phrase (a phrase's captions all point along it)."""
    phrases = [v for values in VOCAB.attributes.values() for v in values]

    def encode(texts):
        out = torch.full((len(texts), len(phrases)), 0.01)
        for i, t in enumerate(texts):
            for j, p in enumerate(phrases):
                if f" {p} " in f" {t} ":
                    out[i, j] = 1.0
        return out

    return encode, phrases


def test_members_strategy_follows_the_contexts_the_members_show():
    encode, phrases = fake_text_encoder()
    # 6 members on water (small), 3 on snow (large), 1 on sand (small)
    shown = [("on water", "small")] * 6 + [("on snow", "large")] * 3 + [("on sand", "small")]
    members = torch.zeros(len(shown), len(phrases))
    for i, (bg, size) in enumerate(shown):
        members[i, phrases.index(bg)] = members[i, phrases.index(size)] = 1.0
    m = mode([("a photo of a purple triangle", 0.3)], members=len(shown))
    prompts = PromptComposer(VOCAB, "members").prompts(m, 20, seed=0, member_embeddings=members, encode_texts=encode)
    got = Counter((p.attributes["background"], p.attributes["size"]) for p in prompts)
    assert got == Counter({("on water", "small"): 12, ("on snow", "large"): 6, ("on sand", "small"): 2})
    assert all(p.source == "members" for p in prompts)
    mixed = PromptComposer(VOCAB, "mixed", members_fraction=0.25).prompts(m, 20, member_embeddings=members,
                                                                         encode_texts=encode)
    assert Counter(p.source for p in mixed) == {"members": 5, "vocabulary": 15}
    smoothed = PromptComposer(VOCAB, "members", smoothing=1.0).prompts(m, 40, member_embeddings=members,
                                                                      encode_texts=encode)
    assert len({(p.attributes["background"], p.attributes["size"]) for p in smoothed}) == 12  # beyond the members
    with pytest.raises(ValueError, match="strategy=vocabulary"):
        diverse_prompts(m, VOCAB, 4, "members")


def test_a_large_vocabulary_names_at_most_max_other_extra_attributes():
    vocab = Vocabulary({"place": [f"in place {i}" for i in range(40)], "colour": ["red", "blue", "green"],
                        "size": ["small", "large"], "weather": ["in the rain", "in fog"],
                        "style": ["a sketch of a {cls}", "a painting of a {cls}"]}, prefix_attributes=("colour", "size"))
    m = mode([("a photo of a dog in place 3", 0.2)], cls="dog")
    prompts = PromptComposer(vocab, "vocabulary", max_other=2).prompts(m, 60)
    assert all(len(p.attributes) == 3 and p.attributes["place"] == "in place 3" for p in prompts)
    assert not any("style" in p.attributes for p in prompts)  # whole-caption kinds vary only when asked
    assert Counter(k for p in prompts for k in p.attributes if k != "place") == {"colour": 40, "size": 40,
                                                                                 "weather": 40}
    styled = PromptComposer(vocab, "vocabulary", vary=["style", "colour"]).prompts(m, 4)
    assert all(p.text.startswith(("a sketch of a", "a painting of a")) and p.text.endswith("in place 3")
               for p in styled)


def test_bad_knobs_name_themselves():
    for kwargs, match in (({"strategy": "random"}, "prompts.strategy"), ({"max_other": 0}, "prompts.max_other"),
                          ({"vary": ["weather"]}, "prompts.vary"), ({"members_fraction": 2}, "members_fraction")):
        with pytest.raises(ValueError, match=match):
            PromptComposer(VOCAB, **kwargs)


def test_diversity_measures():
    assert entropy_bits([2, 2]) == 1.0 and entropy_bits([5]) == 0.0
    d = prompt_diversity(["a", "a", "b", "c"])
    assert d["distinct"] == 3 and d["entropy_bits"] == pytest.approx(1.5)
    spread = attribute_spread({"background": ["grass", "grass", "water", "sand"], "size": ["small", "small", "large",
                                                                                             "small"]},
                              reference={"background": ["grass", "snow", "water", "water"],
                                         "size": ["small", "small", "large", "large"]})
    assert spread["kinds"]["background"]["distinct"] == 3 and spread["combinations"] == 3
    assert spread["coverage"] == pytest.approx(2 / 3) and spread["reference_mass_covered"] == pytest.approx(3 / 4)


def test_oracle_spread_reads_the_attributes_of_real_renders():
    from blindspot.world.corpus import corpus_batch
    from blindspot.world.oracle import SHIPPED, load_oracle
    from blindspot.world.spec import WorldSpec

    if not SHIPPED.is_file():
        pytest.skip("no shipped oracle")
    spec = WorldSpec()
    batch = corpus_batch(spec, 24, seed=424242)
    truth = {"background": [spec.backgrounds[i] for i in batch.backgrounds], "color": [spec.colors[i] for i in
                                                                                       batch.colors],
             "size": [spec.sizes[i] for i in batch.sizes]}
    got = oracle_spread(batch.images, load_oracle(), target_class=spec.classes[0], reference=truth)
    assert got == {**attribute_spread(truth, truth), "class_agreement": pytest.approx(
        float((batch.classes == 0).float().mean()), abs=1e-4)}  # the oracle reads clean renders exactly
