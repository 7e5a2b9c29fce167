"""Deep Feature Reweighting (Kirichenko et al. 2023, "Last Layer Re-Training is Sufficient for Robustness to
Spurious Correlations"): keep the trained backbone and refit only its last, linear layer by L2-regularised
logistic regression on group-balanced held-out data.

The DFR^Val recipe: split the held-out set into two halves stratified by group; for every C, fit on
`n_subsamples` group-balanced subsamples of the first half (averaging the heads) and score worst-group accuracy on
the second half; then refit with the best C on group-balanced subsamples of the whole set. Features are
standardised for the fit; the scaling is folded into the returned head, so it applies to raw features.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class DFRResult:
    """A retrained last layer (logits = features @ weight.T + bias) and how it was chosen."""

    weight: torch.Tensor  # [num_classes, d]
    bias: torch.Tensor  # [num_classes]
    C: float  # the chosen inverse L2 strength
    scores: dict[float, float]  # C -> worst-group accuracy on the second half
    per_group: int  # samples per group in each balanced subsample of the final fit
    groups: int  # non-empty groups balanced over
    fit_accuracy: dict[str, float] = field(default_factory=dict)  # on the whole held-out set: avg / worst group

    def summary(self) -> dict:
        """JSON-ready facts for the report (no tensors)."""
        return {"C": self.C, "worst_group_acc_by_C": {str(c): s for c, s in self.scores.items()},
                "per_group": self.per_group, "groups": self.groups, "heldout_acc": dict(self.fit_accuracy)}


def penultimate_features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features a timm model's classifier head sees (`forward_head(..., pre_logits=True)`)."""
    if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
        raise TypeError(f"{type(net).__name__} is not a timm model (needs forward_features / forward_head): DFR "
                        "cannot find its penultimate features")
    return net.forward_head(net.forward_features(x), pre_logits=True)


def split_halves(groups: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint halves of the indices, stratified by group (a group's odd sample goes to the first)."""
    groups = torch.as_tensor(groups).long()
    gen = torch.Generator().manual_seed(seed)
    first, second = [], []
    for g in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == g).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        cut = (len(idx) + 1) // 2
        first.append(idx[:cut])
        second.append(idx[cut:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


def balanced_subsample(groups: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """As many samples from every group present among `indices` as the smallest of them has (sorted indices)."""
    indices = torch.as_tensor(indices).long()
    g = torch.as_tensor(groups).long()[indices]
    present, counts = torch.unique(g, return_counts=True)
    n = int(counts.min())
    picks = []
    for value in present.tolist():
        own = indices[g == value]
        picks.append(own[torch.randperm(len(own), generator=generator)[:n]])
    return torch.cat(picks).sort().values


def worst_group_accuracy(preds: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    """Lowest accuracy over the groups present."""
    hit = (torch.as_tensor(preds) == torch.as_tensor(labels)).float()
    groups = torch.as_tensor(groups).long()
    return min(float(hit[groups == g].mean()) for g in torch.unique(groups).tolist())


def _logreg(x: torch.Tensor, y: torch.Tensor, C: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial L2 logistic regression (sklearn, lbfgs) as a full [num_classes, d] head."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=2000)
    clf.fit(x.double().numpy(), y.numpy())
    coef, intercept = torch.from_numpy(clf.coef_).float(), torch.from_numpy(clf.intercept_).float()
    if len(clf.classes_) == 2:  # sklearn's binary head is one row: the same logit difference, split in two
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    W = torch.zeros(num_classes, x.shape[1])
    b = torch.full((num_classes,), float(intercept.min()) - 30.0)  # classes absent from the fit: never predicted
    rows = torch.as_tensor(np.asarray(clf.classes_, dtype=np.int64))
    W[rows], b[rows] = coef, intercept
    return W, b


def _averaged_fit(x, y, groups, indices, C, num_classes, n_subsamples, gen) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The mean head over `n_subsamples` group-balanced subsamples of `indices`, and the per-group count."""
    heads = []
    for _ in range(n_subsamples):
        pick = balanced_subsample(groups, indices, gen)
        heads.append(_logreg(x[pick], y[pick], C, num_classes))
    return torch.stack([h[0] for h in heads]).mean(0), torch.stack([h[1] for h in heads]).mean(0), \
        len(pick) // len(torch.unique(groups[indices]))


def fit_dfr(features: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, num_classes: int,
            Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0), n_subsamples: int = 5, seed: int = 0) -> DFRResult:
    """Choose C by worst-group accuracy on one half, refit on the whole held-out set, return the raw-feature head."""
    Cs = sorted(float(c) for c in Cs)
    if not Cs or any(not math.isfinite(c) or c <= 0 for c in Cs):
        raise ValueError(f"DFR Cs={Cs}: give a non-empty list of positive numbers")
    if n_subsamples < 1:
        raise ValueError(f"DFR n_subsamples={n_subsamples}: must be >= 1")
    f, y, groups = features.float().cpu(), torch.as_tensor(labels).long(), torch.as_tensor(groups).long()
    if not len(f) == len(y) == len(groups):
        raise ValueError(f"{len(f)} features, {len(y)} labels and {len(groups)} groups: one of each per sample")
    if len(torch.unique(y)) < 2:
        raise ValueError("DFR needs held-out samples of at least two classes")
    mu, sigma = f.mean(0), f.std(0).clamp(min=1e-6)
    x = (f - mu) / sigma
    gen = torch.Generator().manual_seed(seed)
    first, second = split_halves(groups, seed)
    scores = {}
    for C in Cs:
        W, b, _ = _averaged_fit(x, y, groups, first, C, num_classes, n_subsamples, gen)
        preds = (x[second] @ W.T + b).argmax(1)
        scores[C] = worst_group_accuracy(preds, y[second], groups[second]) if len(second) else float("nan")
    best = max(Cs, key=lambda c: (scores[c] if scores[c] == scores[c] else -1.0, -c))  # ties: stronger L2
    W, b, per_group = _averaged_fit(x, y, groups, torch.arange(len(y)), best, num_classes, n_subsamples, gen)
    weight, bias = W / sigma, b - (W / sigma) @ mu
    preds = (f @ weight.T + bias).argmax(1)
    fit_acc = {"acc": float((preds == y).float().mean()), "worst_group_acc": worst_group_accuracy(preds, y, groups)}
    log.info("DFR: C=%g (worst-group accuracy on the second half by C: %s), %d per group over %d groups", best,
             ", ".join(f"{c:g}: {s:.3f}" for c, s in scores.items()), per_group, len(torch.unique(groups)))
    return DFRResult(weight, bias, best, scores, per_group, len(torch.unique(groups)), fit_acc)
