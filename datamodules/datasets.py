"""Map-style datasets that yield the batch contract: uint8 image, label, group, index, weight."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from blindspot.images import DEFAULT_INTERPOLATION, load_image

log = logging.getLogger(__name__)


def _item(image: torch.Tensor, label: int, group: int, index: int, weight: float,
          loss_groups: torch.Tensor | None = None, i: int = 0) -> dict:
    item = {"image": image, "label": label, "group": group, "index": index, "weight": weight}
    if loss_groups is not None:  # groups the loss optimises over (e.g. discovered), set by the datamodule
        item["loss_group"] = int(loss_groups[i])
    return item


def flip_for(index: int, seed: int) -> bool:
    """A deterministic coin per (sample, epoch seed): augmentation that a resumed run repeats exactly."""
    return ((index * 2654435761 + seed * 40503) >> 13) & 1 == 1


class TensorImageDataset(Dataset):
    """Images already in memory (uint8 [n, 3, h, w]) with labels and groups."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None,
                 hflip: bool = False):
        self.images, self.labels = images, labels
        self.groups = groups if groups is not None else torch.full_like(labels, -1)
        self.weights = torch.ones(len(labels))
        self.loss_groups: torch.Tensor | None = None
        self.hflip, self.flip_seed = hflip, 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        if self.hflip and flip_for(i, self.flip_seed):
            image = image.flip(-1)
        return _item(image, int(self.labels[i]), int(self.groups[i]), i, float(self.weights[i]), self.loss_groups, i)


class FileImageDataset(Dataset):
    """Images read from files on access (as RGB), squashed to a square side; unreadable files raise."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int], groups: Sequence[int] | None = None,
                 image_size: int = 224, hflip: bool = False, index_offset: int = 0,
                 interpolation: str = DEFAULT_INTERPOLATION):
        self.paths = [str(p) for p in paths]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        self.groups = torch.as_tensor(list(groups), dtype=torch.long) if groups is not None else torch.full_like(
            self.labels, -1)
        self.weights = torch.ones(len(self.labels))
        self.loss_groups: torch.Tensor | None = None
        self.image_size, self.hflip, self.index_offset, self.flip_seed = image_size, hflip, index_offset, 0
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        image = load_image(self.paths[i], self.image_size, self.interpolation)
        if self.hflip and flip_for(self.index_offset + i, self.flip_seed):
            image = image.flip(-1)
        return _item(image, int(self.labels[i]), int(self.groups[i]), self.index_offset + i, float(self.weights[i]),
                     self.loss_groups, i)

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [k, 3, s, s] of some items (no augmentation)."""
        return torch.stack([load_image(self.paths[i], self.image_size, self.interpolation) for i in indices])
