"""timm backbones by name, with clear answers for unknown names and for weights that are not on this machine."""

from __future__ import annotations

import difflib
import os

import torch


class BackboneWeightsError(FileNotFoundError):
    """Pretrained weights were asked for but are not available offline."""


def create_backbone(name: str, num_classes: int, pretrained: bool = False, pretrained_path: str | None = None,
                    kwargs: dict | None = None) -> torch.nn.Module:
    """`timm.create_model` with a helpful error for unknown names and missing weights."""
    import timm

    kwargs = dict(kwargs or {})
    if not name.startswith("hf-hub:") and not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise ValueError(f"unknown timm model {name!r} (model.backbone); did you mean {close}? "
                         "`timm.list_models('*resnet*')` lists the names")
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise BackboneWeightsError(f"model.pretrained_path={pretrained_path!r} does not exist: point it at a "
                                       f"local .safetensors/.pth file of {name!r} weights")
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay={"file": pretrained_path}, **kwargs)
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:  # the caller holds the hub offline: only the local cache (there is no network here)
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as err:  # timm/hub raise several kinds for "not cached"
        raise BackboneWeightsError(
            f"pretrained weights for timm model {name!r} are not on this machine and no model hub is reachable. "
            f"Download them elsewhere (`timm.create_model('{name}', pretrained=True)` fills "
            "~/.cache/huggingface) and copy the cache here, or set model.pretrained_path=/path/to/weights, "
            f"or train from scratch with model.pretrained=false. ({type(err).__name__}: {err})") from err


def small_image_stem(model: torch.nn.Module, stride: int) -> torch.nn.Module:
    """Swap a ResNet-style stem (7x7/2 conv + 2x max-pool) for a 3x3/1 conv, keeping the pool when stride is 2."""
    conv, pool = getattr(model, "conv1", None), getattr(model, "maxpool", None)
    if not isinstance(conv, torch.nn.Conv2d) or pool is None:
        raise ValueError(f"model.stem_stride needs a ResNet-style backbone (conv1 + maxpool); "
                         f"{type(model).__name__} has none: set model.stem_stride=null")
    if stride not in (1, 2):
        raise ValueError(f"model.stem_stride must be null, 1 or 2, not {stride!r}")
    model.conv1 = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, 1, 1, bias=False)
    if stride == 1:
        model.maxpool = torch.nn.Identity()
    return model
