"""The world's captioned pretraining corpus: every class with every attribute value, uniformly."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .render import render
from .spec import BACKGROUNDS, CAPTION_TEMPLATES, CLASSES, COLORS, SIZES, WorldSpec, caption


@dataclass
class CorpusBatch:
    """Rendered images (uint8 [n, 3, s, s]) with their attribute indices and captions."""

    images: torch.Tensor
    classes: torch.Tensor
    backgrounds: torch.Tensor
    colors: torch.Tensor
    sizes: torch.Tensor
    captions: list[str]


def _global_codes(values: tuple[str, ...], universe: tuple[str, ...]) -> torch.Tensor:
    return torch.tensor([universe.index(v) for v in values])


def corpus_batch(spec: WorldSpec, n: int, seed: int, drop_prob: float = 0.5) -> CorpusBatch:
    """n uniformly mixed images with captions; with drop_prob a caption names only some attributes.

    Indices in the returned batch are into the spec's own lists (spec.classes, spec.backgrounds, ...).
    """
    g = torch.Generator().manual_seed(int(seed))
    cls = torch.randint(len(spec.classes), (n,), generator=g)
    bg = torch.randint(len(spec.backgrounds), (n,), generator=g)
    col = torch.randint(len(spec.colors), (n,), generator=g)
    size = torch.randint(len(spec.sizes), (n,), generator=g)
    images = render(
        _global_codes(spec.classes, CLASSES)[cls],
        _global_codes(spec.backgrounds, BACKGROUNDS)[bg],
        _global_codes(spec.colors, COLORS)[col],
        _global_codes(spec.sizes, SIZES)[size],
        seed=seed,
        image_size=spec.image_size,
    )
    template = torch.randint(len(CAPTION_TEMPLATES), (n,), generator=g)
    partial = torch.rand(n, generator=g) < drop_prob
    keep = torch.rand(n, 3, generator=g) < 0.5
    captions = []
    for i in range(n):
        k_bg, k_col, k_size = (keep[i] if partial[i] else torch.ones(3, dtype=torch.bool)).tolist()
        captions.append(
            caption(
                spec.classes[cls[i]],
                background=spec.backgrounds[bg[i]] if k_bg else None,
                color=spec.colors[col[i]] if k_col else None,
                size=spec.sizes[size[i]] if k_size else None,
                template=CAPTION_TEMPLATES[template[i]],
            )
        )
    return CorpusBatch(images, cls, bg, col, size, captions)
