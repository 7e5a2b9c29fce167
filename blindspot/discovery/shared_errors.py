"""The error cue classes share: what makes any image hard (e.g. small shapes), as opposed to one class's blind spot."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_error_deltas(embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                       min_each: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the unit (error mean - correct mean) [C, d], and which classes have >= `min_each` of both."""
    e, labels = embeddings.float(), labels.long()
    wrong = preds != labels
    n_cls = int(labels.max()) + 1 if len(labels) else 0
    total = torch.zeros(n_cls, e.shape[1], device=e.device).index_add_(0, labels, e)
    err_sum = torch.zeros_like(total).index_add_(0, labels[wrong], e[wrong])  # copies the error rows only
    n_err = torch.bincount(labels[wrong], minlength=n_cls).float()
    n_right = torch.bincount(labels, minlength=n_cls).float() - n_err
    valid = (n_err >= min_each) & (n_right >= min_each)
    delta = err_sum / n_err.clamp(min=1).unsqueeze(1) - (total - err_sum) / n_right.clamp(min=1).unsqueeze(1)
    return F.normalize(delta, dim=-1) * valid.unsqueeze(1), valid


def shared_error_direction(embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, exclude: int,
                           min_each: int = 3) -> torch.Tensor | None:
    """What errors share across classes: the mean over the other classes of (error mean - correct mean), unit length.

    Classes with fewer than `min_each` errors or correct samples are left out; None if none is left."""
    deltas, valid = class_error_deltas(embeddings, labels, preds, min_each)
    if exclude < len(valid):
        valid = valid.clone()
        valid[exclude] = False
    return F.normalize(deltas[valid].mean(0), dim=-1) if bool(valid.any()) else None
