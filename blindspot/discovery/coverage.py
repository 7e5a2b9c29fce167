"""How well the training set covers a failure mode: a data-repairable blind spot is a part of its class the training
images barely reach; a hard group the model fails although training images of it abound is not.

`train_coverage` measures how close a mode's median member is to its k-th nearest same-class training image (cosine
similarity in CLIP space) and places that among the class's own training images, each measured the same way against
the others: 0 means training images reach the mode less than they reach any of themselves, 0.5 that the mode is as
covered as a typical training image. The reference is the training set, not the validation set, so a slice's
coverage does not depend on how validation was sampled (balanced groups cap a rank among validation samples at the
slice's share of its class). It reads only embeddings and labels, so it works on any data.
"""

from __future__ import annotations

from typing import Sequence

import torch

from blindspot.modes import FailureMode

MAX_REFERENCE = 4096  # training images per class whose own coverage is the reference (a seeded sample beyond that)


def kth_neighbour_similarity(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Cosine similarity of each query to its k-th most similar key (L2-normalised rows); -1 if there are < k keys."""
    if len(keys) < k:
        return torch.full((len(queries),), -1.0)
    out = [(q @ keys.T).topk(k, dim=1).values[:, -1] for q in queries.float().split(chunk)]
    return torch.cat(out) if out else torch.empty(0)


def reference_coverage(train: torch.Tensor, k: int, max_reference: int = MAX_REFERENCE) -> torch.Tensor:
    """Each (sampled) training image's similarity to its k-th nearest other training image of the same class."""
    rows = train
    if len(train) > max_reference:
        rows = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:max_reference]]
    return kth_neighbour_similarity(rows, train, k + 1)  # its own image is its first neighbour


def member_coverage(members: torch.Tensor, keys: torch.Tensor, reference: torch.Tensor, k: int) -> torch.Tensor:
    """Per member (L2-normalised rows): the share of the class's training images (`reference`: their own coverage)
    that their k nearest same-class training images cover less than the member is covered by its k nearest."""
    sims = kth_neighbour_similarity(members, keys, k)
    below = torch.searchsorted(reference.sort().values.contiguous(), sims.contiguous(), side="left")
    return below.float() / len(reference)  # how many reference values are < each member's similarity


def member_coverages(modes: Sequence[FailureMode], val_embeddings: torch.Tensor, train_embeddings: torch.Tensor,
                     train_labels: torch.Tensor, k: int = 5) -> list[torch.Tensor | None]:
    """Per mode: each member's `member_coverage`, or None when the mode has no members or its class has k training
    images or fewer; each class's training images are measured against each other once."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (the training neighbour whose similarity measures coverage), got {k!r}")
    val = torch.nn.functional.normalize(val_embeddings.float(), dim=1)
    train = torch.nn.functional.normalize(train_embeddings.float(), dim=1)
    train_labels = torch.as_tensor(train_labels).long()
    per_class: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # class -> (its training images, their coverage)
    out: list[torch.Tensor | None] = []
    for mode in modes:
        c = mode.class_index
        if c not in per_class:
            keys = train[train_labels == c]
            per_class[c] = (keys, reference_coverage(keys, k))
        keys, reference = per_class[c]
        measurable = bool(mode.members) and len(keys) > k
        out.append(member_coverage(val[torch.as_tensor(mode.members).long()], keys, reference, k) if measurable
                   else None)
    return out


def uncovered(mode: FailureMode, coverage: torch.Tensor | None, max_coverage: float) -> list[int]:
    """The mode's members whose coverage is below `max_coverage`, in order; all of them when it was not measured."""
    if coverage is None:
        return list(mode.members)
    return [i for i, share in zip(mode.members, coverage.tolist()) if share < max_coverage]


def median_coverage(coverage: torch.Tensor | None) -> float:
    """A mode's coverage: its median member's (0 = less covered than any training image; NaN when not measured)."""
    return float("nan") if coverage is None else float(coverage.median())


def train_coverage(modes: Sequence[FailureMode], val_embeddings: torch.Tensor, train_embeddings: torch.Tensor,
                   train_labels: torch.Tensor, k: int = 5) -> list[float]:
    """Per mode: the share of its class's training images that their k nearest same-class training images cover
    less than the mode's median member is covered by its k nearest (0 = less covered than any training image;
    NaN when the class has too few training images)."""
    return [median_coverage(c) for c in member_coverages(modes, val_embeddings, train_embeddings, train_labels, k)]
