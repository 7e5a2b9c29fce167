"""Last-layer retraining over discovered groups as a remedy (DFR, Kirichenko et al. 2023, "Last Layer Re-Training
is Sufficient for Robustness to Spurious Correlations", balanced by Blindspot's groups instead of labels).

The round's modes make the groups of the validation set (a member of a mode is in that mode's group, the rest in
its class's); a logistic-regression head is fitted on group-balanced subsets of the frozen backbone's
penultimate features (`blindspot.baselines.dfr.fit_dfr`) and returned as the classifier's new last layer.
"""

from __future__ import annotations

import torch

from ..baselines.batched import apply_batched
from ..baselines.dfr import fit_dfr
from ..baselines.groups import groups_from_members
from .base import RemedyContext, RemedyResult


class DFRRemedy:
    """Refit the classifier head on validation features balanced over the round's discovered groups."""

    name = "dfr"

    def __init__(self, Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0), n_subsamples: int = 5, seed: int = 0,
                 batch_size: int = 256):
        if not Cs or any(float(c) <= 0 for c in Cs) or n_subsamples < 1:
            raise ValueError("remedy=dfr needs a non-empty remedy.Cs grid of positive numbers and "
                             "remedy.n_subsamples >= 1")
        self.Cs, self.n_subsamples, self.seed, self.batch_size = [float(c) for c in Cs], n_subsamples, seed, batch_size

    def __call__(self, rnd, context: RemedyContext) -> RemedyResult:
        """Fit on rank 0 and broadcast the head."""
        fitted = None
        if context.is_main:
            labels = torch.as_tensor(context.val_labels).long()
            features = apply_batched(context.features, context.val_images, range(len(labels)), self.batch_size)
            groups, names = groups_from_members(labels, rnd.modes, context.class_names)
            res = fit_dfr(features, labels, groups, len(context.class_names), self.Cs, self.n_subsamples, self.seed)
            stats = {**res.summary(), "generated": 0, "kept": 0, "injected": 0,
                     "group_names": [names[g] for g in torch.unique(groups).tolist()]}
            fitted = (res.weight, res.bias, stats)
        weight, bias, stats = context.broadcast(fitted)
        return RemedyResult(head=(weight, bias), stats=stats)
