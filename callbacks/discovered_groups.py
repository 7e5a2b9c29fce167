"""DiscoveredGroups: group DRO over groups from Blindspot's own discovery, no group labels (AGRO-style, Paranjape
et al. 2023, "AGRO: Adversarial Discovery of Error-prone Groups for Robust Optimization"), as a thin callback.

Until the first discovery round every train sample is in no group (the group-DRO loss is then plain ERM). After a
round (FailureDiscovery's `pending`), the training set is embedded with CLIP (cached by its fingerprint), every
sample is assigned to a mode's group or its class's rest group (`blindspot.baselines.groups.assign_groups`), the
datamodule hands these to batches as 'loss_group', and the module's group-DRO weights restart over them. The groups
live in the datamodule's `state_dict` and the weights in the module's, so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from blindspot.baselines.groups import assign_groups
from blindspot.embedding import embed_dataset

from .discovery import require_discovery, take_pending_round


class DiscoveredGroups(Callback):
    """After each discovery round, give every training sample a discovered group for the group-DRO loss."""

    def __init__(self, cache_dir: str | None = None, progress: bool = True):
        self.cache_dir, self.progress = cache_dir, progress
        self.rounds: dict[int, dict] = {}  # round index -> {group name: train samples}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require_discovery(trainer, "DiscoveredGroups", "group_dro_discovered")
        hp = pl_module.hparams
        if getattr(hp, "loss", None) != "group_dro" or getattr(hp, "dro_groups", None) != "discovered":
            raise ValueError("DiscoveredGroups feeds a group-DRO loss over discovered groups: set model.loss=group_dro "
                             "and model.dro_groups=discovered (+augment=group_dro_discovered does)")
        dm = trainer.datamodule
        if dm.loss_groups is None:  # before the first round: no sample is in a group (ERM); a resume restores them
            dm.set_loss_groups(torch.full((len(dm.train_set),), -1, dtype=torch.long), [])

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        discovery, rnd = take_pending_round(trainer)
        if rnd is None:
            return
        dm = trainer.datamodule
        result = None
        if trainer.is_global_zero:  # embed and assign once, then broadcast
            train_emb = embed_dataset(discovery.clip, len(dm.train_set), dm.train_images, dm.train_fingerprint(),
                                      self.cache_dir, progress=self.progress)
            val_labels = torch.as_tensor(dm.val_set.labels)
            result = assign_groups(train_emb, torch.as_tensor(dm.train_set.labels), rnd.modes, dm.class_names,
                                   discovery.embeddings(trainer), val_labels)
        groups, names = trainer.strategy.broadcast(result, src=0)
        dm.set_loss_groups(groups, names)
        pl_module.reset_group_weights(len(names))
        sizes = torch.bincount(groups, minlength=len(names)).tolist()
        self.rounds[rnd.index] = dict(zip(names, sizes))
        in_modes = sum(sizes[len(dm.class_names):])
        rank_zero_info(f"[blindspot] round {rnd.index}: group DRO over {len(names)} discovered groups "
                       f"({len(rnd.modes)} failure modes holding {in_modes} training samples)")

    def report_extra(self) -> dict:
        """Discovered group sizes per round, for the report."""
        return {"discovered_groups": {str(k): v for k, v in self.rounds.items()}} if self.rounds else {}

    def state_dict(self) -> dict:
        return {"rounds": {str(k): v for k, v in self.rounds.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rounds = {int(k): dict(v) for k, v in state_dict.get("rounds", {}).items()}
