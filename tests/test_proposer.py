"""The LLM proposer: a local causal LM (tiny, random, saved to disk) adds candidates; junk is dropped and counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import BagOfWords
import torch

from blindspot.captioning import Captioner, Vocabulary
from blindspot.modes import FailureMode
from blindspot.proposers import JUNK_KINDS, LLMProposer

WORDS = ["<eos>", "<unk>", "\n", "-", ",", "on", "in", "a", "the", "grass", "beach", "snow", "at", "night", "star",
         "red", "photo", "of", "with", "dog", "water", "sand", "sky", "from", "above"]


def make_tiny_causal_lm(folder: Path) -> Path:
    """A 1-layer GPT-2 with random weights and a word-level tokenizer built offline, saved as a user would have it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split("\n", "isolated"),
                                                 pre_tokenizers.WhitespaceSplit()])
    tok.decoder = decoders.WordPiece(prefix="##")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                                       bos_token_id=0, eos_token_id=0, pad_token_id=0))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>",
                            pad_token="<eos>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


bag_of_words = BagOfWords(32)  # a transparent text encoder shared by this module's tests


def mode_of(cls="star", direction=None):
    d = (direction if direction is not None else bag_of_words(["grass"])[0]).tolist()
    return FailureMode(3, cls, [0, 1], 0.9, 0.1, 1.0, mode_id="r0-star-0", direction=d)


def test_the_tiny_lm_proposes_seeded_phrases_without_moving_the_training_rng(tiny_lm):
    proposer = LLMProposer(str(tiny_lm), max_new_tokens=24, seed=3)
    mode = mode_of()
    mode.captions = [("a photo of a star on grass", 0.5)]
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = proposer("star", mode)
    assert first  # the random model's continuation holds at least one usable phrase
    assert torch.equal(torch.rand(1), expected_next)  # sampling ran in a forked RNG
    assert first == proposer("star", mode)  # seeded: the same phrases again
    stats = mode.extra["proposer"]
    assert stats["phrases"] == first and stats["kept"] == len(first)
    assert stats["proposed"] == stats["kept"] + sum(stats["dropped"].values())
    assert set(stats["dropped"]) == set(JUNK_KINDS)
    for phrase in first:
        assert phrase.strip() and phrase.isprintable() and len(phrase.split()) <= proposer.max_words


def test_junk_output_is_dropped_and_counted(tiny_lm):
    proposer = LLMProposer(str(tiny_lm), max_words=4, max_phrases=3)
    raw = ["- on a beach\n- \n- star\n- On a  Beach\n- in the snow at night under a full moon\n- \x07\x08\n- ###",
           "1. at night, 2) the star; with a dog, from above, in the rain"]
    kept, stats = proposer.clean("star", raw)
    assert kept == ["on a beach", "at night", "with a dog"]
    assert {k: stats[k] for k in JUNK_KINDS} == {"empty": 1, "too_long": 1, "non_printable": 2, "repeat": 1,
                                                 "class_name": 2, "over_limit": 2}
    assert stats["proposed"] == 12 and stats["kept"] == 3


class FixedAnswers(LLMProposer):
    """The real proposer with the model's answer fixed (to test how its phrases join the ranking)."""

    def ask(self, cls, captions):
        self.asked_with = captions
        return ["- on a beach\n- star\n- a star in the snow\n- on grass\n- \n"]


def test_proposed_phrases_join_the_candidates_and_are_ranked_by_clip(tiny_lm):
    vocab = Vocabulary({"background": ["on grass", "on water"]})
    proposer = FixedAnswers(str(tiny_lm))
    mode = mode_of(direction=bag_of_words(["snow"])[0])
    Captioner(vocab, top_k=2, proposer=proposer)([mode], bag_of_words)
    assert proposer.asked_with == [c for c, _ in Captioner(vocab, top_k=2).rank(mode, bag_of_words)[:2]]
    assert mode.caption == "a star in the snow"  # a proposal naming the class is a caption as is
    ranked = [c for c, _ in Captioner(vocab, proposer=proposer).rank(mode, bag_of_words)]
    assert "a photo of a star on a beach" in ranked  # a bare attribute is worded by the templates
    assert len(ranked) == len(set(ranked)) == 4
    extra = mode.extra["proposer"]
    assert extra["dropped"]["class_name"] == 1 and extra["dropped"]["empty"] >= 1
    assert extra["already_candidates"] == 1 and extra["candidates_added"] == 2  # 'on grass' was in the vocabulary


def test_the_real_pipeline_feeds_the_captioner(tiny_lm):
    vocab = Vocabulary({"background": ["on grass", "on water"]})
    proposer = LLMProposer(str(tiny_lm), max_new_tokens=16)
    mode = mode_of()
    ranked = Captioner(vocab, top_k=3, proposer=proposer).rank(mode, bag_of_words)
    extra = mode.extra["proposer"]
    assert extra["kept"] >= 1 and len(ranked) == 2 + extra["candidates_added"]
    assert extra["candidates_added"] + extra["already_candidates"] == extra["kept"]


def test_a_folder_that_is_not_a_causal_lm_is_named(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    with pytest.raises(FileNotFoundError, match="proposer.model"):
        LLMProposer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="proposer.model.*not a transformers model folder"):
        LLMProposer(str(tmp_path / "empty"))
    CLIPTextModel(CLIPTextConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path / "clip_text")
    with pytest.raises(ValueError, match="proposer.model.*not a causal language model"):
        LLMProposer(str(tmp_path / "clip_text"))


def test_a_causal_lm_without_a_tokenizer_is_named(tmp_path, tiny_lm):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=10, n_positions=16, n_embd=8, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="proposer.model.*no tokenizer"):
        LLMProposer(str(tmp_path))


def test_proposer_config_group(compose_cfg, tiny_lm):
    from hydra.utils import instantiate

    from tests.conftest import ROOT

    wired = "- proposer:" in (ROOT / "conf" / "train.yaml").read_text()  # `- proposer: none` in its defaults
    prefix = "" if wired else "+"
    proposer = instantiate(compose_cfg([f"{prefix}proposer=llm", f"proposer.model={tiny_lm}"]).proposer)
    assert isinstance(proposer, LLMProposer) and proposer.seed == 0
    assert instantiate(compose_cfg([f"{prefix}proposer=none"]).proposer) is None
    with pytest.raises(Exception, match="proposer.model"):
        instantiate(compose_cfg([f"{prefix}proposer=llm", f"proposer.model={tiny_lm.parent / 'nope'}"]).proposer)


@pytest.mark.parametrize("prompt", ["attributes of {thing}:", "no class here", "a {cls} {0}"])
def test_a_prompt_with_unknown_fields_is_named(tiny_lm, prompt):
    with pytest.raises(ValueError, match="proposer.prompt"):
        LLMProposer(str(tiny_lm), prompt=prompt)
