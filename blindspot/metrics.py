"""Per-group accuracy as a torchmetrics Metric (summed across DDP ranks), and the summaries built from it."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class GroupAccuracy(Metric):
    """Accuracy within each group; `compute` returns a [num_groups] tensor (NaN for empty groups)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_groups: int, **kwargs):
        super().__init__(**kwargs)
        if num_groups < 1:
            raise ValueError("GroupAccuracy needs num_groups >= 1")
        self.num_groups = num_groups
        self.add_state("correct", default=torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> None:
        """preds/target: class indices [n]; groups: group index [n] (negative = unknown, ignored)."""
        known = groups >= 0
        g = groups[known].long()
        hit = (preds[known] == target[known]).long()
        self.correct += torch.bincount(g, weights=hit, minlength=self.num_groups).long()[: self.num_groups]
        self.total += torch.bincount(g, minlength=self.num_groups)[: self.num_groups]

    def compute(self) -> torch.Tensor:
        acc = self.correct.float() / self.total.clamp(min=1).float()
        return torch.where(self.total > 0, acc, torch.full_like(acc, float("nan")))


def worst_group(per_group: torch.Tensor) -> float:
    """Minimum accuracy over non-empty groups (NaN when there are none)."""
    valid = per_group[~torch.isnan(per_group)]
    return float(valid.min()) if len(valid) else float("nan")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n (95% for z = 1.96); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes must be in [0, n={n}]")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)
