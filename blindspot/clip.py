"""Load CLIP models through open_clip (the world's own or real ones) and embed images and texts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

WORLD_CLIP = "blindspot-world-clip"
MODEL_CONFIG_DIR = Path(__file__).parent / "world" / "model_configs"
PREPROCESS_SUFFIX = ".preprocess.json"  # <model config name>.preprocess.json: {"preprocess_cfg": {...}}
PREPROCESS_CFGS: dict[str, dict] = {}   # model config name -> open_clip preprocess cfg its weights were trained with
_registered = False


def register_model_configs() -> None:
    """Make the world's open_clip model configs, and the preprocessing each was trained with, known (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)  # open_clip skips the *.preprocess.json files (no model keys)
        for path in sorted(MODEL_CONFIG_DIR.glob(f"*{PREPROCESS_SUFFIX}")):
            PREPROCESS_CFGS[path.name[: -len(PREPROCESS_SUFFIX)]] = dict(json.loads(path.read_text())["preprocess_cfg"])
        _registered = True


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are missing locally; the message says what to download and which key to set."""


@dataclass
class ClipModel:
    """An open_clip model with its tokenizer and the eval preprocess transform open_clip built with it."""

    model: torch.nn.Module
    tokenizer: Callable
    name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: Callable | None = None  # open_clip's eval preprocess (PIL or tensor in, normalised tensor out)
    preprocess_cfg: dict = field(default_factory=dict)  # the config open_clip built `transform` from

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def fingerprint(self) -> str:
        """Identifies model + weights + preprocessing for caches."""
        stamp = ""
        if self.pretrained and os.path.isfile(self.pretrained):
            st = os.stat(self.pretrained)
            stamp = f":{st.st_size}:{int(st.st_mtime)}"
        steps = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.transform))  # no object addresses: stable across runs
        recipe = json.dumps({"cfg": self.preprocess_cfg, "transform": steps}, sort_keys=True, default=str)
        return f"{self.name}:{self.pretrained}{stamp}:pp-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images [n, 3, h, w] -> model input, through open_clip's transform, batched."""
        if self.transform is None:  # a bare ClipModel: squash-resize and normalise
            return _squash_and_normalize(images, self.image_size, self.mean, self.std)
        try:
            return _apply_to_batch(self.transform, images)
        except (TypeError, AttributeError, ValueError):  # a step that needs PIL images (e.g. ResizeKeepRatio)
            return _apply_per_pil_image(self.transform, images)

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


def _apply_to_batch(transform: Callable, images: torch.Tensor) -> torch.Tensor:
    """open_clip's eval transform on a batch tensor: geometric steps on the pixels as given (uint8 stays uint8,
    as PIL would), then [0, 1] floats where the transform converts to a tensor, then its Normalize."""
    from torchvision.transforms import Normalize, ToTensor

    steps = getattr(transform, "transforms", [transform])
    x = images
    for step in steps:
        if isinstance(step, ToTensor):  # open_clip's MaybeToTensor: PIL -> [0, 1] floats
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        elif isinstance(step, Normalize):
            x = step(x.float() / 255.0 if x.dtype == torch.uint8 else x.float())
        elif getattr(step, "__name__", "") == "_convert_to_rgb" or type(step).__name__ == "MaybeConvertMode":
            continue  # tensors here are RGB already
        else:
            x = step(x)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def _apply_per_pil_image(transform: Callable, images: torch.Tensor) -> torch.Tensor:
    """open_clip's eval transform image by image on PIL images (the slow, always-valid path)."""
    from PIL import Image

    from .images import to_uint8

    pixels = images if images.dtype == torch.uint8 else to_uint8(images)
    out = [transform(Image.fromarray(im.permute(1, 2, 0).cpu().numpy())) for im in pixels]
    return torch.stack(out).to(images.device)


def _squash_and_normalize(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]):
    """uint8 or [0, 1] images squashed to size x size (bicubic, antialiased) and normalised."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return (x - torch.tensor(mean, device=x.device).view(1, -1, 1, 1)) / torch.tensor(std, device=x.device).view(
        1, -1, 1, 1)


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
    preprocess_cfg: dict | None = None,
) -> ClipModel:
    """Build an open_clip model and its eval transform together (`create_model_and_transforms`) and wrap them.

    The transform is open_clip's own for these weights (a pretrained tag's config, a local-dir/hf-hub
    `open_clip_config.json`, or a Blindspot model config's `<name>.preprocess.json`); `preprocess_cfg`
    (keys of open_clip's PreprocessCfg: mean, std, interpolation, resize_mode) overrides it."""
    import open_clip

    register_model_configs()
    if name not in open_clip.list_models() and not name.startswith(("local-dir:", "hf-hub:")):
        raise ValueError(f"unknown CLIP model {name!r}; known: {open_clip.list_models()}")
    _check_weights(name, pretrained, config_key)
    overrides = {**PREPROCESS_CFGS.get(name, {}), **dict(preprocess_cfg or {})}
    unknown = sorted(set(overrides) - {"mean", "std", "interpolation", "resize_mode"})
    if unknown:
        raise ValueError(f"CLIP preprocess config keys {unknown} are not open_clip's; use mean, std, interpolation, "
                         "resize_mode")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, precision=precision,
            image_mean=overrides.get("mean"), image_std=overrides.get("std"),
            image_interpolation=overrides.get("interpolation"), image_resize_mode=overrides.get("resize_mode"),
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
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", visual.image_size)
    size = size if isinstance(size, int) else size[0]
    mean = tuple(cfg.get("mean") or getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = tuple(cfg.get("std") or getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    source = pretrained or ("the folder's" if name.startswith(("local-dir:", "hf-hub:")) else "random init")
    log.info("loaded CLIP %s (weights: %s; preprocess: %s)", name, source, cfg)
    return ClipModel(model, tokenizer, name, pretrained, int(size), mean, std, transform=preprocess,
                     preprocess_cfg=cfg)
