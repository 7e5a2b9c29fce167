"""Apply a function to images of a dataset in batches (predictions, features) without holding them all."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


def apply_batched(fn: Callable[[torch.Tensor], torch.Tensor], get_images: Callable[[list[int]], torch.Tensor],
                  indices: Sequence[int], batch_size: int = 256) -> torch.Tensor:
    """fn(images of indices[i:i + batch_size]) for every batch, concatenated on the CPU (no gradients)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    indices = [int(i) for i in indices]
    out = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            out.append(fn(get_images(indices[start : start + batch_size])).detach().cpu())
    if not out:
        raise ValueError("apply_batched got no indices")
    return torch.cat(out)
