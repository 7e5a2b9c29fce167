"""Just Train Twice (Liu et al. 2021, "Just Train Twice: Improving Group Robustness without Training Group
Information"): an identification model trained with ERM for T epochs marks the training samples it gets wrong
(the error set); a second model, trained from scratch, sees the error set upweighted by λ.

Here the upweighting is a per-sample loss weight λ (the expectation of the paper's λ-fold upsampling, without
changing the epoch length), applied through the datamodule's `set_sample_weights` and `model.loss=weighted`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def error_set(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sorted indices of the samples the identification model gets wrong."""
    preds, labels = torch.as_tensor(preds).long().flatten(), torch.as_tensor(labels).long().flatten()
    if preds.shape != labels.shape:
        raise ValueError(f"preds {tuple(preds.shape)} and labels {tuple(labels.shape)} must have the same length")
    return torch.nonzero(preds != labels).flatten()


def upweight(errors: torch.Tensor | list[int], weight: float) -> dict[int, float]:
    """Loss weight `weight` (λ) for every error-set index (everything else keeps weight 1)."""
    if not math.isfinite(weight) or weight < 1.0:
        raise ValueError(f"JTT upweight λ={weight}: must be a finite number >= 1 (1 = plain ERM)")
    return {int(i): float(weight) for i in torch.as_tensor(errors).flatten().tolist()}


def reinitialize_(module: torch.nn.Module, build: Callable[[], torch.nn.Module], seed: int) -> None:
    """Overwrite a module's parameters and buffers in place with those of a freshly built twin (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build()
    missing, unexpected = module.load_state_dict(fresh.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"the rebuilt network does not match the trained one (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): `build` must make the same architecture")
