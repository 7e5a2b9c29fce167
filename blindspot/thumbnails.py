"""Small PNG grids of images for reports."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .images import save_png


def save_grid(images: torch.Tensor, path: str | os.PathLike, ncol: int = 8, scale: int = 2, pad: int = 1) -> None:
    """Save uint8 images [n, 3, h, w] as one grid PNG (upscaled `scale`x with nearest neighbour)."""
    from torchvision.utils import make_grid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images.float() / 255.0, nrow=min(ncol, max(1, len(images))), padding=pad, pad_value=1.0)
    if scale > 1:
        grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_png((grid * 255).round().clamp(0, 255).to(torch.uint8), path)
