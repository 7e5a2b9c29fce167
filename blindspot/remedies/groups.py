"""Discovered-group reweighting as a remedy: group DRO over groups from Blindspot's own discovery, no group
labels (AGRO-style, Paranjape et al. 2023). Every training sample joins a mode's group (inside the mode's
CLIP-space slice) or its class's rest group (`blindspot.baselines.groups.assign_groups`)."""

from __future__ import annotations

import torch

from ..baselines.groups import assign_groups
from .base import RemedyContext, RemedyResult


class DiscoveredGroupsRemedy:
    """After each round, give every training sample a discovered group for the group-DRO loss."""

    name = "discovered_groups"

    def prepare(self, context: RemedyContext) -> RemedyResult:
        """Before training: the classifier's loss is group DRO over discovered groups."""
        if context.hparams.get("loss") != "group_dro" or context.hparams.get("dro_groups") != "discovered":
            raise ValueError("remedy=discovered_groups feeds a group-DRO loss over discovered groups: set "
                             "model.loss=group_dro and model.dro_groups=discovered (+augment=group_dro_discovered does)")
        train = context.train()
        if train is None:
            raise ValueError("remedy=discovered_groups needs the training images (a BlindspotDataModule)")
        # before the first round no sample is in a group (the group-DRO loss is then ERM); a resume restores them
        return RemedyResult(loss_groups=(torch.full((train[0].n,), -1, dtype=torch.long), []))

    def __call__(self, rnd, context: RemedyContext) -> RemedyResult:
        """Embed the training set and assign groups on rank 0; every rank gets the same groups."""
        result = None
        if context.is_main:
            train, train_labels = context.train()
            result = assign_groups(context.embed(train), train_labels, rnd.modes,
                                   context.class_names, context.val_embeddings, context.val_labels)
        groups, names = context.broadcast(result)
        sizes = torch.bincount(groups, minlength=len(names)).tolist()
        return RemedyResult(loss_groups=(groups, names),
                            stats={"generated": 0, "kept": 0, "injected": 0, "groups": dict(zip(names, sizes)),
                                   "in_modes": sum(sizes[len(context.class_names):])})
