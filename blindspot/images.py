"""Reading, checking, resizing and writing image files as uint8 tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# interpolation names (timm's / torchvision's spelling) -> PIL resampling filters
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
DEFAULT_INTERPOLATION = "bicubic"


class UnreadableImageError(ValueError):
    """An image file is missing or does not decode."""


def check_interpolation(interpolation: str, key: str = "data.interpolation") -> str:
    """The interpolation name, or an error naming the config key and the known names."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"{key}={interpolation!r}: choose one of {sorted(INTERPOLATIONS)}")
    return interpolation


def resize_pil(im: Image.Image, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> Image.Image:
    """An RGB PIL image squashed to size x size (unchanged when it already is)."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), INTERPOLATIONS[check_interpolation(interpolation)])


def load_image(path: str | os.PathLike, size: int | None = None,
               interpolation: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """uint8 [3, s, s] RGB tensor of an image file (grayscale, palette, RGBA... become RGB), resized when given."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = resize_pil(im, size, interpolation)
            array = np.asarray(im, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise UnreadableImageError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def resize_images(images: torch.Tensor, size: int, interpolation: str = DEFAULT_INTERPOLATION) -> torch.Tensor:
    """uint8 [n, 3, h, w] -> uint8 [n, 3, size, size], pixel for pixel what `load_image` makes of the same image."""
    if images.dtype != torch.uint8:
        raise TypeError(f"resize_images takes uint8 images, got {images.dtype} (use to_uint8 first)")
    if images.shape[-2:] == (size, size):
        return images
    check_interpolation(interpolation)
    out = []
    for image in images.cpu():
        im = Image.fromarray(image.permute(1, 2, 0).numpy())
        out.append(torch.from_numpy(np.asarray(resize_pil(im, size, interpolation), dtype=np.uint8).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous().to(images.device) if out else \
        images.new_zeros((0, 3, size, size))


@dataclass(frozen=True)
class Preprocessing:
    """How a classifier wants its input: square side, resize filter, and normalisation of [0, 1] pixels."""

    image_size: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float, quantised as a saved PNG would be) images resized as the loaders resize files."""
        images = images if images.dtype == torch.uint8 else to_uint8(images)
        return resize_images(images, self.image_size, self.interpolation)

    def as_dict(self) -> dict:
        """Plain types (for logs, reports and checkpoints)."""
        return {"image_size": self.image_size, "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std)}


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


def as_tuple(values: Sequence[float]) -> tuple[float, ...]:
    """Config lists (ListConfig, list, tuple) as a tuple of floats."""
    return tuple(float(v) for v in values)
