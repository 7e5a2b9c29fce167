"""Tiny randomly initialised models built from configs through the real code paths (no download).

They make the plumbing tests fast and independent of the shipped checkpoints: an open_clip model saved as a
`local-dir:` folder, and a world-style StableDiffusionPipeline (pixel VAE + CLIP text model + small UNet).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def make_tiny_clip(folder: Path) -> str:
    """Save a random open_clip model as a local-dir folder; returns the model name to load it with."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def make_tiny_world_pipeline(folder: Path, clip_name: str) -> Path:
    """A world-architecture diffusers pipeline (random UNet) conditioned on the tiny CLIP's text tower."""
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel

    from blindspot.clip import load_clip
    from blindspot.world.pixel_vae import PixelUnshuffleAutoencoder
    from blindspot.world.text_encoder import clip_tokenizer, open_clip_text_to_transformers
    from blindspot.world.train_diffusion import make_pipeline

    torch.manual_seed(0)
    clip = load_clip(clip_name)
    text = open_clip_text_to_transformers(clip.model)
    unet = UNet2DConditionModel(sample_size=16, in_channels=12, out_channels=12, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    scheduler = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                            steps_offset=1)
    pipe = make_pipeline(text, clip_tokenizer(24, folder / "vocab"), PixelUnshuffleAutoencoder(scaling_factor=1.6),
                         unet, scheduler)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def make_tiny_sd_pipeline(folder: Path) -> Path:
    """A Stable-Diffusion-architecture pipeline (UNet, AutoencoderKL, CLIP text model) with random weights."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from blindspot.world.text_encoder import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(16, 16), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=16, projection_dim=32,
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(16, folder / "vocab"),
                                   unet=unet, scheduler=DPMSolverMultistepScheduler(steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"
