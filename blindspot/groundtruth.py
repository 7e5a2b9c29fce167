"""Score discovered failure modes against planted ground truth (evaluation only, never used for training)."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch

from .modes import FailureMode


def majority_group(mode: FailureMode, val_groups: torch.Tensor, group_names: Sequence[str]) -> tuple[str | None, float]:
    """The ground-truth group most of a mode's members belong to, and that share."""
    groups = [int(g) for g in val_groups[mode.members].tolist() if g >= 0]
    if not groups:
        return None, 0.0
    g, n = Counter(groups).most_common(1)[0]
    return group_names[g], n / len(mode.members)


def score_discovery(modes: Sequence[FailureMode], planted: Sequence[dict], val_groups: torch.Tensor,
                    group_names: Sequence[str], min_share: float = 0.5) -> dict:
    """planted_recall: share of planted slices that a top-k mode (k = #planted) is mostly made of;
    caption_hit: share whose matching mode's top-1 caption names the planted attribute value."""
    k = len(planted)
    top = list(modes)[:k]
    matches = []
    for p in planted:
        found = None
        for m in top:
            name, share = majority_group(m, val_groups, group_names)
            if name == p["group"] and share >= min_share:
                found = m
                break
        hit = bool(found is not None and p["value"].lower() in found.caption.lower())
        matches.append({"group": p["group"], "value": p["value"], "found": found is not None,
                        "mode_id": found.mode_id if found else None, "caption": found.caption if found else None,
                        "caption_hit": hit})
    return {
        "k": k,
        "planted_recall": sum(m["found"] for m in matches) / k if k else float("nan"),
        "caption_hit": sum(m["caption_hit"] for m in matches) / k if k else float("nan"),
        "planted": matches,
    }
