"""Discovered groups, AGRO-style (Paranjape et al. 2023, "AGRO: Adversarial Discovery of Error-prone Groups for
Robust Optimization"): group labels made from Blindspot's own failure modes instead of ground-truth annotations.

Every class gets a "rest" group (index = class index) and every failure mode a group of its own (indices after
the classes, in mode order). Validation samples join a mode's group by membership; other samples (e.g. the
training set) join it when they belong to the mode's class and their CLIP embedding projects onto the mode's
failure direction at least as far as the slice's cut on the validation set (the support-th largest projection
among the class's validation samples). Modes without a direction (clusters) use the unit vector from their
class's validation centroid to their members' centroid. A sample in several modes joins the first (best-ranked).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from blindspot.modes import FailureMode


def group_names(modes: Sequence[FailureMode], class_names: Sequence[str]) -> list[str]:
    """'<class>|rest' for every class, then '<class>|<mode id>' for every mode (the group index order)."""
    return [f"{c}|rest" for c in class_names] + [f"{m.class_name}|{m.mode_id or i}" for i, m in enumerate(modes)]


def groups_from_members(labels: torch.Tensor, modes: Sequence[FailureMode],
                        class_names: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Group of every validation sample: its mode's group when it is a member, else its class's rest group."""
    groups = torch.as_tensor(labels).long().clone()
    taken = torch.zeros(len(groups), dtype=torch.bool)
    for j, m in enumerate(modes):
        members = torch.as_tensor(m.members, dtype=torch.long)
        members = members[~taken[members]]
        groups[members] = len(class_names) + j
        taken[members] = True
    return groups, group_names(modes, class_names)


def mode_direction(mode: FailureMode, ref_embeddings: torch.Tensor,
                   ref_labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """A mode's unit direction in CLIP space and its slice cut (projection threshold) on the reference set."""
    x = F.normalize(ref_embeddings.float(), dim=-1)
    own = torch.nonzero(torch.as_tensor(ref_labels).long() == mode.class_index).flatten()
    if not mode.members or len(own) == 0:
        raise ValueError(f"mode {mode.mode_id!r} has no members or its class has no reference samples")
    if mode.direction is not None:
        d = torch.tensor(mode.direction, dtype=torch.float32)
    else:
        d = x[mode.members].mean(0) - x[own].mean(0)
    d = F.normalize(d, dim=0)
    proj = (x[own] @ d).sort(descending=True).values
    return d, float(proj[min(len(mode.members), len(proj)) - 1])


def assign_groups(embeddings: torch.Tensor, labels: torch.Tensor, modes: Sequence[FailureMode],
                  class_names: Sequence[str], ref_embeddings: torch.Tensor,
                  ref_labels: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Group of every sample (e.g. the training set) from modes found on the reference (validation) set."""
    x = F.normalize(embeddings.float(), dim=-1)
    labels = torch.as_tensor(labels).long()
    if len(x) != len(labels):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    groups = labels.clone()
    taken = torch.zeros(len(groups), dtype=torch.bool)
    for j, m in enumerate(modes):
        d, cut = mode_direction(m, ref_embeddings, ref_labels)
        inside = (labels == m.class_index) & (x @ d >= cut) & ~taken
        groups[inside] = len(class_names) + j
        taken |= inside
    return groups, group_names(modes, class_names)
