"""The failure loop and its remedy contract, Lightning-free: schedule, rounds and status, state round trip,
the kept-image budget (generation waves until `target_kept`), and the remedies' early checks."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from blindspot.generation.backends import GenerationOutput
from blindspot.generation.manifest import read_manifest
from blindspot.loop import FailureLoop, Round
from blindspot.modes import FailureMode
from blindspot.remedies import RemedyContext, RemedyResult
from blindspot.remedies.text2image import Text2ImageRemedy


class NoiseBackend:
    """Seeded noise images: a real pure function of (prompt, seed)."""

    def generate(self, prompts, seeds):
        images = torch.stack([torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
        return GenerationOutput(images, list(prompts), list(seeds))


class KeepEveryThird:
    """A filter keeping one image in three (by mean brightness rank within the batch, deterministic)."""

    name, needs = "every_third", frozenset()

    def __call__(self, candidates, pool_emb=None):
        means = candidates.images.flatten(1).mean(1)
        return [(int(m * 1000) % 3) == 0 for m in means.tolist()], {}


def mode(i=0, cls="star"):
    return FailureMode(i, cls, [0, 1, 2], 0.8, 0.2, 0.5, mode_id=f"{cls}-0", captions=[(f"a {cls} on grass", 0.5)])


def context(**kw):
    return RemedyContext(**{"clip": None, "class_names": ["star", "cross"], "predict_proba": None, "embed": None,
                            **kw})


def test_the_loop_decides_when_rounds_run_and_tracks_status():
    loop = FailureLoop(discovery=lambda *a: [], captioner=lambda *a: None, clip=None, start_epoch=2,
                       every_n_epochs=2, max_rounds=2)
    assert [e for e in range(8) if loop.is_due(e)] == [1, 3, 5, 7]  # 1-based epochs 2, 4, 6, 8 (none run yet)
    preds, labels = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    rnd = loop.add_round(1, [mode()], {"discover": 0.1}, preds, labels)
    assert rnd.modes[0].mode_id == "r0-star-0" and rnd.status == "discovered"
    assert loop.unfinished() == [rnd] and not loop.is_due(1)
    result = loop.remedy_round(rnd, context())
    assert isinstance(result, RemedyResult) and rnd.status == "remedied" and not loop.unfinished()
    loop.track(2, torch.tensor([0, 1, 1, 1]), labels)
    assert [p["epoch"] for p in loop.mode_accuracy["r0-star-0"]] == [1, 2]
    state = json.loads(json.dumps(loop.state_dict()))  # checkpoints carry it as plain JSON
    other = FailureLoop(discovery=None, captioner=None, clip=None)
    other.load_state_dict(state)
    assert [r.to_dict() for r in other.rounds] == [r.to_dict() for r in loop.rounds]
    assert other.mode_accuracy == loop.mode_accuracy


def test_bad_loop_settings_name_the_keys():
    with pytest.raises(ValueError, match="loop.every_n_epochs"):
        FailureLoop(None, None, None, every_n_epochs=0)
    with pytest.raises(ValueError, match="remedy.target_kept"):
        Text2ImageRemedy(NoiseBackend(), target_kept=0)
    with pytest.raises(ValueError, match="remedy.caption_weighting"):
        Text2ImageRemedy(NoiseBackend(), caption_weighting="loud")


def test_rank_by_uncovered_puts_the_slice_training_never_shows_first_and_hands_it_on():
    """rank_by=uncovered: of three equally failed slices of one class, the one no training image reaches outranks
    two with higher slice scores that training covers, survives the max_modes cut, and keeps both numbers."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=1)

    def around(c, n):
        return torch.nn.functional.normalize(centres[c] + 0.3 * torch.randn(n, 16, generator=g), dim=1)

    val = torch.cat([around(0, 20), around(1, 20), around(2, 20)])
    labels = torch.zeros(60, dtype=torch.long)
    train = (torch.cat([around(0, 100), around(1, 100)]), torch.zeros(200, dtype=torch.long))  # region 2: none

    def discovery(*_):
        return [FailureMode(0, "cow", list(range(20 * c, 20 * c + 20)), 0.9, 0.3, score, mode_id=f"cow-{c}")
                for c, score in ((0, 5.0), (1, 4.0), (2, 3.0))]

    def loop(rank_by):
        return FailureLoop(discovery, captioner=lambda *a: None, clip=SimpleNamespace(encode_texts=None), max_modes=2,
                           rank_by=rank_by)

    preds = torch.ones(60, dtype=torch.long)
    by_score, _ = loop("score").discover(val, labels, preds, ["cow", "horse"])
    assert [m.mode_id for m in by_score] == ["cow-0", "cow-1"]
    ranked, _ = loop("uncovered").discover(val, labels, preds, ["cow", "horse"], train=train)
    assert ranked[0].mode_id == "cow-2" and len(ranked) == 2
    top = ranked[0].extra
    assert top["slice_score"] == 3.0 and top["train_coverage"] < 0.2 and ranked[0].score > ranked[1].score
    assert ranked[1].extra["train_coverage"] > 0.3
    with pytest.raises(ValueError, match="loop.rank_by=uncovered needs"):
        loop("uncovered").discover(val, labels, preds, ["cow", "horse"])
    with pytest.raises(ValueError, match="loop.rank_by"):
        loop("loudest")


def test_trim_covered_cuts_a_mixed_slice_to_the_part_training_never_reaches():
    """trim_covered: a slice mixing a region no training image reaches with a covered one keeps the uncovered part
    (error rate recomputed, the original size kept in extra); a slice with too few uncovered members stays whole."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(2, 16, generator=g), dim=1)

    def around(c, n):
        return torch.nn.functional.normalize(centres[c] + 0.1 * torch.randn(n, 16, generator=g), dim=1)

    val = torch.cat([around(0, 20), around(1, 10)])  # 0-19: covered by training, 20-29: never seen in training
    labels = torch.zeros(30, dtype=torch.long)
    preds = torch.tensor([1] * 10 + [0] * 10 + [1] * 10)  # the covered half of the class is half wrong
    train = (around(0, 200), torch.zeros(200, dtype=torch.long))

    def discovery(*_):
        return [FailureMode(0, "cow", list(range(10, 30)), 0.5, 0.67, 4.0, mode_id="cow-mixed"),
                FailureMode(0, "cow", list(range(0, 20)), 0.5, 0.67, 3.0, mode_id="cow-covered")]

    discovery.min_support = 8
    loop = FailureLoop(discovery, captioner=lambda *a: None, clip=SimpleNamespace(encode_texts=None),
                       rank_by="uncovered", trim_covered=0.05)
    assert loop.needs_train_embeddings
    modes, _ = loop.discover(val, labels, preds, ["cow", "horse"], train=train)
    mixed, covered = {m.mode_id: m for m in modes}["cow-mixed"], {m.mode_id: m for m in modes}["cow-covered"]
    # every never-seen member stays; a covered one stays only as often as training images are that poorly covered
    assert set(range(20, 30)) <= set(mixed.members) and len(mixed.members) <= 11
    wrong = sum(int(preds[i]) != 0 for i in mixed.members) / len(mixed.members)
    assert mixed.error_rate == pytest.approx(wrong) and wrong >= 0.9
    assert mixed.extra["trimmed_from"] == 20 and mixed.extra["trimmed_error_rate_from"] == 0.5
    assert sorted(mixed.members + mixed.extra["covered_members"]) == list(range(10, 30))  # the cut ones are kept
    assert covered.members == list(range(0, 20)) and "trimmed_from" not in covered.extra
    assert [m.mode_id for m in modes] == ["cow-mixed", "cow-covered"]
    whole = FailureLoop(discovery, captioner=lambda *a: None, clip=None, trim_covered=0.05)
    with pytest.raises(ValueError, match="loop.trim_covered needs"):
        whole.discover(val, labels, preds, ["cow", "horse"])
    with pytest.raises(ValueError, match="loop.trim_covered"):
        FailureLoop(discovery, captioner=lambda *a: None, clip=None, trim_covered=1.5)


def test_the_loop_captions_the_members_trim_covered_cut_on_their_own():
    """The cut part of a trimmed mode is captioned from its own members (not the mode's direction) into
    extra["covered_captions"]; the mode keeps its captions, and an untrimmed mode gets none."""
    val = torch.nn.functional.normalize(torch.randn(30, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    labels, preds = torch.zeros(30, dtype=torch.long), torch.ones(30, dtype=torch.long)
    seen = []

    def captioner(modes, encode_texts, embeddings, labels, preds):  # names what it was given
        for m in modes:
            seen.append((m.mode_id, m.direction is None))
            m.captions = [(f"members {min(m.members)}-{max(m.members)}", 0.5)]

    trimmed = FailureMode(0, "cow", [20, 21], 1.0, 0.5, 2.0, mode_id="cow-0", direction=[1.0] * 8,
                          extra={"covered_members": [3, 4, 5]})
    whole = FailureMode(0, "cow", [6, 7], 1.0, 0.5, 1.0, mode_id="cow-1", direction=[1.0] * 8)
    loop = FailureLoop(lambda *a: [trimmed, whole], captioner, clip=SimpleNamespace(encode_texts=None))
    modes, _ = loop.discover(val, labels, preds, ["cow", "horse"])
    assert [m.caption for m in modes] == ["members 20-21", "members 6-7"]
    assert modes[0].extra["covered_captions"] == [["members 3-5", 0.5]] and "covered_captions" not in modes[1].extra
    assert seen[-1] == ("cow-0-covered", True)  # captioned by what its members share, not by the mode's direction


def test_covered_members_generate_makes_the_cut_part_a_mode_of_its_own_with_its_captions(tmp_path):
    """remedy.covered_members=generate: a star mode of 2 members with 2 cut away gives half its 8 images to the cut
    part, prompted by its own caption; the report's per-mode counts fold them into the mode."""
    trimmed = FailureMode(0, "star", [0, 1], 0.8, 0.2, 0.5, mode_id="star-0", captions=[("a star on grass", 0.5)],
                          extra={"covered_members": [2, 3], "covered_captions": [["a star on a brick wall", 0.4]]})
    remedy = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), images_per_round=8, batch_size=8,
                              covered_members="generate")
    result = remedy(Round(0, 0, [trimmed]), context(progress=False))
    by_part = {(r["mode_id"], r["prompt"]) for r in result.records}
    assert by_part == {("star-0", "a star on grass"), ("star-0-covered", "a star on a brick wall")}
    assert sum(r["mode_id"] == "star-0-covered" for r in result.records) == 4 == len(result.records) // 2
    assert result.stats["per_mode"]["star-0"]["generated"] == 8 and result.stats["per_mode"]["star-0"]["covered_kept"] == 4
    untrimmed = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path / "drop"), images_per_round=8,
                                 batch_size=8, covered_members="drop")(Round(0, 0, [trimmed]), context(progress=False))
    assert {r["prompt"] for r in untrimmed.records} == {"a star on grass"}
    with pytest.raises(ValueError, match="remedy.covered_members='loud'"):
        Text2ImageRemedy(NoiseBackend(), covered_members="loud")


def test_target_kept_generates_waves_until_it_keeps_enough_and_injects_exactly_that(tmp_path):
    remedy = Text2ImageRemedy(NoiseBackend(), {"every_third": KeepEveryThird()}, output_dir=str(tmp_path),
                              images_per_round=12, target_kept=10, max_generated=200, batch_size=8)
    rnd = Round(0, 0, [mode(0, "star"), mode(1, "cross")])
    result = remedy(rnd, context(progress=False))
    records = [r for r in read_manifest(tmp_path) if r["round"] == 0]
    assert result.stats["waves"] > 1 and result.stats["generated"] == len(records) <= 200
    assert result.stats["kept"] == sum(r["kept"] for r in records) >= 10
    assert len(result.records) == result.stats["injected"] == 10 and all(r["kept"] for r in result.records)
    assert len({r["id"] for r in records}) == len(records) and len({r["seed"] for r in records}) == len(records)
    again = remedy(Round(0, 0, [mode(0, "star"), mode(1, "cross")]), context(progress=False))  # a resumed round
    assert [r["id"] for r in again.records] == [r["id"] for r in result.records] and again.stats["made_now"] == 0


def test_the_generation_cap_is_a_ratio_of_the_kept_target_and_stops_short_rounds(tmp_path):
    """Keeping every third image, a cap of 2 per kept stops the round at 20 generated with 7 kept (short of 10)."""
    remedy = Text2ImageRemedy(NoiseBackend(), {"every_third": KeepEveryThird()}, output_dir=str(tmp_path),
                              images_per_round=12, target_kept=10, max_generated_per_kept=2, batch_size=8)
    assert remedy.max_generated == 20
    result = remedy(Round(0, 0, [mode(0, "star")]), context(progress=False))
    assert result.stats["generated"] == 20 and len(result.records) == result.stats["kept"] < 10
    with pytest.raises(ValueError, match="max_generated=5 is below remedy.target_kept=10"):
        Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), target_kept=10, max_generated=5)
    with pytest.raises(ValueError, match="max_generated_per_kept"):
        Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), target_kept=10, max_generated_per_kept=0.5)


class KeepContrastAndEveryThird(KeepEveryThird):
    """Keeps every contrast image and one in three of the rest (contrast images pass more often, as in use)."""

    def __call__(self, candidates, pool_emb=None):
        keep, _ = super().__call__(candidates)
        return [k or bool(c) for k, c in zip(keep, candidates.contrast.tolist())], {}


def test_contrast_images_show_the_confused_class_and_stay_within_their_share(tmp_path):
    star = mode(0, "star")
    star.set_confusions(torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0]), ["star", "cross"])
    remedy = Text2ImageRemedy(NoiseBackend(), {"f": KeepContrastAndEveryThird()}, output_dir=str(tmp_path),
                              images_per_round=24, target_kept=12, max_generated=200, batch_size=8, contrast=0.5)
    result = remedy(Round(0, 0, [star]), context(progress=False))
    contrast = [r for r in result.records if r["role"] == "contrast"]
    assert len(result.records) == 12 and len(contrast) == result.stats["contrast_injected"] == 6
    assert {(r["label"], r["class_name"], r["prompt"]) for r in contrast} == {(1, "cross", "a cross on grass")}
    assert result.stats["contrast_over_share"] > 0  # more contrast images passed than the share lets in
    later = [r for r in read_manifest(tmp_path) if r["wave"] > 0]  # wave 0 kept more contrast than own could carry,
    assert later and sum(r["role"] == "contrast" for r in later) < len(later) / 4  # so later waves make own images
    with pytest.raises(ValueError, match="remedy.contrast"):
        Text2ImageRemedy(NoiseBackend(), contrast=1.0)


def test_real_neighbours_inject_the_nearest_training_images_of_the_modes_class_once_per_run(tmp_path):
    """Members sit near training images 0-2 (star) and 7 (cross): the star mode gets 0-2 first, never a cross."""
    from blindspot.images import load_image
    from blindspot.loop import Split

    train_images = torch.stack([torch.full((3, 8, 8), i * 20, dtype=torch.uint8) for i in range(10)])
    train_labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    train_emb = torch.eye(10)[:, :6] + 0.01
    train_emb[7] = train_emb[0]  # a cross that looks like the members: the wrong class, never taken
    val_emb = torch.stack([train_emb[0], train_emb[1], train_emb[2]])
    split = Split(10, lambda idx: train_images[idx], "train")
    ctx = context(progress=False, val_embeddings=val_emb, embed=lambda s: train_emb, train=lambda: (split, train_labels))
    remedy = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), images_per_round=6, batch_size=8,
                              real_neighbours=3)  # 3 of the round's 6 images are real, 3 generated
    remedy.prepare(ctx)
    first = remedy(Round(0, 0, [mode(0, "star")]), ctx)
    real = [r for r in first.records if r.get("source") == "real_neighbour"]
    assert sorted(r["train_index"] for r in real) == [0, 1, 2] and {r["label"] for r in real} == {0}
    assert first.stats["real_neighbours"] == 3 and first.stats["injected"] == 6 == len(first.records)
    assert first.stats["generated"] == 3
    assert torch.equal(load_image(real[0]["path"]), train_images[real[0]["train_index"]])  # the training image itself
    resumed = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), images_per_round=6, batch_size=8,
                               real_neighbours=3)
    resumed.load_state_dict(json.loads(json.dumps(remedy.state_dict())))
    second = resumed(Round(1, 2, [mode(0, "star")]), ctx)  # round 1: star images 0-2 are taken, 3-4 remain
    assert sorted(r["train_index"] for r in second.records if r.get("source") == "real_neighbour") == [3, 4]
    extra = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path / "extra"), images_per_round=6,
                             batch_size=8, real_neighbours=3, neighbours_in_budget=False)  # on top: 6 + 3
    on_top = extra(Round(0, 0, [mode(0, "star")]), ctx)
    assert on_top.stats["generated"] == 6 and on_top.stats["injected"] == 9 == len(on_top.records)
    with pytest.raises(ValueError, match="remedy.real_neighbours=3 .* set remedy.real_neighbours=0"):
        Text2ImageRemedy(NoiseBackend(), real_neighbours=3).prepare(context(progress=False))
    with pytest.raises(ValueError, match="remedy.real_neighbours"):
        Text2ImageRemedy(NoiseBackend(), real_neighbours=-1)
    with pytest.raises(ValueError, match="below remedy.target_kept"):
        Text2ImageRemedy(NoiseBackend(), target_kept=8, real_neighbours=8)


def test_covered_members_get_their_share_of_the_round_as_real_neighbours_and_the_rest_is_generated(tmp_path):
    """A star mode of 2 uncovered members, with 2 covered members trimmed off (near training stars 3 and 4): with
    remedy.covered_members=neighbours, half its 8 images are real stars (3 and 4 first), the other half generated."""
    from blindspot.loop import Split

    train_images = torch.stack([torch.full((3, 8, 8), i * 20, dtype=torch.uint8) for i in range(10)])
    train_labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    train_emb = torch.eye(10) + 0.01
    val_emb = torch.stack([train_emb[0], train_emb[1], train_emb[3], train_emb[4]])
    split = Split(10, lambda idx: train_images[idx], "train")
    ctx = context(progress=False, val_embeddings=val_emb, embed=lambda s: train_emb, train=lambda: (split, train_labels))
    trimmed = FailureMode(0, "star", [0, 1], 0.8, 0.2, 0.5, mode_id="star-0", captions=[("a star on grass", 0.5)],
                          extra={"covered_members": [2, 3]})
    remedy = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), images_per_round=8, batch_size=8,
                              covered_members="neighbours")
    remedy.prepare(ctx)
    result = remedy(Round(0, 0, [trimmed]), ctx)
    real = [r for r in result.records if r.get("source") == "covered_neighbour"]
    assert sorted(r["train_index"] for r in real[:2]) == [3, 4] and {r["label"] for r in real} == {0}  # nearest first
    assert len(real) == 4 == result.stats["covered_neighbours"] == result.stats["per_mode"]["star-0"]["covered_neighbours"]
    assert result.stats["generated"] == 4 and result.stats["injected"] == 8 == len(result.records)
    assert sorted(remedy.neighbours_taken) == sorted(r["train_index"] for r in real)  # in state_dict: never twice
    dropped = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path / "drop"), images_per_round=8,
                               batch_size=8)(Round(0, 0, [trimmed]), ctx)  # the default: cut members get nothing
    assert dropped.stats["generated"] == 8 and all(r.get("source") is None for r in dropped.records)
    with pytest.raises(ValueError, match="remedy.covered_members=drop"):
        Text2ImageRemedy(NoiseBackend(), covered_members="neighbours").prepare(context(progress=False))
    with pytest.raises(ValueError, match="remedy.covered_members"):
        Text2ImageRemedy(NoiseBackend(), covered_members="all")


def test_without_target_kept_one_wave_is_made_and_everything_kept_is_injected(tmp_path):
    remedy = Text2ImageRemedy(NoiseBackend(), {"every_third": KeepEveryThird()}, output_dir=str(tmp_path),
                              images_per_round=12, batch_size=8)
    result = remedy(Round(0, 0, [mode()]), context(progress=False))
    assert result.stats["waves"] == 1 and result.stats["generated"] == 12
    assert len(result.records) == result.stats["kept"] == result.stats["injected"]


def test_probes_decide_which_modes_get_budget_and_composed_prompts_vary_the_context(tmp_path):
    from blindspot.captioning import world_vocabulary
    from blindspot.generation.probes import ProbeVerifier
    from blindspot.generation.prompts import PromptComposer

    vocabulary = world_vocabulary(["grass", "water", "sand"], ["red", "blue"], ["small", "large"])
    star = FailureMode(0, "star", [0, 1], 0.9, 0.2, 0.6, mode_id="r0-star-0", captions=[("a photo of a star on grass", 0.6)])
    cross = FailureMode(1, "cross", [2, 3], 0.9, 0.2, 0.5, mode_id="r0-cross-0",
                        captions=[("a photo of a red cross", 0.5)])

    def predict_proba(images):  # the classifier fails on every star and gets every cross right
        return torch.tensor([[0.0, 1.0]]).repeat(len(images), 1)

    remedy = Text2ImageRemedy(NoiseBackend(), {}, output_dir=str(tmp_path), images_per_round=12, batch_size=6,
                              prompts=PromptComposer(vocabulary, strategy="vocabulary", prompts_per_mode=1),
                              verify=ProbeVerifier(n_per_caption=4, captions_per_mode=1, min_error=0.1))
    result = remedy(Round(0, 0, [star, cross]), context(predict_proba=predict_proba, progress=False))
    probes = {p["mode_id"]: p for p in result.stats["probes"]}
    assert probes["r0-star-0"]["error"] == 1.0 and probes["r0-star-0"]["kept"]
    assert probes["r0-cross-0"]["error"] == 0.0 and not probes["r0-cross-0"]["kept"]
    records = read_manifest(tmp_path)
    assert len(records) == 12 and {r["mode_id"] for r in records} == {"r0-star-0"}  # the budget follows the error
    prompts = {r["prompt"] for r in records}
    assert len(prompts) > 3 and all("star" in p and "grass" in p for p in prompts)  # grass kept, context varied
    assert (tmp_path / "round_0" / "probes.json").is_file() and not any("probe" in Path(r["path"]).name for r in records)
