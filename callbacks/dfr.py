"""LastLayerRetraining: Deep Feature Reweighting (Kirichenko et al. 2023, "Last Layer Re-Training is Sufficient
for Robustness to Spurious Correlations") over the data's ground-truth groups (the oracle variant) as a thin
callback. The variant over Blindspot's discovered groups is a remedy of the failure loop (`remedy=dfr`,
+augment=dfr_discovered).

At the end of training (the last epoch's validation, so its facts reach the report; or `on_train_end` when the
last epoch has no validation), the backbone stays as trained and only the head is replaced: its penultimate
features of the validation set are extracted in eval mode, and a logistic-regression head is fitted on
group-balanced subsets of them (C chosen on the other half of validation by worst-group accuracy).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from blindspot.baselines.batched import apply_batched
from blindspot.baselines.dfr import fit_dfr, penultimate_features

from .common import classifier_head, install_head


class LastLayerRetraining(Callback):
    """After training, refit the classifier head on group-balanced validation features (DFR, oracle groups)."""

    def __init__(self, Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), n_subsamples: int = 5, seed: int = 0,
                 batch_size: int = 256, checkpoint: str | None = None):
        if not Cs or any(float(c) <= 0 for c in Cs) or n_subsamples < 1:
            raise ValueError("dfr needs a non-empty Cs grid of positive numbers and n_subsamples >= 1")
        self.Cs, self.n_subsamples, self.seed = [float(c) for c in Cs], n_subsamples, seed
        self.batch_size, self.checkpoint = batch_size, checkpoint
        self.result: dict = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        classifier_head(pl_module)
        if not trainer.datamodule.group_names:
            raise ValueError("dfr balances by ground-truth groups and this data has none: use +augment=dfr_discovered")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 == trainer.max_epochs
        if trainer.sanity_checking or not last or self.result:  # runs without an epoch count: at on_train_end
            return
        self.retrain(trainer, pl_module)
        pl_module.log_dict({f"dfr/{k}": float(self.result[k]) for k in ("C", "per_group", "groups", "head_change")})

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.result:  # the last epoch had no validation
            self.retrain(trainer, pl_module)

    def retrain(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fit the head on rank 0, broadcast it, install it on every rank."""
        dm, head = trainer.datamodule, classifier_head(pl_module)
        fitted = None
        if trainer.is_global_zero:
            was_training = pl_module.training
            pl_module.eval()
            features = apply_batched(lambda x: penultimate_features(pl_module.net, pl_module.normalize(
                x.to(pl_module.device))), dm.val_images, range(len(dm.val_set)), self.batch_size)
            pl_module.train(was_training)
            groups = torch.as_tensor(dm.val_set.groups).long()
            res = fit_dfr(features, torch.as_tensor(dm.val_set.labels), groups, dm.num_classes, self.Cs,
                          self.n_subsamples, self.seed)
            summary = {**res.summary(), "groups_from": "ground_truth",
                       "head_change": float((res.weight - head.weight.detach().cpu()).norm())}
            fitted = (res.weight, res.bias, summary)
        weight, bias, self.result = trainer.strategy.broadcast(fitted, src=0)
        install_head(pl_module, weight, bias)
        rank_zero_info(f"[dfr] last layer retrained on group-balanced validation features (ground-truth groups): "
                       f"C={self.result['C']:g}, {self.result['per_group']} per group over {self.result['groups']} "
                       f"groups")
        if self.checkpoint:
            Path(self.checkpoint).parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(self.checkpoint)

    def state_dict(self) -> dict:
        return {"result": dict(self.result)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.result = dict(state_dict.get("result", {}))
