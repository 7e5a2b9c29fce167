"""Error neighbourhoods, Spotlight-style (d'Eon et al. 2022, "The Spotlight: A General Method for Discovering
Systematic Errors in Deep Learning Models"): per class, the failure slice is the CLIP-space neighbourhood of one
of the class's errors - its k nearest same-class samples - whose slice score is highest over every error taken as
the centre and every k. A blind spot that the model gets (nearly) all wrong is a tight neighbourhood of errors, even
when the class also fails elsewhere for other reasons, which a single linear direction per class blends together.
Later modes of a class (`max_modes_per_class`) are searched without the samples of the slices already found.
"""

from __future__ import annotations

from typing import Sequence

import torch

from blindspot.discovery.scoring import (best_prefix, check_common_knobs, check_max_modes_per_class,
                                        check_slice_score, ClassBatch, Discovery)
from blindspot.modes import FailureMode


class ErrorNeighbourhoods(Discovery):
    """Blind spots as the error-densest CLIP neighbourhood of each class, centred on one of its errors."""

    name = "neighbourhoods"

    def __init__(
        self,
        min_errors: int = 5,
        min_support: int = 8,
        min_error_gap: float = 0.2,
        error_gap_to: str = "class",
        max_support: int | None = None,
        max_modes_per_class: int = 2,
        max_modes: int | None = None,
        slice_score: str = "error_lower_bound",
        max_batch_bytes: int = 2**30,
        seed: int = 0,
    ):
        """min_errors: errors a class needs to be searched; min_support / min_error_gap: smallest slice and its least
        error-rate excess over the class; max_support: largest slice (None: half the class); max_modes_per_class /
        max_modes: caps (each later mode of a class is searched without the earlier ones' samples); slice_score:
        "error_lower_bound" or "z" (see `scoring`); max_batch_bytes: memory for one block of neighbour lists;
        error_gap_to: "rest" or "class", what min_error_gap is measured from (`scoring.error_gap`)."""
        check_common_knobs(min_support, min_error_gap, min_errors, max_modes, max_batch_bytes, error_gap_to)
        check_slice_score(slice_score)
        if max_support is not None and (not isinstance(max_support, int) or max_support < min_support):
            raise ValueError(f"max_support must be None or an int >= min_support, got {max_support!r}")
        check_max_modes_per_class(max_modes_per_class)
        self.min_errors = min_errors
        self.min_support = min_support
        self.min_error_gap = min_error_gap
        self.error_gap_to = error_gap_to
        self.max_support = max_support
        self.max_modes_per_class = self.passes = max_modes_per_class
        self.max_modes = max_modes
        self.slice_score = slice_score
        self.max_batch_bytes = max_batch_bytes
        self.seed = seed
        self.modes_: list[FailureMode] = []

    def _eligible(self, counts: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        return (errors >= self.min_errors) & (errors < counts) & (counts >= 2 * self.min_support)

    def _too_few(self) -> str:
        return f"< {self.min_errors} errors, no correct predictions or < {2 * self.min_support} samples"

    def _row_bytes(self, dim: int) -> int:
        return 4 * dim

    def _fit_batch(self, x: torch.Tensor, wrong: torch.Tensor, batch: ClassBatch, class_names: Sequence[str],
                   gen: torch.Generator) -> list[FailureMode]:
        """For each class of the batch, the best neighbourhood over its errors as centres."""
        modes = []
        for i, c in enumerate(batch.classes.tolist()):
            n = int(batch.sizes[i])
            idx = batch.index[i, :n]
            X, err = x[idx], wrong[idx]
            mode = self._best_neighbourhood(X, err)
            if mode is None:
                continue
            members, rate, score = mode
            class_rate = float(err.float().mean())
            offset = X[members].mean(0) - X.mean(0)
            modes.append(FailureMode(
                class_index=c, class_name=class_names[c], members=sorted(idx[members].tolist()), error_rate=rate,
                class_error_rate=class_rate, score=score, method=self.name,
                direction=(offset / offset.norm().clamp(min=1e-12)).tolist(),
                extra={"direction_kind": "neighbourhood centroid minus class mean", "class_support": n,
                       "class_errors": int(err.sum()), "slice_score": self.slice_score},
            ))
        return modes

    def _best_neighbourhood(self, X: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, float, float] | None:
        """(member positions, error rate, score) of the best error-centred neighbourhood, or None."""
        n = len(X)
        centres = torch.nonzero(err).flatten()
        limit = torch.tensor([self.max_support or n // 2], device=X.device)
        class_rate = err.float().mean().reshape(1)
        best_score, members = -float("inf"), None
        step = max(1, self.max_batch_bytes // (16 * n))  # centres per block: similarities, order and flags
        for start in range(0, len(centres), step):
            block = centres[start:start + step]
            order = torch.argsort(X[block] @ X.T, dim=1, descending=True)  # [b, n] nearest first (itself first)
            ranked = err[order]
            k, score = best_prefix(ranked, torch.full((len(block),), n, device=X.device), class_rate.expand(len(block)),
                                   self.min_support, self.min_error_gap, max_size=limit.expand(len(block)),
                                   score=self.slice_score, gap_to=self.error_gap_to)
            j = int(score.argmax())
            if float(score[j]) > best_score:
                best_score, members = float(score[j]), order[j, : int(k[j])]
        if members is None:
            return None
        return members, float(err[members].float().mean()), best_score
