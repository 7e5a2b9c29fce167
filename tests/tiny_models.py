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
