"""A lossless space-to-depth "autoencoder" that fills the VAE slot of a Stable Diffusion pipeline.

The world diffusion UNet runs at half resolution with 4x the channels (32x32x3 <-> 16x16x12): as cheap as
a latent model, with nothing to train and nothing lost. It speaks the AutoencoderKL interface the stock
diffusers pipelines call (`encode(...).latent_dist`, `decode(...)`, `config.scaling_factor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin  # ModelMixin in this namespace lets diffusers load the class
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput


class _PointDistribution:
    """A 'latent distribution' with all mass on one point (the transform is deterministic)."""

    def __init__(self, latents: torch.Tensor):
        self.latents = latents

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.latents

    def mode(self) -> torch.Tensor:
        return self.latents


@dataclass
class EncoderOutput(BaseOutput):
    """Output of `encode`: the latent 'distribution'."""

    latent_dist: _PointDistribution


@dataclass
class DecoderOutput(BaseOutput):
    """Output of `decode`: images in [-1, 1]."""

    sample: torch.Tensor


class PixelUnshuffleAutoencoder(ModelMixin, ConfigMixin):
    """Pixel (un)shuffle by `factor` as an exact, parameter-free autoencoder."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        factor: int = 2,
        scaling_factor: float = 1.0,
        sample_size: int = 32,
        latent_channels: int = 12,
        block_out_channels: tuple[int, ...] = (12, 12),
        force_upcast: bool = False,
    ):
        super().__init__()
        # diffusers pipelines derive the spatial scale from len(block_out_channels): 2 ** (len - 1) == factor
        if factor & (factor - 1) or 2 ** (len(block_out_channels) - 1) != factor:
            raise ValueError(f"factor={factor} needs a power of two and len(block_out_channels) == log2(factor) + 1")
        if latent_channels != in_channels * factor * factor:
            raise ValueError(f"latent_channels must be in_channels * factor**2 = {in_channels * factor * factor}")
        self._dtype_anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # carries dtype/device

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images in [-1, 1] -> latents (unscaled, as AutoencoderKL returns them)."""
        z = F.pixel_unshuffle(x, self.config.factor)
        return EncoderOutput(_PointDistribution(z)) if return_dict else (_PointDistribution(z),)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        """Latents (unscaled) -> images in [-1, 1]."""
        x = F.pixel_shuffle(z, self.config.factor)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode then decode (the identity)."""
        return self.decode(self.encode(x).latent_dist.mode()).sample
