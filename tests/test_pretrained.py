"""Pretrained timm backbones: the model=pretrained preset, local weight files and the local hub cache, refusals of
architecture changes, clear errors for missing or foreign weights, and preprocessing from timm's pretrained config.

The weights are real timm architectures at random init, saved to disk as a user would have them: timm's own
`test_resnet` (0.5 M parameters; its pretrained config says 160 px, bilinear, mean/std 0.5, unlike ImageNet's)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest
import torch

ARCH = "test_resnet"  # a real timm model with a pretrained config (timm/test_resnet.r160_in1k)
OPT = partial(torch.optim.AdamW, lr=1e-3)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict:
    """Random `test_resnet` weights as .safetensors and .pth files, and the state dict they hold."""
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in timm.create_model(ARCH).state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.pth")
    return {"safetensors": str(folder / "model.safetensors"), "pth": str(folder / "pytorch_model.pth"),
            "state": state}


def _same_backbone(net: torch.nn.Module, state: dict) -> bool:
    """Every non-head tensor of `net` equals the saved one."""
    own = net.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))


def test_the_preset_builds_timms_architecture_with_its_weights_and_preprocessing(compose_cfg, weights):
    import hydra
    import timm
    from timm.data import resolve_model_data_config

    cfg = compose_cfg(["model=pretrained", f"model.backbone={ARCH}", f"model.pretrained_path={weights['safetensors']}"])
    model = hydra.utils.instantiate(cfg.model, num_classes=3, class_names=["a", "b", "c"], group_names=[],
                                    _convert_="all")
    reference = timm.create_model(ARCH, num_classes=3)
    assert [type(m).__name__ for m in model.net.modules()] == [type(m).__name__ for m in reference.modules()]
    assert _same_backbone(model.net, weights["state"]) and model.net.fc.out_features == 3
    timm_cfg = resolve_model_data_config(reference)
    prep = model.preprocessing
    assert (prep.image_size, prep.interpolation) == (timm_cfg["input_size"][-1], timm_cfg["interpolation"])
    assert prep.mean == tuple(timm_cfg["mean"]) and prep.std == tuple(timm_cfg["std"])
    assert torch.allclose(model.mean.flatten(), torch.tensor(timm_cfg["mean"]))
    assert (prep.image_size, prep.interpolation, prep.mean) == (160, "bilinear", (0.5, 0.5, 0.5))  # not ImageNet's


def test_a_pth_file_loads_too(weights):
    from lightning_modules.classifier import ImageClassifier

    model = ImageClassifier(ARCH, 4, OPT, pretrained_path=weights["pth"], mean=None, std=None)
    assert _same_backbone(model.net, weights["state"])


def test_the_world_settings_with_pretrained_weights_are_refused_naming_the_keys(compose_cfg, weights):
    """The README's old real-data command: model=classifier keeps the world's slim widths and small stem."""
    import hydra
    from hydra.errors import InstantiationException

    cfg = compose_cfg([f"model.backbone={ARCH}", f"model.pretrained_path={weights['safetensors']}"])
    with pytest.raises(InstantiationException, match=r"model\.backbone_kwargs \(channels, layers, stem_width\) and "
                                         r"model\.stem_stride \(2\).*model=pretrained, or set "
                                         r"model\.backbone_kwargs=null model\.stem_stride=null"):
        hydra.utils.instantiate(cfg.model, num_classes=3, _convert_="all")
    cfg = compose_cfg([f"model.backbone={ARCH}", "model.pretrained=true", "model.backbone_kwargs=null"])
    with pytest.raises(InstantiationException, match=r"model\.pretrained=true .* model\.stem_stride \(2\)"):
        hydra.utils.instantiate(cfg.model, num_classes=3, _convert_="all")


def test_regularising_backbone_kwargs_are_allowed_with_pretrained_weights(weights):
    from lightning_modules.classifier import ImageClassifier

    model = ImageClassifier(ARCH, 3, OPT, pretrained_path=weights["safetensors"], mean=None, std=None,
                            backbone_kwargs={"drop_path_rate": 0.1, "drop_rate": 0.2})
    assert _same_backbone(model.net, weights["state"]) and model.net.drop_rate == 0.2


def test_a_missing_file_says_what_to_download_and_which_key_to_set(tmp_path):
    from lightning_modules.backbones import BackboneWeightsError
    from lightning_modules.classifier import ImageClassifier

    with pytest.raises(BackboneWeightsError, match=r"model\.pretrained_path=.*missing\.safetensors.* does not exist\. "
                                                   r"Download https://huggingface\.co/timm/test_resnet\.r160_in1k "
                                                   r"\(file model\.safetensors\) and set model\.pretrained_path="):
        ImageClassifier(ARCH, 3, OPT, pretrained_path=str(tmp_path / "missing.safetensors"), mean=None, std=None)


@pytest.mark.parametrize("backbone,why", [("resnet10t", r"have another shape \(e\.g\. conv1\.0\.weight"),
                                          ("test_efficientnet", r"tensors are not in the file")])
def test_weights_of_another_architecture_get_a_clear_error(weights, backbone, why):
    from lightning_modules.classifier import BackboneWeightsMismatchError, ImageClassifier

    with pytest.raises(BackboneWeightsMismatchError, match=rf"does not hold weights of timm model '{backbone}' "
                                                           rf"\(model\.backbone\): .*{why}.*set model\.backbone"):
        ImageClassifier(backbone, 3, OPT, pretrained_path=weights["safetensors"], mean=None, std=None)


def test_an_unreadable_weights_file_is_named(tmp_path):
    from lightning_modules.classifier import BackboneWeightsMismatchError, ImageClassifier

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneWeightsMismatchError, match=r"model\.pretrained_path=.* could not be read"):
        ImageClassifier(ARCH, 3, OPT, pretrained_path=str(bad), mean=None, std=None)


def _fill_hub_cache(cache: Path, repo: str, state: dict) -> None:
    """What `timm.create_model(<repo>, pretrained=True)` leaves in a Hugging Face cache."""
    from safetensors.torch import save_file

    revision = "0" * 40
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    (base / "snapshots" / revision).mkdir(parents=True)
    save_file(state, str(base / "snapshots" / revision / "model.safetensors"))


def test_a_hub_id_in_the_local_cache_loads_and_a_missing_one_names_the_keys(weights, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from lightning_modules.backbones import BackboneWeightsError
    from lightning_modules.classifier import ImageClassifier

    _fill_hub_cache(tmp_path / "hub", "timm/test_resnet.r160_in1k", weights["state"])
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = ImageClassifier("test_resnet.r160_in1k", 3, OPT, pretrained=True, mean=None, std=None)
    assert _same_backbone(model.net, weights["state"]) and model.preprocessing.image_size == 160
    with pytest.raises(BackboneWeightsError, match=r"not on this machine.*model\.pretrained_path"):
        ImageClassifier("resnet10t.c3_in1k", 3, OPT, pretrained=True, mean=None, std=None)


def test_other_normalisation_than_the_weights_expect_is_warned_about(weights, caplog):
    from lightning_modules.classifier import ImageClassifier

    with caplog.at_level(logging.WARNING, logger="lightning_modules.classifier"):
        model = ImageClassifier(ARCH, 3, OPT, pretrained_path=weights["safetensors"])  # the world's 0.5 / 0.25
    assert model.preprocessing.std == (0.25, 0.25, 0.25)
    assert "model.std differ from the backbone's pretrained config" in caplog.text and "model.std=null" in caplog.text


def test_loaders_follow_the_models_preprocessing_in_a_fit(weights, tmp_path):
    """data.image_size / interpolation left null: the datamodule takes timm's, and the classifier knows the loader's."""
    from lightning import Callback, Trainer

    from lightning_modules.classifier import ImageClassifier
    from test_datamodules_files import csv_dm, waterbirds

    class Shapes(Callback):
        def __init__(self):
            self.seen = set()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.add(tuple(batch["image"].shape[1:]))

    waterbirds(tmp_path / "wb", per_cell=1)
    dm = csv_dm(tmp_path / "wb", image_size=None, batch_size=4)
    model = ImageClassifier(ARCH, 2, OPT, pretrained_path=weights["safetensors"], mean=None, std=None,
                            channels_last=True)
    shapes = Shapes()
    Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[shapes],
            default_root_dir=tmp_path).fit(model, datamodule=dm)
    assert (dm.image_size, dm.interpolation) == (160, "bilinear") and shapes.seen == {(3, 160, 160)}
    assert (model.preprocessing.image_size, model.preprocessing.interpolation) == (160, "bilinear")
    assert dm.train_set.interpolation == "bilinear"


def test_an_explicit_data_image_size_wins_and_the_classifier_judges_at_it(weights, tmp_path, caplog):
    from lightning import Trainer

    from lightning_modules.classifier import ImageClassifier
    from test_datamodules_files import csv_dm, waterbirds

    waterbirds(tmp_path / "wb", per_cell=1)
    dm = csv_dm(tmp_path / "wb", image_size=64, batch_size=4)
    model = ImageClassifier(ARCH, 2, OPT, pretrained_path=weights["safetensors"], mean=None, std=None)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.classifier"):
        Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path).fit(model, dm)
    assert dm.image_size == 64 and model.preprocessing.image_size == 64
    assert "expects 160 px: set data.image_size=160" in caplog.text


def test_the_readme_real_data_command_trains_a_pretrained_backbone(compose_cfg, weights, tmp_path):
    """`data=metadata_csv ... model=pretrained model.backbone=... model.pretrained_path=...` through train.py, with a
    Waterbirds-layout folder of 64 px PNGs in mixed modes and timm weights on disk (no generation here)."""
    from PIL import Image

    from test_datamodules_files import waterbirds
    from train import run

    rows = waterbirds(tmp_path / "wb", per_cell=1)
    for i, r in enumerate(rows):  # 64 px images as RGB, grayscale and RGBA files
        Image.new("RGB", (64, 64), (40 * (i % 6), 150 * int(r["place"]), 200 * int(r["y"]))).convert(
            ["RGB", "L", "RGBA"][i % 3]).save(tmp_path / "wb" / r["img_filename"])
    cfg = compose_cfg(["data=metadata_csv", f"data.root={tmp_path / 'wb'}", "data.image_size=null",
                       "model=pretrained", f"model.backbone={ARCH}", f"model.pretrained_path={weights['safetensors']}",
                       "+augment=none", "logger=none", "trainer.max_epochs=1", "data.num_workers=0",
                       "data.batch_size=8", f"paths.cache_dir={tmp_path / 'cache'}"], output_dir=tmp_path / "run")
    value = run(cfg)
    assert value is not None and 0.0 <= value <= 1.0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["blindspot_loader_size"] == [160, "bilinear"]  # timm's pretrained config for test_resnet
    assert checkpoint["hyper_parameters"]["backbone_kwargs"] is None and checkpoint["hyper_parameters"]["mean"] is None
