"""Failure directions (Jain et al. 2022, "Distilling Model Failures as Directions in Latent Space").

Per class, a class-balanced linear SVM on the CLIP embeddings of that class's validation samples separates wrong
from right predictions; C comes from stratified k-fold cross-validation (balanced accuracy, one-standard-error
rule) over a small grid. Its normal, oriented towards the errors, is the failure direction; the failure slice is
the top of the class's samples ranked along it (by out-of-fold SVM scores), cut where the slice score (see
`scoring`) is highest. All classes, C values and folds are solved together as one batch by `linear_svm`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from blindspot.discovery.scoring import (best_prefix, check_common_knobs, check_max_modes_per_class,
                                        check_slice_score, ClassBatch, Discovery)
from blindspot.discovery.svm import linear_svm
from blindspot.modes import FailureMode

log = logging.getLogger(__name__)


@dataclass
class ClassDirection:
    """The fitted failure direction of one class and how it was chosen."""

    class_index: int
    direction: torch.Tensor  # [d] unit normal pointing towards the errors (CPU)
    intercept: float  # SVM decision value = weight_norm * (direction . x) + intercept
    weight_norm: float
    C: float
    cv_balanced_accuracy: float | None
    train_balanced_accuracy: float
    n_samples: int
    n_errors: int


class FailureDirections(Discovery):
    """Blind spots as per-class SVM failure directions in CLIP space (Jain et al. 2022); up to
    `max_modes_per_class` modes per class, each searched without the slices found before it."""

    name = "directions"

    def __init__(
        self,
        Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0),
        cv_folds: int = 3,
        cv_one_se: bool = True,
        min_errors: int = 5,
        min_support: int = 8,
        min_error_gap: float = 0.2,
        error_gap_to: str = "class",
        max_modes: int | None = None,
        max_modes_per_class: int = 1,
        slice_score: str = "z",
        cross_fitted_slices: bool = True,
        tol: float = 1e-2,
        max_iter: int = 50,
        max_batch_bytes: int = 2**30,
        seed: int = 0,
    ):
        """Cs: SVM C grid (LinearSVC's convention, class_weight="balanced", features L2-normalised).
        cv_folds: stratified folds choosing C (0 = none; then Cs must hold one value).
        cv_one_se: take the smallest C whose CV balanced accuracy is within one standard error of the best.
        min_errors: errors, and correct predictions, a class needs to be searched (at least cv_folds).
        min_support / min_error_gap: smallest slice, and least excess of its error rate over the class's.
        error_gap_to: what min_error_gap is measured from: "rest" (the class without the slice) or "class" (the
            whole class, the slice included, so a large slice needs a larger error rate), see `scoring.error_gap`.
        max_modes: overall cap on the modes returned.
        max_modes_per_class: directions per class; each one after the first is fitted without the samples of the
            slices already found in that class (a second blind spot of the same class).
        slice_score: how a slice is cut and ranked: "z" (error excess over the class, in standard errors) or
            "error_lower_bound" (95% lower bound of the slice's own error rate), see `scoring`.
        cross_fitted_slices: rank samples by out-of-fold SVM scores, so a slice is not made of the very errors
            the SVM was trained on (needs cv_folds >= 2); False ranks by the final SVM.
        tol / max_iter: solver stopping rule (relative gradient norm) and Newton iteration cap.
        max_batch_bytes: memory for one padded batch of classes. seed: fold assignment."""
        Cs = tuple(float(c) for c in Cs)
        if not Cs or any(not math.isfinite(c) or c <= 0 for c in Cs):
            raise ValueError(f"Cs must be a non-empty sequence of positive numbers, got {Cs!r}")
        if not isinstance(cv_folds, int) or cv_folds < 0 or cv_folds == 1:
            raise ValueError(f"cv_folds must be 0 (no cross-validation) or an int >= 2, got {cv_folds!r}")
        if cv_folds == 0 and len(Cs) > 1:
            raise ValueError("cv_folds=0 cannot choose among several Cs: pass one C (e.g. Cs=[0.01]) or cv_folds>=2")
        if cross_fitted_slices and cv_folds == 0:
            raise ValueError("cross_fitted_slices needs cv_folds >= 2 (or set cross_fitted_slices=False)")
        check_common_knobs(min_support, min_error_gap, min_errors, max_modes, error_gap_to=error_gap_to)
        check_slice_score(slice_score)
        check_max_modes_per_class(max_modes_per_class)
        if not tol > 0 or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"tol must be > 0 and max_iter an int >= 1, got tol={tol!r}, max_iter={max_iter!r}")
        if max_batch_bytes < 2**20:
            raise ValueError(f"max_batch_bytes must be >= 1 MiB, got {max_batch_bytes!r}")
        self.Cs = tuple(sorted(Cs))
        self.cv_folds = cv_folds
        self.cv_one_se = cv_one_se
        self.min_errors = max(min_errors, cv_folds)
        self.min_support = min_support
        self.min_error_gap = min_error_gap
        self.error_gap_to = error_gap_to
        self.max_modes = max_modes
        self.max_modes_per_class = self.passes = max_modes_per_class
        self.slice_score = slice_score
        self.cross_fitted_slices = cross_fitted_slices
        self.tol = tol
        self.max_iter = max_iter
        self.max_batch_bytes = max_batch_bytes
        self.seed = seed
        self.directions_: dict[int, ClassDirection] = {}
        self.modes_: list[FailureMode] = []

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
            class_names: Sequence[str]) -> "FailureDirections":
        """Fit one failure direction per eligible class; sets `directions_` and `modes_`."""
        self.directions_ = {}
        return super().fit(embeddings, labels, preds, class_names)

    def _eligible(self, counts: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        return (errors >= self.min_errors) & (counts - errors >= self.min_errors)

    def _too_few(self) -> str:
        return f"< {self.min_errors} errors or < {self.min_errors} correct predictions"

    def _row_bytes(self, dim: int) -> int:
        return 8 * dim  # a sample row, and room for a transposed copy

    def _fit_batch(
        self, x: torch.Tensor, wrong: torch.Tensor, batch: ClassBatch, class_names: Sequence[str],
        gen: torch.Generator,
    ) -> list[FailureMode]:
        """Cross-validate and fit the SVMs of one padded batch of classes; turn them into modes."""
        K, n = batch.index.shape
        F, nC = self.cv_folds, len(self.Cs)
        y = batch.gather(wrong) & batch.valid
        fold = _stratified_folds(y, batch.valid, F, gen)  # [K, n], -1 on padding
        # Columns: for every C, one problem per held-out fold, then one on all samples.
        train = [fold != f for f in range(F)] + [torch.ones_like(batch.valid)]
        masks = torch.stack([t & batch.valid for t in train], 1).repeat(1, nC, 1)  # [K, nC * (F + 1), n]
        Ccol = torch.tensor(self.Cs, device=x.device).repeat_interleave(F + 1)
        res = linear_svm(batch.gather(x), y, Ccol, mask=masks, tol=self.tol, max_iter=self.max_iter)
        if not bool(res.converged.all()):
            log.warning("directions: %d of %d SVMs stopped at max_iter=%d before reaching tol=%g",
                        int((~res.converged).sum()), res.converged.numel(), self.max_iter, self.tol)
        dec = res.decision.reshape(K, nC, F + 1, n)
        rows = torch.arange(K, device=x.device)
        if F:
            held_out = torch.stack([fold == f for f in range(F)], 1).unsqueeze(1)  # [K, 1, F, n]
            oof = (dec[:, :, :F] * held_out).sum(2)  # out-of-fold decision values [K, nC, n]
            cv_acc, cv_se = _balanced_accuracy(oof, y, batch.valid)  # [K, nC]
            best = _choose_C(cv_acc, cv_se if self.cv_one_se else torch.zeros_like(cv_se))
            cv = cv_acc[rows, best].tolist()
        else:
            best = torch.zeros(K, dtype=torch.long, device=x.device)
            cv = [None] * K
        col = best * (F + 1) + F  # the all-samples problem at the chosen C
        w, b, full = res.coef[rows, col], res.intercept[rows, col], res.decision[rows, col]
        train_acc = _balanced_accuracy(full.unsqueeze(1), y, batch.valid)[0][:, 0].tolist()
        rank_by = oof[rows, best] if self.cross_fitted_slices else full
        rank_by = torch.where(batch.valid, rank_by, torch.full_like(rank_by, -math.inf))
        order = torch.argsort(rank_by, 1, descending=True)
        ranked_err = y.gather(1, order)
        n_err = y.sum(1)
        class_rate = n_err.float() / batch.sizes.float()
        k, score = best_prefix(ranked_err, batch.sizes, class_rate, self.min_support, self.min_error_gap,
                               score=self.slice_score, gap_to=self.error_gap_to)
        wnorm = w.norm(dim=1)
        unit = (w / wnorm.clamp(min=1e-12).unsqueeze(1)).cpu()
        modes = []
        for i, c in enumerate(batch.classes.tolist()):
            C = self.Cs[int(best[i])]
            cd = ClassDirection(c, unit[i], float(b[i]), float(wnorm[i]), C, cv[i], train_acc[i],
                                int(batch.sizes[i]), int(n_err[i]))
            self.directions_.setdefault(c, cd)  # a class's first direction (later passes refine its leftovers)
            ki = int(k[i])
            if ki == 0 or cd.weight_norm == 0.0:
                log.debug("directions: class %s has no slice of >= %d samples with an error gap >= %.2f",
                          class_names[c], self.min_support, self.min_error_gap)
                continue
            modes.append(FailureMode(
                class_index=c, class_name=class_names[c], members=sorted(batch.index[i, order[i, :ki]].tolist()),
                error_rate=float(ranked_err[i, :ki].float().mean()), class_error_rate=float(class_rate[i]),
                score=float(score[i]), method=self.name, direction=cd.direction.tolist(),
                extra={"C": C, "cv_balanced_accuracy": cd.cv_balanced_accuracy,
                       "train_balanced_accuracy": cd.train_balanced_accuracy, "intercept": cd.intercept,
                       "weight_norm": cd.weight_norm, "class_support": cd.n_samples, "class_errors": cd.n_errors,
                       "slice_ranking": "out_of_fold" if self.cross_fitted_slices else "in_sample",
                       "svm_converged": bool(res.converged[i].all())},
            ))
        return modes

    def decision_function(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Alignment (direction . x) of each sample with its own class's failure direction; NaN where none."""
        if not self.directions_:
            raise RuntimeError("FailureDirections.decision_function needs fit() first")
        x = embeddings.float()
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        labels = torch.as_tensor(labels, device=x.device).long()
        n_cls = max(max(self.directions_) + 1, int(labels.max()) + 1 if len(labels) else 0)
        D = torch.zeros(n_cls, x.shape[1], device=x.device)
        has = torch.zeros(n_cls, dtype=torch.bool, device=x.device)
        for c, cd in self.directions_.items():
            D[c], has[c] = cd.direction.to(x.device), True
        out = (x * D[labels]).sum(1)
        return torch.where(has[labels], out, torch.full_like(out, math.nan))


def _stratified_folds(y: torch.Tensor, valid: torch.Tensor, folds: int, gen: torch.Generator) -> torch.Tensor:
    """Random fold ids [K, n] spreading errors and correct predictions evenly over folds in each row (-1 = padding)."""
    if folds == 0:
        return torch.full(y.shape, -1, dtype=torch.long, device=y.device)
    key = torch.rand(y.shape, generator=gen).to(y.device) + 2 * y.float()  # sorts correct first, then errors
    perm = torch.argsort(torch.where(valid, key, torch.full_like(key, 10.0)), 1)
    ids = (torch.arange(y.shape[1], device=y.device) % folds).expand_as(perm)
    fold = torch.empty_like(perm).scatter_(1, perm, ids)
    return torch.where(valid, fold, torch.full_like(fold, -1))


def _balanced_accuracy(
    decision: torch.Tensor, y: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced accuracy of sign(decision) [K, m, n] against y [K, n] over valid samples, and its standard error."""
    pred = decision > 0
    pos = (y & valid).unsqueeze(1)
    neg = (~y & valid).unsqueeze(1)
    n_pos, n_neg = pos.sum(-1).clamp(min=1), neg.sum(-1).clamp(min=1)
    tpr = (pred & pos).sum(-1) / n_pos
    tnr = (~pred & neg).sum(-1) / n_neg
    se = 0.5 * (tpr * (1 - tpr) / n_pos + tnr * (1 - tnr) / n_neg).sqrt()
    return (tpr + tnr) / 2, se


def _choose_C(acc: torch.Tensor, se: torch.Tensor) -> torch.Tensor:
    """Index of the smallest C (columns ascending) whose accuracy is within one standard error of the best."""
    top, arg = acc.max(1)
    ok = acc >= (top - se.gather(1, arg.unsqueeze(1)).squeeze(1)).unsqueeze(1) - 1e-6
    return ok.float().argmax(1)  # first True
