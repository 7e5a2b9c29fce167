"""Sizing a round's next generation wave from what its earlier waves kept (remedy.target_kept).

A mode's contrast images count only up to `contrast / (1 - contrast)` of its own kept images (they skip the
classifier filter, so many more of them pass). A later wave therefore plans, per mode, only the contrast images its
own images will be able to carry, and is as small as the expected yield allows: from each mode's own and contrast
keep rates so far, the fewest images expected to bring the round to its target (with a safety margin).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .rounds import split_budget

MIN_RATE = 0.05  # a keep rate is never taken below this (a mode with no kept image yet still gets images)
MARGIN = 1.2  # plan for this many times the shortfall (keep rates are estimates from a few images)


@dataclass
class ModeYield:
    """One mode's images so far in the round: own (its class) and contrast, generated and kept."""

    own_generated: int = 0
    own_kept: int = 0
    contrast_generated: int = 0
    contrast_kept: int = 0

    def usable(self, contrast: float) -> int:
        """Kept images that can be injected: own ones, and contrast ones up to their share."""
        return self.own_kept + min(self.contrast_kept, contrast_room(self.own_kept, contrast))


def contrast_room(own_kept: int, contrast: float) -> int:
    """How many contrast images `own_kept` own images carry at a `contrast` share of what is injected."""
    return math.floor(own_kept * contrast / (1 - contrast) + 1e-9) if contrast else 0


def mode_yields(records: Sequence[dict]) -> dict[str, ModeYield]:
    """Per mode id, the round's generated and kept images by role (manifest records)."""
    out: dict[str, ModeYield] = {}
    for r in records:
        y = out.setdefault(r["mode_id"], ModeYield())
        if r.get("role") == "contrast":
            y.contrast_generated += 1
            y.contrast_kept += bool(r["kept"])
        else:
            y.own_generated += 1
            y.own_kept += bool(r["kept"])
    return out


def _rate(kept: int, made: int, fallback: float) -> float:
    return max(kept / made, MIN_RATE) if made else fallback


@dataclass
class WavePlan:
    """The next wave: how many images, and each mode's share of them that are contrast images."""

    count: int
    contrast: dict[str, float]
    expected_gain: float


def plan_next_wave(mode_ids: Sequence[str], scores: Sequence[float], has_contrast: Sequence[bool],
                   records: Sequence[dict], target: int, room: int, contrast: float, min_count: int) -> WavePlan:
    """The smallest wave (at least `min_count`, at most `room`) expected to bring the round's usable images to
    `target`, with each mode's contrast images limited to what its own images will carry."""
    yields = mode_yields(records)
    usable = sum(y.usable(contrast) for y in yields.values())
    if usable >= target or room <= 0:
        return WavePlan(0, {}, 0.0)
    all_own = [(y.own_kept, y.own_generated) for y in yields.values()]
    all_con = [(y.contrast_kept, y.contrast_generated) for y in yields.values()]
    own_fallback = _rate(sum(k for k, _ in all_own), sum(n for _, n in all_own), 0.5)
    con_fallback = _rate(sum(k for k, _ in all_con), sum(n for _, n in all_con), 0.5)
    ratio = contrast / (1 - contrast)  # contrast images one own kept image carries

    def wave(count: int) -> tuple[float, dict[str, float]]:
        gain, shares = 0.0, {}
        for mode_id, n, can in zip(mode_ids, split_budget(scores, count), has_contrast):
            y = yields.get(mode_id, ModeYield())
            r_own = _rate(y.own_kept, y.own_generated, own_fallback)
            r_con = _rate(y.contrast_kept, y.contrast_generated, con_fallback)
            k = 0
            if can and contrast and n:  # contrast images until they match what the own ones will carry
                k = min(n, max(0, math.floor(((y.own_kept + r_own * n) * ratio - y.contrast_kept)
                                             / (r_con + r_own * ratio))))
            own_kept = y.own_kept + r_own * (n - k)
            con_usable = min(y.contrast_kept + r_con * k, own_kept * ratio)
            gain += own_kept + con_usable - y.usable(contrast)
            shares[mode_id] = k / n if n else 0.0
        return gain, shares

    need = MARGIN * (target - usable)
    count = max(1, min(min_count, room))
    while True:
        gain, shares = wave(count)
        if gain >= need or count >= room:
            return WavePlan(count, shares, gain)
        count = min(room, count + max(1, min_count // 4))
