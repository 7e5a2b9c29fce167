"""Captioning ranks the vocabulary by alignment with the failure; filters keep only good generated images."""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from blindspot.captioning import Captioner, Vocabulary, load_vocabulary, world_vocabulary
from blindspot.filters import (Candidates, ClassifierConfidenceFilter, ClipAlignmentFilter, DegenerateFilter,
                               NearDuplicateFilter, apply_filters, seeded_subset)
from blindspot.modes import FailureMode

DIM = 64
_words: dict[str, torch.Tensor] = {}


def bag_of_words(texts):
    """A transparent text encoder for tests: the normalised sum of fixed random word vectors."""
    out = []
    for t in texts:
        vecs = []
        for w in t.lower().split():
            if w not in _words:  # seeded by the word itself, so a vector does not depend on which tests ran first
                _words[w] = torch.randn(DIM, generator=torch.Generator().manual_seed(zlib.crc32(w.encode())))
            vecs.append(_words[w])
        out.append(F.normalize(torch.stack(vecs).sum(0), dim=-1))
    return torch.stack(out)


def test_caption_matching_the_failure_direction_ranks_first():
    vocab = world_vocabulary(["grass", "water", "sand"], ["red", "yellow"], ["small", "large"])
    direction = bag_of_words(["water"])[0]
    mode = FailureMode(3, "star", [0, 1], 0.9, 0.1, 1.0, mode_id="m", direction=direction.tolist())
    Captioner(vocab, top_k=3)([mode], bag_of_words)
    assert mode.caption == "a photo of a star on water" and len(mode.captions) == 3
    assert mode.captions[0][1] > mode.captions[1][1]


def test_without_a_direction_the_slice_mean_minus_class_mean_is_used():
    vocab = world_vocabulary(["grass", "water"], ["red", "yellow"], ["small", "large"])
    emb = F.normalize(torch.randn(20, DIM), dim=-1)
    labels = torch.zeros(20, dtype=torch.long)
    emb[:5] = F.normalize(emb[:5] + 3 * bag_of_words(["yellow"])[0], dim=-1)
    mode = FailureMode(0, "star", [0, 1, 2, 3, 4], 0.9, 0.2, 1.0, mode_id="m")
    Captioner(vocab)([mode], bag_of_words, emb, labels)
    assert mode.caption == "a photo of a yellow star"


def test_the_target_setting_chooses_direction_members_or_both():
    """The members all share 'night' while the direction leans to 'small' (a cue of errors in every class)."""
    vocab = world_vocabulary(["grass", "night"], ["red", "yellow"], ["small", "large"])
    emb = F.normalize(torch.randn(20, DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.zeros(20, dtype=torch.long)
    night = F.normalize(bag_of_words(["in the night sky"])[0] - bag_of_words(["a photo of a star"])[0], dim=-1)
    emb[:5] = F.normalize(emb[:5] + 3 * night, dim=-1)
    small = bag_of_words(["small"])[0]
    direction = F.normalize(0.8 * small + 0.2 * night, dim=-1).tolist()

    def top2(target: str) -> list[str]:
        mode = FailureMode(0, "star", [0, 1, 2, 3, 4], 0.9, 0.2, 1.0, mode_id="m", direction=direction)
        Captioner(vocab, target=target)([mode], bag_of_words, emb, labels)
        return [c for c, _ in mode.captions[:2]]
    assert top2("direction")[0] == "a photo of a small star"
    assert top2("members")[0] == "a photo of a star in the night sky"
    assert set(top2("both")) == {"a photo of a small star", "a photo of a star in the night sky"}  # the two cues
    with pytest.raises(ValueError, match="loop.captioner.target"):
        Captioner(vocab, target="centroid")
    with pytest.raises(ValueError, match="target=members scores captions against the mode's members: pass"):
        Captioner(vocab, target="members")([FailureMode(0, "star", [0], 0.9, 0.2, 1.0, direction=direction)],
                                           bag_of_words)


def _small_everywhere(small_in_other_classes: bool):
    """Three classes; class 0's mode leans to 'small' and 'night'; the other classes' errors are small or not."""
    g = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(90, DIM, generator=g), dim=-1)
    labels = torch.arange(3).repeat_interleave(30)
    preds = labels.clone()
    small = F.normalize(bag_of_words(["a photo of a small star"])[0] - bag_of_words(["a photo of a star"])[0], dim=-1)
    night = F.normalize(bag_of_words(["in the night sky"])[0] - bag_of_words(["a photo of a star"])[0], dim=-1)
    for c in (1, 2):  # ten errors in each other class
        wrong = torch.arange(30 * c, 30 * c + 10)
        preds[wrong] = (c + 1) % 3
        if small_in_other_classes:
            emb[wrong] = F.normalize(emb[wrong] + 3 * small, dim=-1)
    direction = F.normalize(0.7 * small + 0.3 * night, dim=-1).tolist()
    return FailureMode(0, "star", list(range(5)), 0.9, 0.2, 1.0, mode_id="m", direction=direction), emb, labels, preds


def test_removing_shared_errors_names_what_is_specific_to_the_mode():
    """'small' fails in every class: removed, the mode's own cue (night) names it; where only this mode fails on
    small things, small stays."""
    vocab = world_vocabulary(["grass", "night"], ["red", "yellow"], ["small", "large"])
    for small_elsewhere, expected in ((True, "a photo of a star in the night sky"), (False, "a photo of a small star")):
        mode, emb, labels, preds = _small_everywhere(small_elsewhere)
        Captioner(vocab, shared_errors="remove")([mode], bag_of_words, emb, labels, preds)
        assert mode.caption == expected
        assert (mode.extra["shared_error_overlap"] > 0.5) == small_elsewhere
    mode, emb, labels, preds = _small_everywhere(True)
    Captioner(vocab)([mode], bag_of_words, emb, labels, preds)
    assert mode.caption == "a photo of a small star"  # keep (the default): the direction as it is
    with pytest.raises(ValueError, match="shared_errors=remove needs the validation embeddings, labels and predictions"):
        Captioner(vocab, shared_errors="remove")([mode], bag_of_words, emb, labels)
    with pytest.raises(ValueError, match="loop.captioner.shared_errors"):
        Captioner(vocab, shared_errors="drop")


def test_a_proposer_adds_candidates():
    vocab = Vocabulary({"background": ["on grass"]})
    mode = FailureMode(0, "cow", [0], 1.0, 0.1, 1.0, direction=bag_of_words(["beach"])[0].tolist())
    Captioner(vocab, top_k=2, proposer=lambda cls, m: [f"a {cls} on a beach"])([mode], bag_of_words)
    assert mode.caption == "a cow on a beach"


def test_vocabulary_files_and_their_errors(tmp_path):
    (tmp_path / "v.yaml").write_text("attributes:\n  place: [on a beach, in a forest]\n")
    (tmp_path / "v.txt").write_text("# contexts\non a beach\nin snow\n")
    assert load_vocabulary(tmp_path / "v.yaml").attributes == {"place": ["on a beach", "in a forest"]}
    assert load_vocabulary(tmp_path / "v.txt").attributes == {"context": ["on a beach", "in snow"]}
    with pytest.raises(FileNotFoundError, match="vocabulary.path"):
        load_vocabulary(tmp_path / "missing.yaml")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="vocabulary is empty"):
        load_vocabulary(tmp_path / "empty.txt")


def candidates(n=4):
    images = torch.rand(n, 3, 8, 8)
    emb = F.normalize(torch.randn(n, DIM), dim=-1)
    return Candidates(images=images, labels=torch.zeros(n, dtype=torch.long), prompts=["p"] * n, image_emb=emb,
                      prompt_emb=emb.clone(), class_emb=torch.stack([emb[0], -emb[0]]),
                      probs=torch.tensor([[0.99, 0.01], [0.5, 0.5], [0.2, 0.8], [0.9, 0.1]])[:n])


def test_degenerate_filter_catches_nan_and_blank_images():
    c = candidates()
    c.images[0] = float("nan")
    c.images[1] = 0.5
    keep, scores = DegenerateFilter()(c)
    assert keep.tolist() == [False, False, True, True]


def test_classifier_filter_drops_confidently_right_images():
    keep, scores = ClassifierConfidenceFilter(max_confidence=0.95)(candidates())
    assert keep.tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        ClassifierConfidenceFilter(max_confidence=0.2, min_confidence=0.5)


def test_contrast_images_are_kept_though_the_classifier_gets_them_right():
    c = candidates()
    c.contrast = torch.tensor([True, False, True, False])
    keep, _ = ClassifierConfidenceFilter(max_confidence=0.95, min_confidence=0.3)(c)
    assert keep.tolist() == [True, True, False, True]  # image 0 (p=0.99) stays; min_confidence still applies


def test_clip_filter_requires_the_target_class():
    c = candidates()
    keep, scores = ClipAlignmentFilter(require_class_match=True)(c)
    assert keep[0] and scores["clip_class"].tolist() == (c.image_emb @ c.class_emb.T).argmax(-1).tolist()
    keep, _ = ClipAlignmentFilter(require_class_match=False, min_similarity=1.5)(c)
    assert not keep.any()


def test_near_duplicates_are_dropped_within_batch_and_against_the_pool():
    c = candidates()
    c.image_emb[2] = c.image_emb[1]
    keep, _ = NearDuplicateFilter(max_similarity=0.98)(c)
    assert keep.tolist() == [True, True, False, True]
    keep, _ = NearDuplicateFilter(max_similarity=0.98)(c, pool_emb=c.image_emb[3:4])
    assert keep.tolist() == [True, True, False, False]


def test_an_auto_near_duplicate_threshold_is_as_close_as_real_images_of_a_class_get():
    """Real images: class 0 in pairs at cosine 0.9 and 0.5, class 1 at 0.7; the threshold is the chosen quantile of
    each image's nearest same-class cosine, and generated images are judged against it."""
    def unit(angle):
        return torch.tensor([math.cos(angle), math.sin(angle), 0.0])

    real = torch.stack([unit(0.0), unit(math.acos(0.9)), unit(2.0), unit(2.0 + math.acos(0.5)),
                        unit(0.3), unit(0.3 + math.acos(0.7))])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    f = NearDuplicateFilter("auto", real_quantile=1.0)
    with pytest.raises(RuntimeError, match="calibrate"):
        f(candidates())
    assert f.calibrate(real, labels) == pytest.approx(0.9, abs=1e-5)  # the closest real pair
    assert NearDuplicateFilter("auto", real_quantile=0.5).calibrate(real, labels) == pytest.approx(0.7, abs=1e-5)
    c = candidates()
    c.image_emb = torch.stack([unit(0.0), unit(math.acos(0.95)), unit(1.0), unit(1.0 + math.acos(0.85))])
    keep, _ = f(c)
    assert keep.tolist() == [True, False, True, True]  # 0.95 is closer than any real pair; 0.85 is not
    with pytest.raises(ValueError, match="two real images"):
        NearDuplicateFilter("auto").calibrate(real[:2], torch.tensor([0, 1]))
    assert seeded_subset(10, 3) == seeded_subset(10, 3)  # the calibration sample: the same on every rank and resume
    assert len(set(seeded_subset(10, 3))) == 3 and seeded_subset(2, 3) == [0, 1]


def test_apply_filters_reports_the_first_rejecting_filter():
    c = candidates()
    c.images[1] = float("nan")
    keep, rejected_by, scores = apply_filters([DegenerateFilter(), ClassifierConfidenceFilter(0.95)], c)
    assert keep.tolist() == [False, False, True, True]
    assert rejected_by == ["classifier", "degenerate", None, None]
    assert scores["target_prob"][1] is None and scores["target_prob"][0] == pytest.approx(0.99)


def test_the_shared_error_direction_leaves_out_the_class_and_classes_with_too_few_errors():
    from blindspot.discovery.shared_errors import shared_error_direction

    labels = torch.arange(3).repeat_interleave(6)
    wrong = torch.tensor([True, True, True, False, False, False] * 3)
    emb = torch.where(wrong.unsqueeze(1), torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    emb[labels == 0] = torch.tensor([0, 0, 1.0])  # class 0 fails elsewhere: it must not count for itself
    preds = torch.where(wrong, (labels + 1) % 3, labels)
    expected = F.normalize(torch.tensor([1.0, -1.0, 0]), dim=0)
    assert torch.allclose(shared_error_direction(emb, labels, preds, exclude=0), expected)
    preds[labels == 2] = 2  # class 2 no longer fails: only class 1 is left
    assert torch.allclose(shared_error_direction(emb, labels, preds, exclude=0), expected)
    preds[labels == 0] = 0
    assert shared_error_direction(emb, labels, preds, exclude=1) is None  # no other class has errors left
