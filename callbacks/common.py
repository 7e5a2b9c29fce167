"""Small helpers the Blindspot callbacks share: gathering across ranks, the classifier head."""

from __future__ import annotations

import torch
from lightning import LightningModule, Trainer


def classifier_head(pl_module: LightningModule) -> torch.nn.Linear:
    """The classifier's last layer (a timm model's `get_classifier()`)."""
    net = getattr(pl_module, "net", None)
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"DFR replaces a linear classifier head, but the model's is {type(head).__name__}: use a "
                        "timm backbone whose get_classifier() is an nn.Linear (e.g. a ResNet)")
    return head


@torch.no_grad()
def install_head(pl_module: LightningModule, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy a new weight and bias into the classifier's last layer."""
    head = classifier_head(pl_module)
    head.weight.copy_(weight.to(head.weight))
    head.bias.copy_(bias.to(head.bias))


def gather_by_index(trainer: Trainer, index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All ranks' per-sample values, ordered by dataset index, padding duplicates (DistributedSampler) removed."""
    if trainer.world_size > 1:
        index = trainer.strategy.all_gather(index).reshape(-1)
        values = tuple(trainer.strategy.all_gather(v).reshape(-1, *v.shape[1:]) for v in values)
    index = index.cpu()
    order = torch.argsort(index, stable=True)
    index = index[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return (index[first], *(v.cpu()[order][first] for v in values))
