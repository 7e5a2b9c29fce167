"""Counterfactual verification: probe error per caption with a Wilson interval, ranking, dropping, budget split."""

from __future__ import annotations

import json

import pytest
import torch

from blindspot.generation.backends import GenerationOutput
from blindspot.generation.probes import (PROBE_SEED_BASE, ProbeReport, ProbeVerifier, probe_seeds,
                                         wilson_interval)
from blindspot.generation.rounds import plan_round, split_budget
from blindspot.modes import FailureMode


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(0, 16)[0] == 0.0 and wilson_interval(16, 16)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_probe_seeds_never_meet_a_training_seed():
    modes = [FailureMode(k, f"c{k}", [0], 0.5, 0.1, 1.0, mode_id=f"r0-c{k}-0", captions=[("x", 1.0)])
             for k in range(3)]
    training = {it.seed for s in (0, 1, 7, 2**20) for r in range(4) for it in plan_round(modes, 300, r, s, "/tmp")}
    probes = {x for s in (0, 1, 7) for r in range(4) for m in modes for x in probe_seeds(s, r, m.mode_id, "x", 64)}
    assert min(probes) >= PROBE_SEED_BASE > max(training) and not probes & training
    assert probe_seeds(0, 1, "m", "a", 8) == probe_seeds(0, 1, "m", "a", 8) != probe_seeds(0, 1, "m", "b", 8)


CLASSES = ["circle", "triangle", "heart"]


class PromptBackend:
    """A fake generator: channel 0 says whether (prompt, seed) fools the fake classifier, channel 1 the class."""

    def __init__(self, fooling):
        self.fooling, self.calls = fooling, []

    def generate(self, prompts, seeds):
        self.calls.append(list(seeds))
        images = torch.zeros(len(prompts), 3, 8, 8)
        for i, (p, s) in enumerate(zip(prompts, seeds)):
            images[i, 0] = float(self.fooling(p, s))
            images[i, 1] = next(k for k, c in enumerate(CLASSES) if c in p) / 4
        return GenerationOutput(images, list(prompts), list(seeds))


def classifier():
    """Fake predict_proba: a fooling image is read as class 0, any other as the class it shows."""

    def predict_proba(pixels):
        fooled = pixels[:, 0].float().mean((1, 2)) > 127
        shown = (pixels[:, 1, 0, 0].float() / 255 * 4).round().long()
        probs = torch.zeros(len(pixels), 3)
        probs[torch.arange(len(pixels)), shown] = 0.2
        probs[fooled, 0] += 0.8
        probs[~fooled, shown[~fooled]] += 0.8
        return probs

    return predict_proba


def fooling(prompt, seed):
    if "purple" in prompt:
        return seed % 4 != 0      # ~3 in 4 fool the classifier
    if "night" in prompt:
        return seed % 2 == 0      # ~1 in 2
    if "heart" in prompt:
        return seed % 3 == 0      # ~1 in 3
    return False                  # the model gets these right


MODES = [
    FailureMode(1, "triangle", [1, 2, 3], 0.6, 0.2, 2.0, mode_id="r0-triangle-0",
                captions=[("a photo of a triangle on grass", 0.4), ("a photo of a purple triangle", 0.3),
                          ("a photo of a triangle in the night sky", 0.2)]),
    FailureMode(2, "heart", [4, 5], 0.5, 0.1, 3.0, mode_id="r0-heart-0", captions=[("a photo of a small heart", 0.5)]),
    FailureMode(1, "triangle", [6], 0.4, 0.2, 1.0, mode_id="r0-triangle-1", captions=[("a photo of a triangle", 0.1)]),
]


def expected_errors(caption, mode_id, n, seed=0, round_index=2):
    return sum(fooling(caption, s) for s in probe_seeds(seed, round_index, mode_id, caption, n))


def test_captions_and_modes_are_ranked_by_measured_error_and_the_right_ones_dropped():
    backend = PromptBackend(fooling)
    verifier = ProbeVerifier(n_per_caption=16, captions_per_mode=3, min_error=0.1, batch_size=10)
    report = verifier(MODES, backend, classifier(), round_index=2, budget=100)
    assert sum(len(c) for c in backend.calls) == 16 * 5 and max(len(c) for c in backend.calls) == 10
    caps = {(c.mode_id, c.caption): c for c in report.captions}
    for (mode_id, caption), c in caps.items():
        errors = expected_errors(caption, mode_id, 16)
        assert (c.n, c.errors, c.error) == (16, errors, errors / 16)
        assert (c.ci_low, c.ci_high) == wilson_interval(errors, 16) and c.ci_low <= c.error <= c.ci_high
        assert c.kept == (errors / 16 >= 0.1) and (c.reason == "") == c.kept
    grass = caps[("r0-triangle-0", "a photo of a triangle on grass")]
    assert not grass.kept and "probes.min_error" in grass.reason and grass.predicted == {"1": 16}
    # within a mode: highest measured error first, whatever the captioner's score said
    tri = [c.caption for c in report.captions if c.mode_id == "r0-triangle-0"]
    assert tri[0] == "a photo of a purple triangle" and tri[-1] == "a photo of a triangle on grass"
    # modes: kept ones by pooled error of their kept captions; the one the model gets right is dropped
    assert [m.mode_id for m in report.modes] == ["r0-triangle-0", "r0-heart-0", "r0-triangle-1"]
    assert [m.kept for m in report.modes] == [True, True, False]
    t0 = report.modes[0]
    kept = report.kept_captions("r0-triangle-0")
    assert t0.n == 32 and t0.errors == sum(c.errors for c in kept) and t0.captions_kept == 2
    # budget follows measured error: modes, then each mode's captions
    assert {m.mode_id: m.budget for m in report.modes} == dict(
        zip(["r0-triangle-0", "r0-heart-0", "r0-triangle-1"], split_budget([t0.error, report.modes[1].error], 100)
            + [0]))
    assert sum(c.budget for c in kept) == t0.budget and kept[0].budget > kept[1].budget
    assert not any(c.budget for c in report.captions if not c.kept)


def test_verified_modes_carry_measured_error_into_the_plan():
    report = ProbeVerifier(n_per_caption=16)(MODES, PromptBackend(fooling), classifier(), round_index=2)
    verified = report.verified_modes(MODES)
    assert [m.mode_id for m in verified] == ["r0-triangle-0", "r0-heart-0"]
    assert verified[0].captions[0][0] == "a photo of a purple triangle"
    assert verified[0].score == report.modes[0].error and verified[0].extra["discovery_score"] == 2.0
    assert MODES[0].score == 2.0 and len(MODES[0].captions) == 3  # the input modes are untouched
    items = plan_round(verified, 64, 2, 0, "/tmp/x", prompts_per_mode=3)
    per_mode = [sum(i.mode_id == m.mode_id for i in items) for m in verified]
    assert per_mode == split_budget([m.score for m in verified], 64)
    assert not {i.prompt for i in items} & {"a photo of a triangle on grass", "a photo of a triangle"}


def test_the_report_is_json_and_round_trips(tmp_path):
    report = ProbeVerifier(n_per_caption=4, control_template="a photo of a {cls}")(
        MODES, PromptBackend(fooling), classifier(), budget=10, save_dir=tmp_path / "probes")
    d = json.loads(json.dumps(report.to_dict()))
    assert ProbeReport.from_dict(d) == report
    for c in d["captions"]:
        assert {"mode_id", "caption", "n", "errors", "error", "ci_low", "ci_high", "kept"} <= set(c)
    saved = tmp_path / "probes" / "round_0"
    assert ProbeReport.from_dict(json.loads((saved / "probes.json").read_text())) == report
    assert len(list(saved.glob("probe-*.png"))) == 4 * (5 + 3)  # captions + one control per mode
    assert report.modes[0].control["n"] == 4


def test_invalid_probes_are_not_counted_and_controls_can_veto():
    def backend_with_nan(prompts, seeds):
        out = PromptBackend(fooling).generate(prompts, seeds)
        out.images[::4] = float("nan")
        return out

    backend = PromptBackend(fooling)
    backend.generate = backend_with_nan
    report = ProbeVerifier(n_per_caption=8, captions_per_mode=1)(MODES[1:2], backend, classifier())
    assert report.captions[0].n + report.captions[0].invalid == 8 and report.captions[0].invalid == 2
    # rejected by a validity check (e.g. CLIP does not see the class): not counted either
    report = ProbeVerifier(n_per_caption=8)(MODES[1:2], PromptBackend(fooling), classifier(),
                                            valid_fn=lambda x, p, y: torch.zeros(len(x), dtype=torch.bool))
    assert report.captions[0].n == 0 and not report.captions[0].kept and "no valid" in report.captions[0].reason
    # the bare class prompt fools the model as often: the caption names nothing special
    always = PromptBackend(lambda p, s: s % 2 == 0)
    report = ProbeVerifier(n_per_caption=16, captions_per_mode=1, control_template="a photo of a {cls}",
                           min_gap_over_control=0.2)(MODES[1:2], always, classifier())
    assert not report.modes[0].kept and "min_gap_over_control" in report.captions[0].reason


def test_nothing_to_fix_keeps_nothing_unless_asked():
    right = PromptBackend(lambda p, s: False)
    assert not any(m.kept for m in ProbeVerifier(n_per_caption=4)(MODES, right, classifier()).modes)
    report = ProbeVerifier(n_per_caption=4, keep_top_if_none=True)(MODES, right, classifier(), budget=8)
    assert sum(m.kept for m in report.modes) == 1 and report.modes[0].budget == 8
    with pytest.raises(ValueError, match="probes.min_error"):
        ProbeVerifier(min_error=1.5)


def test_probes_run_through_a_real_diffusers_backend(tmp_path):
    from blindspot.generation.backends import DiffusersText2Image
    from tests.tiny_models import make_tiny_sd_pipeline

    backend = DiffusersText2Image(str(make_tiny_sd_pipeline(tmp_path)), num_inference_steps=2, height=16, width=16)
    predict = lambda x: torch.softmax(x.float().mean((2, 3)), dim=1)  # noqa: E731 - a 3-class "classifier"
    report = ProbeVerifier(n_per_caption=3, captions_per_mode=2, min_error=0.0)(MODES[:2], backend, predict)
    assert [c.n for c in report.captions] == [3, 3, 3] and all(0 <= c.error <= 1 for c in report.captions)
    again = ProbeVerifier(n_per_caption=3, captions_per_mode=2, min_error=0.0)(MODES[:2], backend, predict)
    assert again == report  # probes are a pure function of (captions, seeds, model)
