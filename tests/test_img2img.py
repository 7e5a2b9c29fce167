"""Image-to-image editing through AutoPipelineForImage2Image (tiny SD 1.5 architecture, the world pipeline), and
the size checks of both diffusers backends."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from blindspot.generation.backends import DiffusersImage2Image, DiffusersText2Image

ROOT = Path(__file__).resolve().parents[1]
WORLD = ROOT / "weights" / "world_diffusion"


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A Stable-Diffusion-architecture pipeline with random weights, saved to a folder."""
    from tests.tiny_models import make_tiny_sd_pipeline

    return str(make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd")))


def real_images(n: int, seed: int = 11) -> torch.Tensor:
    """World renders as float [n, 3, 32, 32] in [0, 1]."""
    from blindspot.world.corpus import corpus_batch
    from blindspot.world.spec import WorldSpec

    return corpus_batch(WorldSpec(), n, seed).images.float() / 255.0


def test_editing_is_seeded_per_image_and_keeps_the_size(tiny_sd):
    editor = DiffusersImage2Image(tiny_sd, strength=0.5, num_inference_steps=4, batch_size=2)
    images = real_images(3)[..., :16, :16].contiguous()
    out = editor.edit(images, ["a red star", "a cat", "a dog"], [1, 2, 3])
    assert type(editor.pipe).__name__ == "StableDiffusionImg2ImgPipeline"
    assert out.images.shape == (3, 3, 16, 16) and torch.isfinite(out.images).all()
    alone = editor.edit(images[1:2], ["a cat"], [2]).images[0]
    assert torch.allclose(alone, out.images[1], atol=1e-5)  # an edit depends on (image, prompt, seed) only
    assert not torch.allclose(out.images[0], editor.edit(images[:1], ["a red star"], [9]).images[0])
    # uint8 input is the same image as its float version
    as_uint8 = editor.edit((images[:1] * 255).round().to(torch.uint8), ["a red star"], [1]).images[0]
    assert torch.allclose(as_uint8, out.images[0], atol=2e-2)
    mixed = editor.edit(images, ["a red star", "a cat", "a dog"], [1, 2, 3], strength=[0.5, 1.0, 0.5]).images
    assert torch.allclose(mixed[[0, 2]], out.images[[0, 2]], atol=1e-5)  # one strength per image, order kept
    assert torch.allclose(mixed[1], editor.edit(images[1:2], ["a cat"], [2], strength=1.0).images[0], atol=1e-5)
    resized = DiffusersImage2Image(tiny_sd, strength=0.5, num_inference_steps=2, height=8, width=8)
    assert resized.edit(images[:2], ["a", "b"], [1, 2]).images.shape == (2, 3, 8, 8)


def test_an_editor_shares_the_text_to_image_weights(tiny_sd):
    generator = DiffusersText2Image(tiny_sd, num_inference_steps=4, height=16, width=16)
    editor = DiffusersImage2Image.from_text2image(generator, strength=0.75)
    assert editor.pipe.unet is generator.pipe.unet and editor.pipe.vae is generator.pipe.vae
    assert editor.pipe.scheduler is not generator.pipe.scheduler  # schedulers keep per-call state
    before = generator.generate(["a cat"], [5]).images
    editor.edit(real_images(1)[..., :16, :16], ["a cat"], [5])
    assert torch.allclose(generator.generate(["a cat"], [5]).images, before)  # editing did not disturb generation
    assert editor.steps == 4 and editor.strength == 0.75


def test_bad_editor_settings_name_the_config_key(tiny_sd):
    with pytest.raises(ValueError, match="editor.strength"):
        DiffusersImage2Image(tiny_sd, strength=0.0)
    with pytest.raises(ValueError, match="leaves no denoising step"):
        DiffusersImage2Image(tiny_sd, strength=0.2, num_inference_steps=4)
    with pytest.raises(ValueError, match="editor.model"):
        DiffusersImage2Image(None)
    editor = DiffusersImage2Image(tiny_sd, strength=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match="one prompt and one seed per image"):
        editor.edit(real_images(2), ["a"], [1, 2])


def test_a_wrong_output_size_names_height_and_width(tiny_sd, monkeypatch):
    generator = DiffusersText2Image(tiny_sd, num_inference_steps=1, height=16, width=16)
    monkeypatch.setattr(generator, "_call", lambda prompts, seeds: torch.zeros(len(prompts), 3, 8, 8))
    with pytest.raises(ValueError, match=r"generator.height and generator.width"):
        generator.generate(["a"], [1])
    with pytest.raises(ValueError, match=r"generator.height and generator.width"):  # diffusers' own check, named
        DiffusersText2Image(tiny_sd, num_inference_steps=1, height=13, width=13).generate(["a"], [1])
    # an image the VAE cannot take at its size: the pipeline returns a smaller one, and the error says so
    editor = DiffusersImage2Image(tiny_sd, strength=0.5, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"editor.height and editor.width"):
        editor.edit(real_images(1)[..., :15, :15].contiguous(), ["a"], [1])


def test_editor_configs_compose_and_instantiate(compose_cfg, tiny_sd):
    from hydra.utils import instantiate

    for name in ("world", "sd15"):
        cfg = compose_cfg([f"+editor={name}", f"editor.model={tiny_sd}"])
        editor = instantiate(cfg.editor)
        assert isinstance(editor, DiffusersImage2Image) and 0 < editor.strength <= 1 and editor._pipe is None
    assert instantiate(compose_cfg(["+editor=sd15"]).editor).height == 512


@pytest.mark.skipif(not (WORLD / "model_index.json").is_file(), reason="no shipped world diffusion model")
def test_the_world_pipeline_edits_real_images():
    editor = DiffusersImage2Image(str(WORLD), strength=0.3, num_inference_steps=10, guidance_scale=4.0)
    images = real_images(4)
    prompts = ["a photo of a purple star"] * 4
    light = editor.edit(images, prompts, [0, 1, 2, 3]).images
    heavy = editor.edit(images, prompts, [0, 1, 2, 3], strength=1.0).images
    assert light.shape == images.shape and torch.isfinite(light).all()
    # the pixel "VAE" encodes exactly: a light edit stays near its own source, a full-strength one does not
    own = (light - images).abs().mean((1, 2, 3))
    assert (own < (heavy - images).abs().mean((1, 2, 3))).all()
    others = (light[:, None] - images[None]).abs().mean((2, 3, 4)) + torch.eye(4) * 1e9
    assert (own < others.min(1).values).all()
