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
    """planted_recall: share of planted slices that one of the top-k modes (k = #planted) is mostly made of;
    caption_hit: share whose matching mode's top-1 caption names the planted attribute value. Each slice also
    gets `rank`, the position of the first matching mode among all `modes` (those handed to the remedy), and
    `handed`, whether there is one."""
    k = len(planted)
    modes = list(modes)
    matches = []
    for p in planted:
        members_of = {group_names.index(g) for g in p.get("groups", [p["group"]])}
        rank = None
        for i, m in enumerate(modes):
            inside = sum(int(g) in members_of for g in val_groups[m.members].tolist())
            if m.class_name == p.get("class", m.class_name) and inside >= min_share * max(1, m.support):
                rank = i
                break
        found = modes[rank] if rank is not None and rank < k else None
        hit = bool(found is not None and p["value"].lower() in found.caption.lower())
        matches.append({"group": p["group"], "value": p["value"], "found": found is not None,
                        "mode_id": found.mode_id if found else None, "caption": found.caption if found else None,
                        "caption_hit": hit, "rank": rank, "handed": rank is not None,
                        "handed_caption_hit": rank is not None and p["value"].lower() in modes[rank].caption.lower()})
    return {
        "k": k,
        "planted_recall": sum(m["found"] for m in matches) / k if k else float("nan"),
        "caption_hit": sum(m["caption_hit"] for m in matches) / k if k else float("nan"),
        "handed_recall": sum(m["handed"] for m in matches) / k if k else float("nan"),
        "planted": matches,
    }
