"""Counterfactual verification before the budget is spent: a caption is a hypothesis about where the model fails.

For each mode's candidate captions a small probe set is generated (seeds disjoint from every training image),
the current classifier's error on it is measured with a 95% Wilson interval, captions and modes are ranked by
that error, those the model already gets right are dropped, and the round's budget is split by measured error.
Probe images never enter training: nothing here writes a manifest record; `save_dir` (optional) keeps them for
a person to look at, in a folder of their own.

Sharded use (DDP): `plan` on every rank, generate and classify `items[rank::world_size]`, gather the
probabilities (and validity) in plan order, then `score` on the whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..images import save_png, to_uint8
from ..metrics import wilson_interval  # errors / n with a 95% interval (re-exported)
from ..modes import FailureMode
from .backends import Text2ImageBackend
from .prompts import allocate

log = logging.getLogger(__name__)

# rounds.plan_round takes every training seed modulo 2**31 - 1: probe seeds live in [2**31, 2**32) and never meet one
PROBE_SEED_BASE = 2**31

PredictProba = Callable[[torch.Tensor], torch.Tensor]  # uint8 [n, 3, h, w] -> class probabilities [n, k]
ValidFn = Callable[[torch.Tensor, list[str], torch.Tensor], torch.Tensor]  # (images, prompts, labels) -> bool [n]
PromptFn = Callable[[FailureMode, str, int], list[str]]  # (mode, caption, n) -> n prompts




def probe_seeds(seed: int, round_index: int, mode_id: str, caption: str, n: int) -> list[int]:
    """n seeds for one caption's probes, a pure function of its inputs, all >= PROBE_SEED_BASE."""
    digest = hashlib.sha256(f"{seed}:{round_index}:{mode_id}:{caption}".encode()).digest()
    start = int.from_bytes(digest[:4], "big")
    return [PROBE_SEED_BASE + (start + k) % PROBE_SEED_BASE for k in range(n)]


@dataclass
class ProbeItem:
    """One probe image to make: which mode and caption it tests, its prompt, seed and true label."""

    mode_id: str
    label: int
    caption: str
    prompt: str
    seed: int
    control: bool = False  # a bare class prompt (the class's error on generated images, for comparison)


@dataclass
class CaptionProbe:
    """The measured error of the current classifier on one caption's probes, and whether it keeps budget."""

    mode_id: str
    caption: str
    n: int  # probes scored
    errors: int
    error: float
    ci_low: float
    ci_high: float
    kept: bool
    class_index: int = -1
    caption_score: float = 0.0  # the captioner's score (the hypothesis' prior rank)
    invalid: int = 0  # probes not scored: non-finite, or rejected by valid_fn
    target_prob: float | None = None  # mean probability of the true class
    predicted: dict[str, int] = field(default_factory=dict)  # class index -> how many probes were predicted so
    reason: str = ""  # why it was dropped
    budget: int = 0  # images of the round's budget it gets


@dataclass
class ModeProbe:
    """A mode's measured error, pooled over its kept captions (over all when none is kept)."""

    mode_id: str
    class_name: str
    n: int
    errors: int
    error: float
    ci_low: float
    ci_high: float
    kept: bool
    captions_kept: int = 0
    control: dict | None = None  # {n, errors, error, ci_low, ci_high} of the bare class prompt
    budget: int = 0


@dataclass
class ProbeReport:
    """Every caption's and mode's probe result, ranked by measured error (highest first)."""

    captions: list[CaptionProbe]
    modes: list[ModeProbe]
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"captions": [asdict(c) for c in self.captions], "modes": [asdict(m) for m in self.modes],
                "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeReport":
        """Inverse of `to_dict`."""
        return cls([CaptionProbe(**c) for c in d.get("captions", [])], [ModeProbe(**m) for m in d.get("modes", [])],
                   dict(d.get("settings", {})))

    def kept_captions(self, mode_id: str) -> list[CaptionProbe]:
        """A mode's kept captions, highest measured error first."""
        return [c for c in self.captions if c.mode_id == mode_id and c.kept]

    def allocate(self, budget: int, min_per_mode: int = 1) -> dict[str, int]:
        """Split a round's image budget over kept modes by measured error, and each mode's over its kept captions.

        Fills `budget` on modes and captions; returns mode_id -> images.
        """
        kept = [m for m in self.modes if m.kept]
        for m in self.modes:
            m.budget = 0
        for c in self.captions:
            c.budget = 0
        for m, n in zip(kept, allocate([m.error for m in kept], budget, min_per_mode)):
            m.budget = n
            caps = self.kept_captions(m.mode_id)
            for c, k in zip(caps, allocate([c.error for c in caps], n)):
                c.budget = k
        return {m.mode_id: m.budget for m in kept}

    def verified_modes(self, modes: Sequence[FailureMode]) -> list[FailureMode]:
        """Copies of the kept modes, ranked by measured error: captions = kept ones scored by their error, score =
        the mode's error (so `rounds.plan_round` with caption_weighting=score splits the budget by it)."""
        by_id = {m.mode_id: m for m in modes}
        out = []
        for mp in self.modes:
            if not mp.kept or mp.mode_id not in by_id:
                continue
            mode = by_id[mp.mode_id]
            probe = {k: getattr(mp, k) for k in ("n", "errors", "error", "ci_low", "ci_high")}
            out.append(replace(mode, captions=[(c.caption, c.error) for c in self.kept_captions(mp.mode_id)],
                               score=mp.error, extra={**mode.extra, "discovery_score": mode.score, "probe": probe}))
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, path)


def _rate(errors: int, n: int) -> dict:
    lo, hi = wilson_interval(errors, n)
    return {"n": n, "errors": errors, "error": errors / n if n else 0.0, "ci_low": lo, "ci_high": hi}


class ProbeVerifier:
    """Measures the classifier's error on probe images of each mode's captions and decides which keep budget.

    A caption is dropped when its measured error is below `min_error`, or its 95% upper bound is below
    `drop_upper_below` (the model surely gets it right), or (with `control_template`) its error exceeds the
    class's error on bare class prompts by less than `min_gap_over_control`. A mode is kept while one of
    its captions is; with `keep_top_if_none`, the mode with the highest measured error is kept when none is.
    """

    def __init__(self, n_per_caption: int = 16, captions_per_mode: int = 3, min_error: float = 0.1,
                 drop_upper_below: float = 0.0, control_template: str | None = None,
                 min_gap_over_control: float = 0.0, keep_top_if_none: bool = False,
                 prompt_template: str = "{caption}", batch_size: int = 64, seed: int = 0):
        if n_per_caption < 1 or captions_per_mode < 1:
            raise ValueError(f"probes.n_per_caption={n_per_caption} and probes.captions_per_mode={captions_per_mode} "
                             "must be >= 1")
        for key, value in (("min_error", min_error), ("drop_upper_below", drop_upper_below)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"probes.{key}={value}: must be in [0, 1]")
        if control_template is not None and "{cls}" not in control_template:
            raise ValueError(f"probes.control_template={control_template!r} needs {{cls}}")
        if "{caption}" not in prompt_template:
            raise ValueError(f"probes.prompt_template={prompt_template!r} needs {{caption}}")
        self.n, self.captions_per_mode, self.min_error = n_per_caption, captions_per_mode, min_error
        self.drop_upper_below, self.control_template = drop_upper_below, control_template
        self.min_gap_over_control, self.keep_top_if_none = min_gap_over_control, keep_top_if_none
        self.prompt_template, self.batch_size, self.seed = prompt_template, batch_size, seed

    def settings(self) -> dict:
        """The knobs, for the report."""
        return {"n_per_caption": self.n, "captions_per_mode": self.captions_per_mode, "min_error": self.min_error,
                "drop_upper_below": self.drop_upper_below, "control_template": self.control_template,
                "min_gap_over_control": self.min_gap_over_control, "keep_top_if_none": self.keep_top_if_none}

    def candidate_captions(self, mode: FailureMode) -> list[tuple[str, float]]:
        """The captions of a mode that are probed (its top `captions_per_mode`, or the class name)."""
        return mode.captions[: self.captions_per_mode] or [(mode.class_name, 1.0)]

    def plan(self, modes: Sequence[FailureMode], round_index: int = 0,
             prompt_fn: PromptFn | None = None) -> list[ProbeItem]:
        """Every probe image of a round, in a fixed order (`prompt_fn` may vary the prompts of a caption)."""
        items = []
        for mode in modes:
            tests = [(c, False) for c, _ in self.candidate_captions(mode)]
            if self.control_template is not None:
                tests.append((self.control_template.format(cls=mode.class_name), True))
            for caption, control in tests:
                prompts = [caption] * self.n if control or prompt_fn is None else list(prompt_fn(mode, caption, self.n))
                if len(prompts) != self.n:
                    raise ValueError(f"probe prompt_fn gave {len(prompts)} prompts for {caption!r}, {self.n} asked")
                seeds = probe_seeds(self.seed, round_index, mode.mode_id, caption, self.n)
                items += [ProbeItem(mode.mode_id, mode.class_index, caption,
                                    self.prompt_template.format(caption=p, cls=mode.class_name), s, control)
                          for p, s in zip(prompts, seeds)]
        return items

    def score(self, modes: Sequence[FailureMode], items: Sequence[ProbeItem], probs: torch.Tensor,
              valid: torch.Tensor | None = None) -> ProbeReport:
        """Captions' and modes' errors from the probes' class probabilities (and which probes count)."""
        if len(probs) != len(items):
            raise ValueError(f"{len(probs)} probability rows for {len(items)} probe items")
        valid = torch.ones(len(items), dtype=torch.bool) if valid is None else valid.bool().cpu()
        probs = probs.float().cpu()
        labels = torch.tensor([it.label for it in items], dtype=torch.long)
        wrong = probs.argmax(1) != labels if len(items) else torch.zeros(0, dtype=torch.bool)
        target = probs.gather(1, labels.view(-1, 1)).flatten() if len(items) else torch.zeros(0)
        groups: dict[tuple[str, str, bool], list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault((it.mode_id, it.caption, it.control), []).append(i)
        captions, mode_reports = [], []
        for mode in modes:
            control = None
            if self.control_template is not None:
                idx = [i for i in groups.get((mode.mode_id, self.control_template.format(cls=mode.class_name), True),
                                             []) if valid[i]]
                control = _rate(int(wrong[idx].sum()), len(idx))
            mine = []
            for caption, caption_score in self.candidate_captions(mode):
                all_idx = groups.get((mode.mode_id, caption, False), [])
                idx = [i for i in all_idx if valid[i]]
                r = _rate(int(wrong[idx].sum()), len(idx))
                predicted = torch.bincount(probs[idx].argmax(1), minlength=0).tolist() if idx else []
                reason = self._drop_reason(r, control)
                mine.append(CaptionProbe(
                    mode.mode_id, caption, r["n"], r["errors"], r["error"], r["ci_low"], r["ci_high"], not reason,
                    mode.class_index, float(caption_score), len(all_idx) - len(idx),
                    float(target[idx].mean()) if idx else None,
                    {str(k): v for k, v in enumerate(predicted) if v}, reason))
            mine.sort(key=lambda c: (-c.error, -c.ci_high, -c.caption_score))
            captions += mine
            kept = [c for c in mine if c.kept]
            pool = kept or mine
            r = _rate(sum(c.errors for c in pool), sum(c.n for c in pool))
            mode_reports.append(ModeProbe(mode.mode_id, mode.class_name, r["n"], r["errors"], r["error"], r["ci_low"],
                                          r["ci_high"], bool(kept), len(kept), control))
        mode_reports.sort(key=lambda m: (not m.kept, -m.error, -m.ci_high))
        if self.keep_top_if_none and mode_reports and not any(m.kept for m in mode_reports):
            top = mode_reports[0]
            top.kept, top.captions_kept = True, 1
            best = next(c for c in captions if c.mode_id == top.mode_id)
            best.kept, best.reason = True, ""
            for key in ("n", "errors", "error", "ci_low", "ci_high"):
                setattr(top, key, getattr(best, key))
            log.warning("probes: the model gets every caption right; keeping the highest-error one (%r, %.0f%%) "
                        "as probes.keep_top_if_none asks", best.caption, 100 * best.error)
        order = {m.mode_id: k for k, m in enumerate(mode_reports)}
        captions.sort(key=lambda c: order[c.mode_id])  # stable: captions stay ranked within their mode
        return ProbeReport(captions, mode_reports, self.settings())

    def _drop_reason(self, r: dict, control: dict | None) -> str:
        if r["n"] == 0:
            return "no valid probe image"
        if r["error"] < self.min_error:
            return f"error {r['error']:.2f} < probes.min_error={self.min_error}"
        if r["ci_high"] < self.drop_upper_below:
            return f"95% upper bound {r['ci_high']:.2f} < probes.drop_upper_below={self.drop_upper_below}"
        if control is not None and control["n"] and r["error"] - control["error"] < self.min_gap_over_control:
            return (f"error {r['error']:.2f} exceeds the bare class prompt's {control['error']:.2f} by less than "
                    f"probes.min_gap_over_control={self.min_gap_over_control}")
        return ""

    def __call__(self, modes: Sequence[FailureMode], backend: Text2ImageBackend, predict_proba: PredictProba,
                 round_index: int = 0, budget: int | None = None, prompt_fn: PromptFn | None = None,
                 valid_fn: ValidFn | None = None, save_dir: str | os.PathLike | None = None) -> ProbeReport:
        """Generate and classify every probe of a round (one process), score them, and split `budget` if given."""
        items = self.plan(modes, round_index, prompt_fn)
        probs, valid = [], []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            images = backend.generate([it.prompt for it in batch], [it.seed for it in batch]).images
            finite = torch.isfinite(images).flatten(1).all(1)
            pixels = to_uint8(images)
            probs.append(predict_proba(pixels).float().cpu())
            ok = finite
            if valid_fn is not None:
                ok = ok & valid_fn(torch.nan_to_num(images, nan=0.0).clamp(0, 1), [it.prompt for it in batch],
                                   torch.tensor([it.label for it in batch])).bool().cpu()
            valid.append(ok)
            if save_dir is not None:
                folder = Path(save_dir) / f"round_{round_index}"
                folder.mkdir(parents=True, exist_ok=True)
                for j, it in enumerate(batch):
                    save_png(pixels[j], folder / f"probe-{start + j:05d}-{it.mode_id}-{it.seed}.png")
        report = self.score(modes, items, torch.cat(probs) if probs else torch.zeros(0, 1),
                            torch.cat(valid) if valid else None)
        if budget is not None:
            report.allocate(budget)
        if save_dir is not None:
            report.save(Path(save_dir) / f"round_{round_index}" / "probes.json")
        for c in report.captions:
            log.info("probe %s %r: error %.0f%% [%.0f, %.0f] on %d images%s", c.mode_id, c.caption, 100 * c.error,
                     100 * c.ci_low, 100 * c.ci_high, c.n, "" if c.kept else f" - dropped ({c.reason})")
        return report
