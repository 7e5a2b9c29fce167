"""The world diffusion training script: a tiny UNet trains, resumes exactly, and exports a loadable pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parents[1] / "conf" / "world"
TINY_UNET = ["unet.block_out_channels=[32,32]", "unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
             "unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "unet.norm_num_groups=8"]


def diffusion_cfg(tmp_path: Path, steps: int, *extra: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train_diffusion", overrides=[
            *TINY_UNET, f"steps={steps}", "batch_size=4", "warmup=1", "threads=1", "sample_every=1000", "sample_steps=2",
            f"work_dir={tmp_path / 'work'}", f"out_dir={tmp_path / 'out'}", *extra])


def test_diffusion_training_resumes_exactly_and_exports_a_pipeline(tmp_path, monkeypatch):
    """A run killed after step 2 (state saved every step) and resumed ends with the weights of an unkilled run."""
    from diffusers import AutoPipelineForText2Image

    from blindspot.world import train_diffusion

    train_diffusion.train(diffusion_cfg(tmp_path / "straight", 3))
    real_batch, calls = train_diffusion.corpus_batch, []

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(train_diffusion, "corpus_batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion.train(diffusion_cfg(tmp_path / "resumed", 3, "checkpoint_minutes=0"))
    assert torch.load(tmp_path / "resumed" / "work" / "state.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(train_diffusion, "corpus_batch", real_batch)
    train_diffusion.train(diffusion_cfg(tmp_path / "resumed", 3))
    a = torch.load(tmp_path / "straight" / "work" / "state.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "work" / "state.pt", weights_only=False)
    assert a["step"] == b["step"] == 3
    for key, value in a["unet"].items():
        assert torch.equal(value, b["unet"][key]), key
    pipe = AutoPipelineForText2Image.from_pretrained(tmp_path / "straight" / "out", torch_dtype=torch.float32)
    out = pipe(["a star on grass"], num_inference_steps=2, height=32, width=32, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    assert (tmp_path / "straight" / "out" / "training.json").is_file()
