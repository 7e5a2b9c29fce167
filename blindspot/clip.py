"""Load CLIP models through open_clip (the world's own or real ones) and embed images and texts."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

WORLD_CLIP = "blindspot-world-clip"
MODEL_CONFIG_DIR = Path(__file__).parent / "world" / "model_configs"
_registered = False


def register_model_configs() -> None:
    """Make the world's open_clip model configs known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are missing locally; the message says what to download and which key to set."""


@dataclass
class ClipModel:
    """An open_clip model with its tokenizer and a tensor preprocessing step built from the same config."""

    model: torch.nn.Module
    tokenizer: Callable
    name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Identifies model + weights for caches."""
        stamp = ""
        if self.pretrained and os.path.isfile(self.pretrained):
            st = os.stat(self.pretrained)
            stamp = f":{st.st_size}:{int(st.st_mtime)}"
        return f"{self.name}:{self.pretrained}{stamp}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images [n, 3, h, w] -> normalised model input."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """L2-normalised image embeddings [n, d] (on CPU, float32)."""
        out = []
        for i in range(0, len(images), batch_size):
            x = self.preprocess(images[i : i + batch_size].to(self.device))
            out.append(F.normalize(self.model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 512) -> torch.Tensor:
        """L2-normalised text embeddings [n, d] (on CPU, float32)."""
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
            out.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else 0


def _check_weights(name: str, pretrained: str | None, config_key: str) -> None:
    import open_clip

    if pretrained is None or os.path.isfile(pretrained) or name.startswith(("local-dir:", "hf-hub:")):
        return
    if pretrained in open_clip.list_pretrained_tags_by_model(name):
        return  # a tag: open_clip looks in its cache (no network here: pre-download it elsewhere)
    raise WeightsNotFoundError(
        f"CLIP weights not found: {pretrained!r} is neither a file nor a known open_clip tag for {name!r}. "
        f"Download them on a machine with network (e.g. `open_clip.create_model('{name}', pretrained='openai')` "
        f"fills the Hugging Face cache) or copy the checkpoint file here, then set `{config_key}=/path/to/file`."
    )


def load_clip(
    name: str = WORLD_CLIP,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    config_key: str = "clip.pretrained",
) -> ClipModel:
    """Build an open_clip model and its transforms together (`create_model_and_transforms`) and wrap it."""
    import open_clip

    register_model_configs()
    if name not in open_clip.list_models() and not name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"unknown CLIP model {name!r}; known: {open_clip.list_models()}")
    _check_weights(name, pretrained, config_key)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision
        )
    except Exception as err:  # open_clip / safetensors / torch raise many kinds for unreadable weights
        if pretrained and os.path.isfile(pretrained):
            raise WeightsNotFoundError(
                f"CLIP weights {pretrained} could not be read into {name!r} ({type(err).__name__}: {err}). The file "
                f"is corrupt or belongs to another model: download it again, or fix `{config_key}` / `clip.name`."
            ) from err
        raise WeightsNotFoundError(
            f"could not load CLIP weights {pretrained!r} for {name!r} and there is no network here: "
            f"download them elsewhere into the Hugging Face cache, or point `{config_key}` at a local file. "
            f"({type(err).__name__}: {err})") from err
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    mean = tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    log.info("loaded CLIP %s (weights: %s)", name, pretrained or "random init")
    return ClipModel(model, tokenizer, name, pretrained, int(size), mean, std)
