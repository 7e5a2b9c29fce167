"""A timm-backbone image classifier with ERM / weighted / group-DRO losses and per-group metrics."""

from __future__ import annotations

import inspect
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from blindspot.metrics import GroupAccuracy, worst_group

from .backbones import create_backbone, small_image_stem

log = logging.getLogger(__name__)

LOSSES = ("erm", "weighted", "group_dro")
DRO_GROUPS = ("ground_truth", "discovered")


class ImageClassifier(LightningModule):
    """Classifies uint8 images; logs accuracy, per-class, per-group and worst-group accuracy per split."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: Sequence[str] = (),
        group_names: Sequence[str] = (),
        pretrained: bool = False,
        pretrained_path: str | None = None,
        backbone_kwargs: dict | None = None,
        loss: str = "erm",
        dro_step_size: float = 0.01,
        dro_groups: str = "ground_truth",
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        label_smoothing: float = 0.0,
        stem_stride: int | None = None,
        channels_last: bool = False,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} (model.loss)")
        if dro_groups not in DRO_GROUPS:
            raise ValueError(f"unknown model.dro_groups {dro_groups!r}; choose one of {DRO_GROUPS}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"model.scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
        if loss == "group_dro" and dro_groups == "ground_truth" and not group_names:
            raise ValueError("model.loss=group_dro needs ground-truth groups and this data has none: use data with "
                             "group labels, or groups from discovery (+augment=group_dro_discovered)")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = self.build_net()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.class_names, self.group_names = list(class_names), list(group_names)
        n_groups = max(1, len(self.group_names))
        self.register_buffer("dro_q", torch.full((n_groups,), 1.0 / n_groups))  # group DRO weights (checkpointed)
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_metrics", torch.nn.ModuleDict({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "class_acc": MulticlassAccuracy(num_classes, average=None),
                "group_acc": GroupAccuracy(n_groups),
            }))
        self.last_results: dict[str, dict] = {}

    # model -------------------------------------------------------------------------------------
    def build_net(self) -> torch.nn.Module:
        """A freshly initialised network like `net` (same backbone, weights source and head; e.g. for JTT)."""
        hp = self.hparams
        net = create_backbone(hp.backbone, hp.num_classes, hp.pretrained, hp.pretrained_path,
                              dict(hp.backbone_kwargs or {}))
        net = net if hp.get("stem_stride") is None else small_image_stem(net, hp.stem_stride)
        return net.to(memory_format=torch.channels_last) if hp.get("channels_last") else net

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) images -> the backbone's input."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.get("channels_last") else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [n, num_classes] for uint8 images [n, 3, h, w]."""
        return self.net(self.normalize(images))

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for uint8 images, in eval mode, batched."""
        was_training = self.training
        self.eval()
        out = [F.softmax(self(images[i : i + batch_size].to(self.device)), -1).cpu()
               for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.hparams.num_classes)

    # losses ------------------------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """ERM, per-sample weighted, or online group DRO (Sagawa et al. 2020) over the batch's groups."""
        per_sample = F.cross_entropy(logits, batch["label"], reduction="none",
                                     label_smoothing=self.hparams.label_smoothing)
        kind = self.hparams.loss
        if kind == "erm":
            return per_sample.mean()
        if kind == "weighted":
            w = batch["weight"].to(per_sample.dtype)
            return (w * per_sample).sum() / w.sum().clamp(min=1e-8)
        if self.hparams.dro_groups == "discovered" and "loss_group" not in batch:
            raise RuntimeError("model.dro_groups=discovered needs batches with 'loss_group': add the DiscoveredGroups "
                               "callback (+augment=group_dro_discovered)")
        groups = batch["loss_group"] if self.hparams.dro_groups == "discovered" else batch["group"]
        known = groups >= 0
        n = len(self.dro_q)
        sums = torch.zeros(n, device=logits.device).index_add(0, groups[known], per_sample[known])
        counts = torch.bincount(groups[known], minlength=n).float()
        group_loss = sums / counts.clamp(min=1)
        with torch.no_grad():
            q = self.dro_q * torch.exp(self.hparams.dro_step_size * group_loss.detach() * (counts > 0))
            self.dro_q.copy_(q / q.sum())
        dro = (self.dro_q * group_loss).sum()
        unknown = per_sample[~known]  # e.g. injected samples without a group: plain ERM term
        return dro + (unknown.mean() if len(unknown) else 0.0)

    def reset_group_weights(self, num_groups: int) -> None:
        """Restart the group-DRO weights, uniform over `num_groups` (new discovered groups)."""
        n = max(1, num_groups)
        self.dro_q.resize_(n).fill_(1.0 / n)  # in place: the same buffer object (DDP keeps references to buffers)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        q = checkpoint.get("state_dict", {}).get("dro_q")
        if q is not None and q.shape != self.dro_q.shape:  # discovered groups: the saved run had another count
            self.reset_group_weights(len(q))

    # steps -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.compute_loss(logits, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}, sample indices {batch['index'][:8].tolist()}...): lower model.optimizer.lr, "
                "or check the data of that batch")
        self._update("train", logits, batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step("test", batch)

    def _eval_step(self, split: str, batch: dict) -> dict:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self._update(split, logits, batch)
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        probs = F.softmax(logits.float(), -1)
        return {"probs": probs.detach(), "preds": probs.argmax(-1), "index": batch["index"], "label": batch["label"]}

    def _update(self, split: str, logits: torch.Tensor, batch: dict) -> None:
        preds = logits.argmax(-1)
        m = getattr(self, f"{split}_metrics")
        m["acc"].update(preds, batch["label"])
        m["class_acc"].update(preds, batch["label"])
        m["group_acc"].update(preds, batch["label"], batch["group"])

    def _log_epoch(self, split: str) -> None:
        m = getattr(self, f"{split}_metrics")
        acc, per_class, per_group = m["acc"].compute(), m["class_acc"].compute(), m["group_acc"].compute()
        results = {"acc": float(acc), "per_class": dict(zip(self.class_names, per_class.tolist()))}
        values = {}
        for name, a in results["per_class"].items():
            values[f"{split}/acc_class/{name}"] = a
        results["worst_class_acc"] = worst_group(per_class)
        values[f"{split}/worst_class_acc"] = results["worst_class_acc"]
        if self.group_names:
            results["per_group"] = dict(zip(self.group_names, per_group.tolist()))
            results["worst_group_acc"] = worst_group(per_group)
            values[f"{split}/mean_group_acc"] = float(torch.nanmean(per_group))
            for name, a in results["per_group"].items():
                if a == a:  # skip empty groups (NaN)
                    values[f"{split}/acc_group/{name}"] = a
        # without group labels every class is its own group: worst_group_acc is then the worst class
        values[f"{split}/worst_group_acc"] = results.get("worst_group_acc", results["worst_class_acc"])
        self.log_dict(values, prog_bar=False)
        self.log(f"{split}/acc", acc, prog_bar=True)
        self.last_results[split] = results
        for metric in m.values():
            metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        interval = self.hparams.get("scheduler_interval", "epoch")
        extra = {"total_steps": self.remaining_steps()} if takes_total_steps(self.scheduler_factory) else {}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt, **extra),
                                                   "interval": interval}}

    def remaining_steps(self) -> int:
        """Optimiser steps left in this fit (a scheduler rebuilt mid-run, e.g. by JTT, spans only the rest)."""
        trainer = self.trainer
        per_epoch = max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs))
        return per_epoch * max(1, trainer.max_epochs - trainer.current_epoch)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step the scheduler; a finished fixed-length schedule holds its last rate (injected data lengthens epochs)."""
        total = getattr(scheduler, "total_steps", None)
        if total is not None and scheduler.last_epoch >= total - 1:
            return
        scheduler.step() if metric is None else scheduler.step(metric)


def takes_total_steps(factory: Callable) -> bool:
    """True for schedulers sized in optimiser steps (e.g. OneCycleLR), which get this fit's step count."""
    func = getattr(factory, "func", factory)
    return "total_steps" in inspect.signature(func).parameters and "total_steps" not in getattr(factory, "keywords", {})
