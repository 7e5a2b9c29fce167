"""How well the training set covers a failure mode: a data-repairable blind spot is a part of its class the training
images barely reach; a hard group the model fails although training images of it abound is not.

`train_coverage` places a mode's members among their class's validation samples by how close their k-th nearest
same-class training image is (cosine similarity in CLIP space): 0 means the mode sits where its class is least
covered by training data, 0.5 where it is typical. It reads only embeddings and labels, so it works on any data.
"""

from __future__ import annotations

from typing import Sequence

import torch

from blindspot.modes import FailureMode


def kth_neighbour_similarity(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096) -> torch.Tensor:
    """Cosine similarity of each query to its k-th most similar key (L2-normalised rows); -1 if there are < k keys."""
    if len(keys) < k:
        return torch.full((len(queries),), -1.0)
    out = [(q @ keys.T).topk(k, dim=1).values[:, -1] for q in queries.float().split(chunk)]
    return torch.cat(out) if out else torch.empty(0)


def train_coverage(modes: Sequence[FailureMode], val_embeddings: torch.Tensor, val_labels: torch.Tensor,
                   train_embeddings: torch.Tensor, train_labels: torch.Tensor, k: int = 5) -> list[float]:
    """Per mode: the share of its class's validation samples that training images cover less than the mode's median
    member (similarity to the k-th nearest same-class training image); 0 = the least covered part of the class."""
    if k < 1:
        raise ValueError(f"k must be >= 1 (the training neighbour whose similarity measures coverage), got {k!r}")
    val = torch.nn.functional.normalize(val_embeddings.float(), dim=1)
    train = torch.nn.functional.normalize(train_embeddings.float(), dim=1)
    val_labels, train_labels = torch.as_tensor(val_labels).long(), torch.as_tensor(train_labels).long()
    per_class: dict[int, tuple[dict[int, int], torch.Tensor]] = {}  # class -> (val index -> row, similarities)
    out = []
    for mode in modes:
        c = mode.class_index
        if c not in per_class:
            in_class = torch.nonzero(val_labels == c).flatten()
            per_class[c] = ({int(i): n for n, i in enumerate(in_class.tolist())},
                            kth_neighbour_similarity(val[in_class], train[train_labels == c], k))
        position, sims = per_class[c]
        members = torch.tensor([position[i] for i in mode.members if i in position], dtype=torch.long)
        if not len(members) or not len(sims):
            out.append(float("nan"))
            continue
        median = sims[members].median()
        out.append(float((sims < median).float().mean()))
    return out
