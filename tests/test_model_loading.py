"""Real-model code paths with tiny randomly initialised components (no download), and missing-weight errors."""

from __future__ import annotations

import json

import pytest
import torch

from blindspot.clip import WeightsNotFoundError, load_clip
from blindspot.generation.backends import DiffusersText2Image, resolve_dtype


@pytest.fixture(scope="module")
def tiny_sd_pipeline(tmp_path_factory):
    """A Stable-Diffusion-architecture pipeline with random weights, saved to a folder."""
    from tests.tiny_models import make_tiny_sd_pipeline

    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd"))


def test_autopipeline_backend_generates_seeded_images(tiny_sd_pipeline):
    backend = DiffusersText2Image(str(tiny_sd_pipeline), num_inference_steps=2, height=16, width=16, batch_size=2)
    out = backend.generate(["a red star", "a cat", "a dog"], [1, 2, 3])
    assert out.images.shape == (3, 3, 16, 16)
    assert type(backend.pipe).__name__ == "StableDiffusionPipeline"
    alone = backend.generate(["a cat"], [2]).images[0]
    assert torch.allclose(alone, out.images[1], atol=1e-5)  # an image depends on (prompt, seed) only
    assert not torch.allclose(out.images[0], backend.generate(["a red star"], [9]).images[0])


def test_generation_halves_the_batch_on_out_of_memory(tiny_sd_pipeline, monkeypatch):
    backend = DiffusersText2Image(str(tiny_sd_pipeline), num_inference_steps=1, height=16, width=16, batch_size=4)
    real, sizes = backend._call, []

    def flaky(prompts, seeds):
        sizes.append(len(prompts))
        if len(prompts) > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(prompts, seeds)

    monkeypatch.setattr(backend, "_call", flaky)
    out = backend.generate(["a"] * 3, [1, 2, 3])
    assert out.images.shape[0] == 3 and backend.batch_size == 1 and sizes[:3] == [3, 2, 1]


def test_missing_generator_weights_say_what_to_do(tmp_path):
    backend = DiffusersText2Image("some-org/not-downloaded-model", config_key="generator.model")
    with pytest.raises(WeightsNotFoundError, match="generator.model"):
        backend.load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsNotFoundError, match="model_index.json"):
        DiffusersText2Image(str(tmp_path / "empty")).load()


def test_open_clip_loads_a_tiny_random_model_from_a_file(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "tiny-test-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfgs")
    model = open_clip.create_model("tiny-test-clip")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    clip = load_clip("tiny-test-clip", pretrained=str(tmp_path / "w.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, clip.model.state_dict()[k])
    emb = clip.encode_images(torch.randint(0, 255, (3, 3, 24, 24), dtype=torch.uint8))  # resized to 16
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert clip.encode_texts(["a red star", "a cat"]).shape == (2, 16)


def test_missing_clip_weights_say_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="clip.pretrained"):
        load_clip("ViT-B-32", pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(ValueError, match="unknown CLIP model"):
        load_clip("ViT-Nope-1", pretrained=None)


@pytest.mark.parametrize("stride,side", [(None, 1), (2, 2), (1, 4)])
def test_small_image_stem_keeps_more_resolution(stride, side):
    from lightning_modules.backbones import create_backbone, small_image_stem

    kwargs = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}
    net = create_backbone("resnet18", 6, kwargs=kwargs)
    net = net if stride is None else small_image_stem(net, stride)
    features = net.forward_features(torch.zeros(2, 3, 32, 32))
    assert features.shape[-1] == side and net(torch.zeros(2, 3, 32, 32)).shape == (2, 6)


def test_small_image_stem_names_the_knob_for_other_backbones():
    from lightning_modules.backbones import create_backbone, small_image_stem

    with pytest.raises(ValueError, match="model.stem_stride"):
        small_image_stem(create_backbone("vit_tiny_patch16_224", 6, kwargs={"img_size": 32, "patch_size": 8}), 2)


def test_channels_last_changes_the_memory_layout_not_the_logits():
    from functools import partial

    from lightning_modules.classifier import ImageClassifier

    kwargs = dict(backbone="resnet18", num_classes=6, optimizer=partial(torch.optim.AdamW, lr=1e-3), stem_stride=2,
                  backbone_kwargs={"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8})
    plain, fast = ImageClassifier(**kwargs).eval(), ImageClassifier(**kwargs, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert fast.net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(images), plain(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("capabilities, expected", [({"avx512_bf16": True}, torch.bfloat16),
                                                    ({"amx_bf16": True}, torch.bfloat16),
                                                    ({"avx512_bf16": False}, torch.float32)])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_computes_it(monkeypatch, caplog, capabilities, expected):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    with caplog.at_level("INFO"):
        assert resolve_dtype("auto", "cpu") == expected
    assert f"generator.dtype=auto: {str(expected).removeprefix('torch.')} on cpu" in caplog.text  # the run log says which
    assert DiffusersText2Image("unused", dtype="auto").dtype == expected


def test_bfloat16_without_hardware_support_warns_and_a_bad_dtype_names_the_key(monkeypatch, caplog):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {})
    with caplog.at_level("WARNING"):
        assert resolve_dtype("bf16", "cpu", "editor.dtype") == torch.bfloat16
    assert "editor.dtype=auto or float32" in caplog.text
    with pytest.raises(ValueError, match="generator.dtype='half'"):
        DiffusersText2Image("unused", dtype="half")
