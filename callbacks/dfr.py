"""LastLayerRetraining: Deep Feature Reweighting (Kirichenko et al. 2023, "Last Layer Re-Training is Sufficient
for Robustness to Spurious Correlations") as a thin callback.

When training ends (on_train_end: after the last epoch, before `trainer.test`, and before the report's
on_fit_end write, so the report sees it), the backbone stays as trained (frozen: only the head is replaced) and
its penultimate features of the validation set are extracted in eval mode; a logistic-regression head is fitted on
group-balanced subsets of them (`blindspot.baselines.dfr.fit_dfr`, C chosen on the other half of validation by
worst-group accuracy) and copied into the classifier's last layer. Groups are the ground truth
(`groups=ground_truth`, the oracle variant) or Blindspot's discovered groups of the newest discovery round
(`groups=discovered`: a validation sample in a failure mode is in that mode's group, the rest in its class's).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from blindspot.baselines.batched import apply_batched
from blindspot.baselines.dfr import fit_dfr, penultimate_features
from blindspot.baselines.groups import groups_from_members

from .common import find_callback
from .discovery import FailureDiscovery, require_discovery

GROUPS = ("ground_truth", "discovered")


class LastLayerRetraining(Callback):
    """After training, refit the classifier head on group-balanced validation features (DFR)."""

    def __init__(self, groups: str = "ground_truth", Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
                 n_subsamples: int = 5, seed: int = 0, batch_size: int = 256, checkpoint: str | None = None):
        if groups not in GROUPS:
            raise ValueError(f"dfr groups={groups!r}: choose one of {GROUPS}")
        if not Cs or any(float(c) <= 0 for c in Cs) or n_subsamples < 1:
            raise ValueError("dfr needs a non-empty Cs grid of positive numbers and n_subsamples >= 1")
        self.groups, self.Cs, self.n_subsamples, self.seed = groups, [float(c) for c in Cs], n_subsamples, seed
        self.batch_size, self.checkpoint = batch_size, checkpoint
        self.result: dict = {}

    @staticmethod
    def head(pl_module: LightningModule) -> torch.nn.Linear:
        """The classifier's last layer (a timm model's `get_classifier()`)."""
        net = getattr(pl_module, "net", None)
        head = net.get_classifier() if hasattr(net, "get_classifier") else None
        if not isinstance(head, torch.nn.Linear):
            raise TypeError(f"DFR replaces a linear classifier head, but the model's is {type(head).__name__}: use a "
                            "timm backbone whose get_classifier() is an nn.Linear (e.g. a ResNet)")
        return head

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.head(pl_module)
        if self.groups == "ground_truth" and not trainer.datamodule.group_names:
            raise ValueError("dfr balances by ground-truth groups and this data has none: use +augment=dfr_discovered")
        if self.groups == "discovered":
            require_discovery(trainer, "dfr groups=discovered", "dfr_discovered")

    def _val_groups(self, trainer: Trainer) -> tuple[torch.Tensor, list[str]]:
        dm = trainer.datamodule
        if self.groups == "ground_truth":
            return torch.as_tensor(dm.val_set.groups).long(), list(dm.group_names)
        discovery = find_callback(trainer, FailureDiscovery)
        if not discovery.rounds:
            rank_zero_warn("dfr groups=discovered: no discovery round ran (see callbacks.failure_discovery.start_epoch)"
                           "; balancing by class only")
        modes = discovery.rounds[-1].modes if discovery.rounds else []
        return groups_from_members(torch.as_tensor(dm.val_set.labels), modes, dm.class_names)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm, head = trainer.datamodule, self.head(pl_module)
        fitted = None
        if trainer.is_global_zero:  # fit once, then broadcast the head
            was_training = pl_module.training
            pl_module.eval()
            features = apply_batched(lambda x: penultimate_features(pl_module.net, pl_module.normalize(
                x.to(pl_module.device))), dm.val_images, range(len(dm.val_set)), self.batch_size)
            pl_module.train(was_training)
            groups, names = self._val_groups(trainer)
            res = fit_dfr(features, torch.as_tensor(dm.val_set.labels), groups, dm.num_classes, self.Cs,
                          self.n_subsamples, self.seed)
            summary = {**res.summary(), "groups_from": self.groups,
                       "group_names": [names[g] for g in torch.unique(groups).tolist()],
                       "head_change": float((res.weight - head.weight.detach().cpu()).norm())}
            fitted = (res.weight, res.bias, summary)
        weight, bias, self.result = trainer.strategy.broadcast(fitted, src=0)
        with torch.no_grad():
            head.weight.copy_(weight.to(head.weight))
            head.bias.copy_(bias.to(head.bias))
        rank_zero_info(f"[dfr] last layer retrained on group-balanced validation features ({self.groups} groups): "
                       f"C={self.result['C']:g}, {self.result['per_group']} per group over {self.result['groups']} "
                       f"groups")
        if self.checkpoint:
            Path(self.checkpoint).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.checkpoint)

    def report_extra(self) -> dict:
        """DFR's facts (chosen C, balanced set) for the report."""
        return {"dfr": dict(self.result)} if self.result else {}

    def state_dict(self) -> dict:
        return {"result": dict(self.result)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.result = dict(state_dict.get("result", {}))
