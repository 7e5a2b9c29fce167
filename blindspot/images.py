"""Reading, checking and writing image files as uint8 tensors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError


class UnreadableImageError(ValueError):
    """An image file is missing or does not decode."""


def load_image(path: str | os.PathLike, size: int | None = None) -> torch.Tensor:
    """uint8 [3, s, s] RGB tensor of an image file, resized to size x size when given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            array = np.asarray(im, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def find_unreadable(paths: Iterable[str | os.PathLike]) -> list[tuple[str, str]]:
    """(path, reason) for every file that is missing or fails to decode."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
            bad.append((str(p), str(err) or type(err).__name__))
    return bad


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write a uint8 [3, h, w] tensor as PNG atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).save(tmp, format="PNG")
    os.replace(tmp, path)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (NaN becomes 0)."""
    return (torch.nan_to_num(images.float(), nan=0.0).clamp(0, 1) * 255).round().to(torch.uint8)
