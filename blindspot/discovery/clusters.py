"""Error clusters, Domino-style (Eyuboglu et al. 2022, "Domino: Discovering Systematic Errors with Cross-Modal
Embeddings"): per class, cluster the samples in CLIP space with the error indicator appended as an extra,
weighted feature, so clusters follow both the image content and where the model fails; report clusters whose
error rate lies far above the class's. Batched k-means (k-means++ seeding) over all classes at once in torch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from blindspot.discovery.scoring import (check_common_knobs, check_max_modes_per_class, check_slice_score, ClassBatch,
                                        Discovery, error_gap, slice_score)
from blindspot.modes import FailureMode


class ErrorClusters(Discovery):
    """Blind spots as error-heavy clusters of each class's CLIP embeddings (Domino-style, Eyuboglu et al. 2022)."""

    name = "clusters"

    def __init__(
        self,
        n_clusters: int = 8,
        error_weight: float = 0.5,
        n_init: int = 3,
        max_iter: int = 50,
        min_errors: int = 3,
        min_support: int = 8,
        min_error_gap: float = 0.2,
        error_gap_to: str = "class",
        max_modes_per_class: int | None = 2,
        max_modes: int | None = None,
        slice_score: str = "z",
        max_batch_bytes: int = 2**30,
        seed: int = 0,
    ):
        """n_clusters: clusters per class; error_weight: scale of the appended error feature, in units of the class's
        RMS embedding spread (0 = plain clustering of the embeddings); n_init / max_iter: k-means restarts and Lloyd
        steps; min_errors: errors a class needs to be searched; min_support / min_error_gap: smallest slice and its
        least error-rate excess over the class; max_modes_per_class / max_modes: caps; slice_score: how clusters are
        scored and ranked ("z" or "error_lower_bound", see `scoring`); max_batch_bytes: memory for
        one padded batch of classes; seed: k-means++ seeding; error_gap_to: "rest" or "class", what min_error_gap
        is measured from (`scoring.error_gap`)."""
        if not isinstance(n_clusters, int) or n_clusters < 2:
            raise ValueError(f"n_clusters must be an int >= 2, got {n_clusters!r}")
        if not error_weight >= 0:
            raise ValueError(f"error_weight must be >= 0, got {error_weight!r}")
        if not isinstance(n_init, int) or n_init < 1 or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"n_init and max_iter must be ints >= 1, got {n_init!r} and {max_iter!r}")
        check_max_modes_per_class(max_modes_per_class, allow_none=True)
        check_common_knobs(min_support, min_error_gap, min_errors, max_modes, max_batch_bytes, error_gap_to)
        check_slice_score(slice_score)
        self.n_clusters = n_clusters
        self.error_weight = float(error_weight)
        self.n_init = n_init
        self.max_iter = max_iter
        self.min_errors = min_errors
        self.min_support = min_support
        self.min_error_gap = min_error_gap
        self.error_gap_to = error_gap_to
        self.max_modes_per_class = max_modes_per_class
        self.max_modes = max_modes
        self.slice_score = slice_score
        self.max_batch_bytes = max_batch_bytes
        self.seed = seed
        self.modes_: list[FailureMode] = []

    def _eligible(self, counts: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        return (errors >= self.min_errors) & (errors < counts) & (counts > self.min_support)

    def _too_few(self) -> str:
        return f"< {self.min_errors} errors, no correct predictions or <= {self.min_support} samples"

    def _row_bytes(self, dim: int) -> int:
        return 12 * (dim + 1)  # gathered rows, features, a temporary

    def _fit_batch(
        self, x: torch.Tensor, wrong: torch.Tensor, batch: ClassBatch, class_names: Sequence[str],
        gen: torch.Generator,
    ) -> list[FailureMode]:
        """Cluster one padded batch of classes and turn the error-heavy clusters into modes."""
        X = batch.gather(x)  # [K, n, d]
        e = (batch.gather(wrong) & batch.valid).float()
        v = batch.valid.float()
        sizes = batch.sizes.float()
        mean = (X * v.unsqueeze(-1)).sum(1) / sizes.unsqueeze(1)  # [K, d]
        spread = (((X - mean.unsqueeze(1)) ** 2).sum(-1) * v).sum(1).div(sizes).sqrt()  # RMS distance to the mean
        feats = torch.cat([X, (self.error_weight * spread.unsqueeze(1) * e).unsqueeze(-1)], -1)
        assign = _kmeans(feats, batch.valid, self.n_clusters, self.n_init, self.max_iter, gen)  # [K, n]
        onehot = torch.nn.functional.one_hot(assign, self.n_clusters).float() * v.unsqueeze(-1)  # [K, n, k]
        size = onehot.sum(1)  # [K, k]
        err = (onehot * e.unsqueeze(-1)).sum(1)
        rate = err / size.clamp(min=1)
        class_rate = (e.sum(1) / sizes).unsqueeze(1)
        score = slice_score(self.slice_score, rate, size, class_rate)
        gap = error_gap(err, size, e.sum(1, keepdim=True), sizes.unsqueeze(1), self.error_gap_to)
        ok = (size >= self.min_support) & (gap >= self.min_error_gap - 1e-6)
        centroid = torch.bmm(onehot.transpose(1, 2), X) / size.clamp(min=1).unsqueeze(-1)  # [K, k, d]
        modes = []
        for i, j in torch.nonzero(ok).tolist():
            c = int(batch.classes[i])
            members = batch.index[i][(assign[i] == j) & batch.valid[i]]
            offset = centroid[i, j] - mean[i]
            modes.append(FailureMode(
                class_index=c, class_name=class_names[c], members=sorted(members.tolist()),
                error_rate=float(rate[i, j]), class_error_rate=float(class_rate[i, 0]), score=float(score[i, j]),
                method=self.name, direction=(offset / offset.norm().clamp(min=1e-12)).tolist(),
                extra={"cluster": j, "n_clusters": self.n_clusters, "error_weight": self.error_weight,
                       "direction_kind": "cluster centroid minus class mean", "class_support": int(batch.sizes[i]),
                       "class_errors": int(e[i].sum())},
            ))
        return modes


def _kmeans(
    X: torch.Tensor, valid: torch.Tensor, k: int, n_init: int, max_iter: int, gen: torch.Generator, tol: float = 1e-3
) -> torch.Tensor:
    """Batched k-means with k-means++ seeding: X [K, n, f] -> cluster index [K, n] (lowest inertia of n_init runs).

    A run stops when at most a fraction `tol` of the samples changed cluster in the last Lloyd step."""
    K, n, _ = X.shape
    Xt = X.transpose(1, 2)
    sq = (X**2).sum(-1).unsqueeze(1)  # [K, 1, n]
    n_valid = int(valid.sum())
    best = torch.zeros(K, n, dtype=torch.long, device=X.device)
    best_inertia = torch.full((K,), float("inf"), device=X.device)
    for _ in range(n_init):
        C = _kmeanspp(X, sq, valid, k, gen)
        assign = None
        for _ in range(max_iter):
            d2 = (sq - 2 * torch.bmm(C, Xt) + (C**2).sum(-1, keepdim=True)).clamp(min=0)  # [K, k, n]
            dmin, new = d2.min(1)
            if assign is not None and int(((new != assign) & valid).sum()) <= tol * n_valid:
                break
            assign = new
            member = (torch.nn.functional.one_hot(assign, k) * valid.unsqueeze(-1)).transpose(1, 2).float()
            cnt = member.sum(-1, keepdim=True)  # [K, k, 1]
            C = torch.where(cnt > 0, torch.bmm(member, X) / cnt.clamp(min=1), C)  # an emptied cluster keeps its centre
        inertia = (dmin * valid).sum(1)
        better = inertia < best_inertia
        best = torch.where(better.unsqueeze(1), new, best)
        best_inertia = torch.where(better, inertia, best_inertia)
    return best


def _kmeanspp(X: torch.Tensor, sq: torch.Tensor, valid: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeds [K, k, f]: each next seed drawn with probability proportional to squared distance."""
    K = X.shape[0]
    rows = torch.arange(K, device=X.device)
    w = valid.float()
    d2 = torch.full_like(w, float("inf"))
    pick = torch.multinomial(w.cpu(), 1, generator=gen).squeeze(1).to(X.device)  # first seed: uniform
    seeds = []
    for j in range(k):
        if j:
            pick = torch.multinomial((d2 * w + 1e-12 * w).cpu(), 1, generator=gen).squeeze(1).to(X.device)
        c = X[rows, pick].unsqueeze(1)  # [K, 1, f]
        seeds.append(c)
        dist = (sq - 2 * torch.bmm(c, X.transpose(1, 2)) + (c**2).sum(-1, keepdim=True)).clamp(min=0)
        d2 = torch.minimum(d2, dist.squeeze(1))
    return torch.cat(seeds, 1)
