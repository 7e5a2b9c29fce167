"""Targeted collection of real data (Singla et al. 2022, "Data-Centric Debugging: mitigating model failures via
targeted data collection"): for each failure mode, take the images of a weakly labelled pool that lie nearest, in
CLIP space, to the mode's members, and add them to training with the mode's class label.

A pool image's score for a mode is its highest cosine similarity to any member (its nearest failure example); a
mode's share of the round's budget follows its score (as for generation); an image is never taken twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from blindspot.generation.rounds import split_budget
from blindspot.modes import FailureMode


@dataclass
class Retrieved:
    """One pool image chosen for a mode."""

    pool_index: int
    mode_id: str
    label: int  # the mode's class
    similarity: float  # cosine to the nearest member


def nearest(pool_emb: torch.Tensor, queries: torch.Tensor, k: int,
            allowed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k allowed pool rows with the highest max-cosine to any query: (indices, similarities), best first."""
    sims = (F.normalize(pool_emb.float(), dim=-1) @ F.normalize(queries.float(), dim=-1).T).max(1).values
    if allowed is not None:
        sims = torch.where(allowed, sims, torch.full_like(sims, -float("inf")))
    k = min(k, int(torch.isfinite(sims).sum()))
    top = torch.topk(sims, k)
    return top.indices, top.values


def select_for_modes(modes: Sequence[FailureMode], query_emb: torch.Tensor, pool_emb: torch.Tensor,
                     pool_labels: torch.Tensor, budget: int, taken: Iterable[int] = (),
                     match_label: bool = True) -> list[Retrieved]:
    """Pool images for every mode (queries: rows of `query_emb` at its members), within budget, none twice."""
    free = torch.ones(len(pool_emb), dtype=torch.bool)
    taken = [int(i) for i in taken]
    if taken:
        free[torch.as_tensor(taken, dtype=torch.long)] = False
    pool_labels = torch.as_tensor(pool_labels).long()
    out: list[Retrieved] = []
    for mode, count in zip(modes, split_budget([m.score for m in modes], budget) if modes else []):
        allowed = free & (pool_labels == mode.class_index) if match_label else free.clone()
        idx, sims = nearest(pool_emb, query_emb[mode.members], count, allowed)
        free[idx] = False
        out += [Retrieved(int(i), mode.mode_id, mode.class_index, float(s)) for i, s in zip(idx, sims)]
    return out
