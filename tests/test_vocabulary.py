"""The shipped general vocabulary, vocabulary files and their bad input, the data-dependent default, the benchmark."""

from __future__ import annotations

import json
import logging
import re

import pytest

from blindspot.captioning import (GENERAL_VOCABULARY, Captioner, Vocabulary, general_vocabulary,
                                  general_world_vocabulary, load_vocabulary, merge_vocabularies, world_vocabulary)
from blindspot.modes import FailureMode

KINDS = ("scene_and_place", "background_and_texture", "colour", "size", "lighting_and_time_of_day", "weather",
         "viewpoint_pose_crop", "co_occurring_objects", "image_style_and_quality")
WORLD = (["grass", "water", "sand", "snow", "brick", "night"], ["red", "orange", "yellow", "cyan", "purple"],
         ["small", "large"])


def test_general_vocabulary_ships_500_distinct_phrases_of_every_kind():
    vocab = general_vocabulary()
    assert len(vocab) >= 500 and vocab.duplicates_dropped == 0  # the curated file has no repeats
    assert set(KINDS) <= set(vocab.attributes) and all(len(vocab.attributes[k]) >= 10 for k in KINDS)
    for cls in ("dog", "apple"):
        captions = [c for _, _, c in vocab.candidates(cls)]
        assert len(set(captions)) == len(captions)
        for c in captions:
            assert cls in c and "{" not in c and "  " not in c, c
            assert not re.search(r"\ba [aeio]", c), c  # articles fixed: "an apple", "an orange dog"
    assert "a photo of an orange dog" in [c for _, _, c in vocab.candidates("dog")]
    assert "a sketch of a dog" in [c for _, _, c in vocab.candidates("dog")]
    assert "a photo of a dog on a beach" in [c for _, _, c in vocab.candidates("dog")]


def test_general_world_holds_every_world_phrase_once():
    world = world_vocabulary(*WORLD)
    mixed = general_world_vocabulary(*WORLD)
    captions = [c for _, _, c in mixed.candidates("star")]
    assert len(set(captions)) == len(captions) >= 500
    assert {c for _, _, c in world.candidates("star")} <= set(captions)
    assert mixed.duplicates_dropped == len(world) + len(general_vocabulary()) - len(mixed)


def test_extra_path_adds_your_words_to_the_general_ones(tmp_path):
    (tmp_path / "mine.txt").write_text("on a beach\nnext to a tractor\n")
    vocab = general_vocabulary(extra_path=tmp_path / "mine.txt")
    assert len(vocab) == len(general_vocabulary()) + 1 and vocab.duplicates_dropped == 1
    assert "a photo of a cow next to a tractor" in [c for _, _, c in vocab.candidates("cow")]
    with pytest.raises(FileNotFoundError, match="vocabulary.extra_path"):
        general_vocabulary(extra_path=tmp_path / "missing.txt")


def test_duplicates_are_dropped_and_counted_and_empty_lines_skipped(tmp_path, caplog):
    (tmp_path / "v.txt").write_text("on a beach\n\n   \nin the snow\nOn a  Beach\n# a comment\nin the snow\n")
    with caplog.at_level(logging.WARNING, logger="blindspot.captioning"):
        vocab = load_vocabulary(tmp_path / "v.txt")
    assert vocab.attributes == {"context": ["on a beach", "in the snow"]} and vocab.duplicates_dropped == 2
    assert "2 duplicate" in caplog.text
    (tmp_path / "v.yaml").write_text("attributes:\n  place: [on a beach, '', null, in a forest]\n"
                                     "  weather: [in the rain, on a beach]\n")
    vocab = load_vocabulary(tmp_path / "v.yaml")
    assert vocab.attributes == {"place": ["on a beach", "in a forest"], "weather": ["in the rain"]}
    assert vocab.duplicates_dropped == 1


def test_a_non_utf8_byte_is_named_with_its_place_and_the_key(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("on a beach\nin a caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:
        load_vocabulary(path)
    msg = str(err.value)
    assert str(path) in msg and "0xe9" in msg and "offset 19" in msg and "line 2" in msg and "vocabulary.path" in msg
    with pytest.raises(ValueError, match="vocabulary.extra_path"):
        general_vocabulary(extra_path=path)


@pytest.mark.parametrize("text,match", [
    ("# only a comment\n\n", "vocabulary is empty"),
    ("attributes:\n  place: []\n", "vocabulary is empty"),
    ("attributes:\n  place: [on a beach, yes]\n", "must be a list of phrases"),
    ("attributes: [on a beach]\n", "needs an `attributes:` mapping"),
    ("attributes: {place: [on a beach\n", "not valid YAML"),
])
def test_empty_or_malformed_vocabulary_files_are_named(tmp_path, text, match):
    path = tmp_path / ("v.txt" if text.startswith("#") else "v.yaml")
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_vocabulary(path)
    assert str(path) in str(err.value) and "vocabulary.path" in str(err.value)


def test_merge_keeps_the_first_templates_and_unites_prefix_kinds():
    a = Vocabulary({"colour": ["red"]}, ["a photo of a {cls} {attr}"], prefix_attributes=("colour",))
    b = Vocabulary({"place": ["on a beach"], "colour": ["Red", "blue"]}, ["a {cls} {attr}"])
    merged = merge_vocabularies(a, b)
    assert merged.attributes == {"colour": ["red", "blue"], "place": ["on a beach"]}
    assert merged.templates == ["a photo of a {cls} {attr}"] and merged.duplicates_dropped == 1
    assert [c for _, _, c in merged.candidates("cow")] == ["a photo of a red cow", "a photo of a blue cow",
                                                           "a photo of a cow on a beach"]


def test_the_planted_phrase_still_wins_among_the_general_phrases():
    """A transparent encoder (bag of random word vectors): the phrase whose words carry the direction ranks first."""
    from tests.helpers import BagOfWords

    encode = BagOfWords(64)
    words = encode.words

    vocab = general_world_vocabulary(*WORLD)
    encode([c for _, _, c in vocab.candidates("star")])
    mode = FailureMode(3, "star", [0], 0.9, 0.1, 1.0, mode_id="m", direction=words["grass"].tolist())
    Captioner(vocab, top_k=3)([mode], encode)
    assert "grass" in mode.caption


@pytest.mark.parametrize("data", ["metadata_csv", "image_folder"])
def test_real_data_defaults_to_the_general_vocabulary(compose_cfg, tmp_path, data):
    cfg = compose_cfg([f"data={data}", f"data.root={tmp_path}"])
    assert cfg.vocabulary._target_ == "blindspot.captioning.general_vocabulary"
    mine = tmp_path / "mine.txt"
    mine.write_text("next to a tractor\n")
    cfg = compose_cfg([f"data={data}", f"data.root={tmp_path}", "vocabulary=file", f"vocabulary.path={mine}"])
    from hydra.utils import instantiate

    assert instantiate(cfg.vocabulary).attributes == {"context": ["next to a tractor"]}
    cfg = compose_cfg([f"data={data}", f"data.root={tmp_path}", f"vocabulary.extra_path={mine}"])
    assert len(instantiate(cfg.vocabulary)) == len(general_vocabulary()) + 1


def test_the_world_keeps_its_own_vocabulary_and_can_mix_in_the_general_one(compose_cfg):
    from hydra.utils import instantiate

    assert len(instantiate(compose_cfg([]).vocabulary)) == 13
    mixed = instantiate(compose_cfg(["vocabulary=general_world"]).vocabulary)
    assert len(mixed) == len(general_world_vocabulary(*WORLD))
    assert GENERAL_VOCABULARY.is_file()


def test_quick_vocabulary_benchmark_writes_its_table(tmp_path):
    from benchmarks.vocabulary import run

    result = run([0], quick=True, scratch=tmp_path / "runs", results=tmp_path)
    saved = json.loads((tmp_path / "vocabulary_quick.json").read_text())
    assert saved["summary"] == result["summary"] and saved["quick"] is True
    row = saved["seeds"][0]
    for name in ("world", "general_world"):
        v = row["vocabularies"][name]
        assert v["star_mode_rank"] is not None and len(v["top3"]) == 3  # the stand-in's planted spot is found
        assert v["top_names_value"] == ("grass" in v["top3"][0][0])
    assert row["vocabularies"]["general_world"]["phrases"] >= 500
    assert "general_world" in (tmp_path / "vocabulary_quick.md").read_text()
