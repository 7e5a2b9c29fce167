"""Keep only good generated images: each filter says keep/reject per image and is counted in the report."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Candidates:
    """A batch of generated images and what the filters may look at."""

    images: torch.Tensor  # float [n, 3, h, w] in [0, 1]; may hold NaN
    labels: torch.Tensor  # target class [n]
    prompts: list[str]
    image_emb: torch.Tensor | None = None  # CLIP image embeddings [n, d] (normalised)
    prompt_emb: torch.Tensor | None = None  # CLIP text embeddings of the prompts [n, d]
    class_emb: torch.Tensor | None = None  # CLIP zero-shot class prototypes [k, d]
    probs: torch.Tensor | None = None  # current classifier's class probabilities [n, k]
    contrast: torch.Tensor | None = None  # bool [n]: contrast images (the confusable class in the mode's context)


def seeded_subset(n: int, k: int) -> list[int]:
    """All of range(n), or k of its indices drawn with a fixed seed (sorted)."""
    if n <= k:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].tolist())


class DegenerateFilter:
    """Rejects NaN/inf, blank (near-constant) and saturated images."""

    name, needs = "degenerate", frozenset()

    def __init__(self, min_std: float = 0.02, max_saturated: float = 0.95):
        self.min_std, self.max_saturated = min_std, max_saturated

    def __call__(self, c: Candidates, pool_emb: torch.Tensor | None = None):
        x = c.images
        finite = torch.isfinite(x).flatten(1).all(1)
        clean = torch.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
        std = clean.flatten(1).std(1)
        saturated = ((clean <= 0.0) | (clean >= 1.0)).flatten(1).float().mean(1)
        keep = finite & (std >= self.min_std) & (saturated <= self.max_saturated)
        return keep, {"pixel_std": std}


class ClipAlignmentFilter:
    """Rejects images CLIP does not see as the prompt: low image-prompt similarity, or another class."""

    name, needs = "clip_alignment", frozenset({"clip"})

    def __init__(self, min_similarity: float | None = None, require_class_match: bool = True):
        self.min_similarity, self.require_class_match = min_similarity, require_class_match

    def __call__(self, c: Candidates, pool_emb: torch.Tensor | None = None):
        sim = (c.image_emb * c.prompt_emb).sum(-1)
        keep = torch.ones(len(sim), dtype=torch.bool)
        if self.min_similarity is not None:
            keep &= sim >= self.min_similarity
        scores = {"clip_similarity": sim}
        if self.require_class_match:
            zero_shot = (c.image_emb @ c.class_emb.T).argmax(-1)
            keep &= zero_shot == c.labels
            scores["clip_class"] = zero_shot
        return keep, scores


class ClassifierConfidenceFilter:
    """Drops images the current classifier already gets right with high confidence (nothing to learn), and
    optionally those it finds very unlike the target class (T2I counterfactual pruning). Contrast images are
    exempt from the first rule: they are there to keep their class beside the failing one, right or not."""

    name, needs = "classifier", frozenset({"classifier"})

    def __init__(self, max_confidence: float = 0.95, min_confidence: float = 0.0):
        if not 0.0 <= min_confidence <= max_confidence <= 1.0:
            raise ValueError("classifier filter needs 0 <= min_confidence <= max_confidence <= 1")
        self.max_confidence, self.min_confidence = max_confidence, min_confidence

    def __call__(self, c: Candidates, pool_emb: torch.Tensor | None = None):
        p = c.probs.gather(1, c.labels.view(-1, 1)).flatten()
        easy = p > self.max_confidence
        if c.contrast is not None:
            easy &= ~c.contrast.to(easy.device)
        keep = ~easy & (p >= self.min_confidence)
        return keep, {"target_prob": p}


class NearDuplicateFilter:
    """Rejects images nearly identical (CLIP cosine) to a kept image of this batch or of the existing pool.

    With `max_similarity="auto"` the threshold comes from the real training images (`calibrate`): the
    `real_quantile` of each one's cosine to its nearest same-class neighbour. Two generated images then count as
    duplicates only when they are closer than real images of a class almost ever are, whatever the CLIP model.
    """

    name, needs = "near_duplicate", frozenset({"clip"})

    def __init__(self, max_similarity: float | str = 0.98, real_quantile: float = 0.99, max_real: int = 4000):
        if max_similarity != "auto" and not -1.0 <= float(max_similarity) <= 1.0:
            raise ValueError(f"filters.near_duplicate.max_similarity={max_similarity}: a cosine in [-1, 1], or auto")
        if not 0.0 < real_quantile <= 1.0:
            raise ValueError(f"filters.near_duplicate.real_quantile={real_quantile}: must be in (0, 1]")
        self.max_similarity = None if max_similarity == "auto" else float(max_similarity)  # None: not calibrated
        self.real_quantile, self.max_real = real_quantile, max_real

    @property
    def calibrated(self) -> bool:
        """Whether the threshold is known (a number was given, or calibrate() has run)."""
        return self.max_similarity is not None

    def calibrate(self, real_emb: torch.Tensor, real_labels: torch.Tensor) -> float:
        """Set the threshold from real images' nearest same-class neighbour cosines; returns it."""
        emb, nearest = F.normalize(real_emb.float(), dim=-1), []
        for c in real_labels.unique():
            e = emb[real_labels == c]
            if len(e) > 1:
                sims = e @ e.T
                sims.fill_diagonal_(-1.0)
                nearest.append(sims.max(1).values)
        if not nearest:
            raise ValueError("filters.near_duplicate.max_similarity=auto needs two real images of a class; "
                             "set a number instead (e.g. 0.98)")
        self.max_similarity = float(torch.cat(nearest).quantile(self.real_quantile))
        return self.max_similarity

    def __call__(self, c: Candidates, pool_emb: torch.Tensor | None = None):
        if not self.calibrated:
            raise RuntimeError("filters.near_duplicate.max_similarity=auto: calibrate() on real images first")
        emb = F.normalize(c.image_emb, dim=-1)
        keep = torch.ones(len(emb), dtype=torch.bool)
        nearest = torch.full((len(emb),), -1.0)
        if pool_emb is not None and len(pool_emb):
            nearest = (emb @ F.normalize(pool_emb, dim=-1).T).max(1).values
            keep &= nearest < self.max_similarity
        sims = emb @ emb.T
        for i in range(len(emb)):  # greedy: an image survives if no earlier kept image is its near twin
            if keep[i]:
                earlier = sims[i, :i][keep[:i]]
                if len(earlier) and earlier.max() >= self.max_similarity:
                    keep[i] = False
                nearest[i] = max(nearest[i].item(), sims[i, :i].max().item() if i else -1.0)
        return keep, {"nearest_similarity": nearest}


def apply_filters(filters: list, candidates: Candidates, pool_emb: torch.Tensor | None = None):
    """Run filters in order on the survivors; returns (keep mask, first rejecting filter per image, scores)."""
    n = len(candidates.labels)
    keep = torch.ones(n, dtype=torch.bool)
    rejected_by: list[str | None] = [None] * n
    scores: dict[str, list] = {}
    for f in filters:
        alive = keep.nonzero().flatten()
        if not len(alive):
            break
        sub = Candidates(**{k: (v[alive] if isinstance(v, torch.Tensor) and k != "class_emb" else v)
                            for k, v in vars(candidates).items()})
        sub.prompts = [candidates.prompts[i] for i in alive.tolist()]
        ok, s = f(sub, pool_emb)
        for name, values in s.items():
            full = scores.setdefault(name, [None] * n)
            for j, i in enumerate(alive.tolist()):
                full[i] = float(values[j])
        for j, i in enumerate(alive.tolist()):
            if not ok[j]:
                keep[i] = False
                rejected_by[i] = f.name
    return keep, rejected_by, scores
