"""Shared pieces of the discovery methods: input checks, per-class padded batches, slice scores and ranking.

Slice scores (`slice_score`, chosen per method):
- "z": the binomial z-score (e_slice - e_class) / sqrt(e_class (1 - e_class) / n_slice), how many standard errors
  the slice's error rate lies above its class's: it rewards a large gap and a large support, and favours classes
  the model otherwise gets right (a weak spot in a good class).
- "error_lower_bound": the 95% Wilson lower bound of the slice's own error rate: how surely the model fails
  nearly everything in the slice (a blind spot), comparable across classes whatever their base error rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from blindspot.modes import FailureMode

log = logging.getLogger(__name__)


def check_inputs(
    embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor, class_names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the discovery inputs; return float32 L2-normalised embeddings and long labels/preds on its device."""
    if not torch.is_tensor(embeddings) or embeddings.dim() != 2 or not embeddings.is_floating_point():
        raise ValueError("embeddings must be a float tensor [n, d] (CLIP image embeddings of the validation set)")
    n = embeddings.shape[0]
    labels = torch.as_tensor(labels).to(embeddings.device).long()
    preds = torch.as_tensor(preds).to(embeddings.device).long()
    if labels.shape != (n,) or preds.shape != (n,):
        raise ValueError(f"labels and preds must be [n]={n} tensors, got {tuple(labels.shape)}, {tuple(preds.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
        raise ValueError(f"labels must lie in [0, {len(class_names)}) (one class name per class index)")
    x = embeddings.float()
    norms = x.norm(dim=1)
    if n and float((norms - 1).abs().max()) > 1e-3:
        log.info("discovery: embeddings are not L2-normalised; normalising them")
        x = x / norms.clamp(min=1e-12).unsqueeze(1)
    return x, labels, preds


@dataclass
class ClassBatch:
    """Samples of K classes padded into [K, n_max] index/validity grids (padding points at sample 0)."""

    classes: torch.Tensor  # [K] class indices
    index: torch.Tensor  # [K, n_max] validation indices
    valid: torch.Tensor  # [K, n_max] bool
    sizes: torch.Tensor  # [K]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of x laid out as [K, n_max, ...]."""
        return x[self.index.flatten()].reshape(*self.index.shape, *x.shape[1:])


def class_batches(labels: torch.Tensor, classes: torch.Tensor, max_elements: int) -> list[ClassBatch]:
    """Group the samples of `classes` into padded batches of similar-size classes, each <= max_elements cells."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=int(classes.max()) + 1 if len(classes) else 1)
    starts = torch.cumsum(counts, 0) - counts
    classes = classes[torch.argsort(counts[classes], descending=True, stable=True)]
    batches, i = [], 0
    sizes = counts[classes].tolist()
    while i < len(classes):
        n_max = max(sizes[i], 1)
        k = max(1, min(len(classes) - i, max_elements // n_max))
        cls = classes[i : i + k]
        pos = torch.arange(n_max, device=labels.device)
        sz = counts[cls]
        valid = pos.unsqueeze(0) < sz.unsqueeze(1)
        flat = (starts[cls].unsqueeze(1) + pos.unsqueeze(0)).clamp(max=len(order) - 1)
        index = torch.where(valid, order[flat], torch.zeros_like(flat))
        batches.append(ClassBatch(cls, index, valid, sz))
        i += k
    return batches


def binomial_z(
    slice_error_rate: torch.Tensor, slice_size: torch.Tensor, class_error_rate: torch.Tensor
) -> torch.Tensor:
    """How many binomial standard errors the slice's error rate lies above its class's."""
    var = (class_error_rate * (1 - class_error_rate)).clamp(min=1e-6) / slice_size.clamp(min=1)
    return (slice_error_rate - class_error_rate) / var.sqrt()


def wilson_lower_bound(rate: torch.Tensor, n: torch.Tensor, z: float = 1.96) -> torch.Tensor:
    """The Wilson score interval's lower end for a binomial rate observed on n samples (95% by default)."""
    n = n.float().clamp(min=1)
    centre = rate + z * z / (2 * n)
    spread = z * (rate * (1 - rate) / n + z * z / (4 * n * n)).clamp(min=0).sqrt()
    return (centre - spread) / (1 + z * z / n)


SLICE_SCORES = ("z", "error_lower_bound")


def slice_score(kind: str, slice_error_rate: torch.Tensor, slice_size: torch.Tensor,
                class_error_rate: torch.Tensor) -> torch.Tensor:
    """A slice's score under `kind` (see the module docstring)."""
    check_slice_score(kind)
    if kind == "z":
        return binomial_z(slice_error_rate, slice_size, class_error_rate)
    return wilson_lower_bound(slice_error_rate, slice_size)


GAP_REFERENCES = ("rest", "class")


def error_gap(slice_errors: torch.Tensor, slice_size: torch.Tensor, class_errors: torch.Tensor,
              class_size: torch.Tensor, gap_to: str) -> torch.Tensor:
    """How far a slice's error rate lies above the rest of its class's ("rest") or the whole class's ("class").

    "rest" does not shrink as the slice grows: a slice of half the class with 30% errors and none elsewhere has a
    gap of 0.3 to the rest but only 0.15 to the class. A slice that is the whole class has no gap.
    """
    check_error_gap_to(gap_to)
    rate = slice_errors / slice_size.clamp(min=1)
    if gap_to == "class":
        return rate - class_errors / class_size.clamp(min=1)
    rest = class_size - slice_size
    rest_rate = (class_errors - slice_errors) / rest.clamp(min=1)
    return torch.where(rest > 0, rate - rest_rate, torch.zeros_like(rate))


def best_prefix(
    ranked_errors: torch.Tensor,
    sizes: torch.Tensor,
    class_error_rate: torch.Tensor,
    min_support: int,
    min_error_gap: float,
    max_size: torch.Tensor | None = None,
    score: str = "z",
    gap_to: str = "class",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best slice = top-k of each ranked row maximising the score with k >= min_support and gap >= min_error_gap.

    ranked_errors: [K, n] 0/1 error flags in ranking order (padding after `sizes`; each row holds its whole class).
    gap_to: what the gap is measured from (`error_gap`). Returns (k, score) per row, k = 0 and score = -inf where no
    prefix qualifies.
    """
    K, n = ranked_errors.shape
    k = torch.arange(1, n + 1, device=ranked_errors.device, dtype=torch.float32).expand(K, n)
    cum = ranked_errors.float().cumsum(1)
    rate = cum / k
    ce = class_error_rate.float().unsqueeze(1)
    limit = sizes if max_size is None else torch.minimum(sizes, max_size)
    gap = error_gap(cum, k, cum[:, -1:], sizes.float().unsqueeze(1), gap_to)
    ok = (k >= min_support) & (k <= limit.unsqueeze(1)) & (gap >= min_error_gap - 1e-6)
    values = torch.where(ok, slice_score(score, rate, k, ce), torch.full_like(rate, -float("inf")))
    best, arg = values.max(1)
    return torch.where(torch.isfinite(best), arg + 1, torch.zeros_like(arg)), best


def rank_modes(modes: list[FailureMode], max_modes_per_class: int | None, max_modes: int | None) -> list[FailureMode]:
    """Sort by score (descending), keep the per-class and overall caps, set mode_id = f"{class_name}-{rank}"."""
    modes = sorted(modes, key=lambda m: -m.score)
    kept, per_class = [], {}
    for mode in modes:
        rank = per_class.get(mode.class_index, 0)
        if max_modes_per_class is not None and rank >= max_modes_per_class:
            continue
        per_class[mode.class_index] = rank + 1
        mode.mode_id = f"{mode.class_name}-{rank}"
        kept.append(mode)
        if max_modes is not None and len(kept) >= max_modes:
            break
    return kept


class Discovery:
    """What every discovery method shares: `fit(...)` searches each eligible class and sets `modes_`; calling the
    method returns them. A method supplies `_eligible`, `_too_few`, `_row_bytes` and `_fit_batch`."""

    name = ""
    modes_: list[FailureMode]
    max_modes_per_class: int | None = None
    max_modes: int | None = None
    passes: int = 1  # searches per class: each pass after the first runs without the slices already found
    max_batch_bytes: int = 2**30
    seed: int = 0

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                 class_names: Sequence[str]) -> list[FailureMode]:
        """Failure modes ranked by score: one signature for every method."""
        return self.fit(embeddings, labels, preds, class_names).modes_

    def fit(self, embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
            class_names: Sequence[str]) -> "Discovery":
        """Search every eligible class, in padded batches of classes, and rank what is found; sets `modes_`."""
        method_log = logging.getLogger(type(self).__module__)
        x, labels, preds = check_inputs(embeddings, labels, preds, class_names)
        wrong = labels != preds
        counts, errors = error_counts(labels, wrong, len(class_names))
        eligible = self._eligible(counts, errors)
        skipped = [class_names[c] for c in torch.nonzero((counts > 0) & ~eligible).flatten().tolist()]
        if skipped:
            method_log.info("%s: skipping %d class(es) with %s: %s", self.name, len(skipped), self._too_few(),
                            name_list(skipped))
        gen = torch.Generator().manual_seed(self.seed)
        cells = max(1, self.max_batch_bytes // self._row_bytes(x.shape[1]))
        modes, keep, classes = [], None, torch.nonzero(eligible).flatten()
        active = torch.ones(len(labels), dtype=torch.bool, device=labels.device)  # not yet in a slice
        for p in range(self.passes):
            found, sub = [], (lambda t: t) if keep is None else (lambda t: t[keep])
            for batch in class_batches(sub(labels), classes, cells):
                found += self._fit_batch(sub(x), sub(wrong), batch, class_names, gen)
            if keep is not None:  # members index the kept samples: map them back to the validation set
                for m in found:
                    m.members = sorted(keep[m.members].tolist())
            modes += found
            if not found or p == self.passes - 1:
                break
            # the next pass searches the classes that had a slice again, without the slices' samples
            active[[i for m in found for i in m.members]] = False
            keep = torch.nonzero(active).flatten()
            counts, errors = error_counts(labels[keep], wrong[keep], len(class_names))
            classes = torch.tensor(sorted({m.class_index for m in found}), device=labels.device)
            classes = classes[self._eligible(counts[classes], errors[classes])]
            if not len(classes):
                break
        self.modes_ = rank_modes(modes, self.max_modes_per_class, self.max_modes)
        method_log.info("%s: %d failure mode(s) in %d searched class(es)%s",
                        self.name, len(self.modes_), int(eligible.sum()), summarize(self.modes_))
        return self

    def _eligible(self, counts: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
        """Which classes are searched, from their sample and error counts."""
        raise NotImplementedError

    def _too_few(self) -> str:
        """Why an ineligible class was skipped, for the log."""
        raise NotImplementedError

    def _row_bytes(self, dim: int) -> int:
        """Bytes one gathered sample costs while a batch of classes is searched."""
        raise NotImplementedError

    def _fit_batch(self, x: torch.Tensor, wrong: torch.Tensor, batch: "ClassBatch", class_names: Sequence[str],
                   gen: torch.Generator) -> list[FailureMode]:
        """The modes of one padded batch of classes."""
        raise NotImplementedError


def error_counts(labels: torch.Tensor, wrong: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples and errors per class."""
    counts = torch.bincount(labels, minlength=n_classes)
    return counts, torch.bincount(labels, weights=wrong.float(), minlength=n_classes).long()


def check_common_knobs(min_support: int, min_error_gap: float, min_errors: int, max_modes: int | None,
                       max_batch_bytes: int = 2**30, error_gap_to: str = "class") -> None:
    """Raise ValueError naming the knob when a shared discovery setting is out of range."""
    check_error_gap_to(error_gap_to)
    if max_batch_bytes < 2**20:
        raise ValueError(f"max_batch_bytes must be >= 1 MiB, got {max_batch_bytes!r}")
    if not isinstance(min_support, int) or min_support < 1:
        raise ValueError(f"min_support must be an int >= 1 (minimum slice size), got {min_support!r}")
    if not 0.0 <= min_error_gap < 1.0:
        raise ValueError(f"min_error_gap must be in [0, 1) (slice minus rest-of-class or class error rate), got "
                         f"{min_error_gap!r}")
    if not isinstance(min_errors, int) or min_errors < 1:
        raise ValueError(f"min_errors must be an int >= 1 (errors a class needs to be searched), got {min_errors!r}")
    if max_modes is not None and (not isinstance(max_modes, int) or max_modes < 1):
        raise ValueError(f"max_modes must be None or an int >= 1, got {max_modes!r}")


def check_max_modes_per_class(value: int | None, allow_none: bool = False) -> None:
    """Raise ValueError naming the knob when the per-class cap is not an int >= 1 (or None, where allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"max_modes_per_class must be {'None or ' if allow_none else ''}an int >= 1, got {value!r}")


def check_error_gap_to(gap_to: str) -> None:
    """Raise ValueError naming the knob when `error_gap_to` is unknown."""
    if gap_to not in GAP_REFERENCES:
        raise ValueError(f"error_gap_to={gap_to!r}: use one of {', '.join(GAP_REFERENCES)} (what a slice's error "
                         "rate is compared with)")


def check_slice_score(kind: str) -> None:
    """Raise ValueError naming the knob when `slice_score` is unknown."""
    if kind not in SLICE_SCORES:
        raise ValueError(f"slice_score must be one of {SLICE_SCORES}, got {kind!r}")


def summarize(modes: list[FailureMode], limit: int = 10) -> str:
    """One indented line per mode (the first `limit`), for the log."""
    lines = [f"\n  {m.class_name}: {m.support} samples, error rate {m.error_rate:.2f} "
             f"(class {m.class_error_rate:.2f}), score {m.score:.1f}" for m in modes[:limit]]
    return "".join(lines) + (f"\n  ... and {len(modes) - limit} more" if len(modes) > limit else "")


def name_list(names: list[str], limit: int = 10) -> str:
    """Comma-separated names, shortened after `limit`."""
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit})" if len(names) > limit else "")
