"""Every consumer sees images the way it expects: the classifier judges outside images after the train loader's
resize, CLIP gets open_clip's own preprocess for the loaded model, and odd image files and labels are handled."""

from __future__ import annotations

import json
import logging
from functools import partial

import pytest
import torch
from PIL import Image

from blindspot.images import load_image, resize_images, save_png
from test_datamodules_files import _png, _write_csv, csv_dm, folder_dm, waterbirds

OPT = partial(torch.optim.AdamW, lr=1e-3)
SLIM = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}


def _photo(side: int, seed: int = 0) -> torch.Tensor:
    """A uint8 [3, side, side] image with smooth shapes and fine texture (so resize filters differ)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=side, mode="bicubic")
    fine = 0.15 * torch.rand(1, 3, side, side, generator=g)
    return ((coarse + fine).clamp(0, 1) * 255).round().to(torch.uint8)[0]


@pytest.fixture(scope="module")
def pretrained_file(tmp_path_factory) -> str:
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("w") / "test_resnet.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet").state_dict().items()}, str(path))
    return str(path)


# --- the classifier judges images as the train loader loads them -----------------------------------------------------
@pytest.mark.parametrize("kind", ["world_classifier", "pretrained"])
def test_predict_proba_on_a_generator_size_image_equals_the_train_loaders_view(kind, pretrained_file, tmp_path):
    from lightning_modules.classifier import ImageClassifier

    if kind == "pretrained":  # timm's config: 160 px, bilinear; the datamodule follows it (data.image_size=null)
        model = ImageClassifier("test_resnet", 2, OPT, pretrained_path=pretrained_file, mean=None, std=None)
        dm_kwargs = {"image_size": None}
    else:  # the world's slim net from scratch, data.image_size set explicitly
        model = ImageClassifier("resnet18", 2, OPT, backbone_kwargs=SLIM, stem_stride=2)
        dm_kwargs = {"image_size": 24, "interpolation": "bicubic"}
    waterbirds(tmp_path / "wb", per_cell=1)
    dm = csv_dm(tmp_path / "wb", hflip=False, **dm_kwargs)
    dm.use_preprocessing(model.preprocessing.image_size, model.preprocessing.interpolation)  # what fit's setup does
    dm.setup()
    model.use_loader_size(dm.image_size, dm.interpolation)  # what ImageClassifier.setup does in a fit
    generated = torch.stack([_photo(512, seed) for seed in range(3)])  # SD-1.5-size generated images
    paths = [str(tmp_path / f"gen{k}.png") for k in range(3)]
    for image, path in zip(generated, paths):
        save_png(image, path)
    dm.add_samples([{"path": p, "label": 1} for p in paths])
    train = dm.train_dataloader().dataset
    as_trained = torch.stack([train[len(dm.train_set) + k]["image"] for k in range(3)])
    assert as_trained.shape[-1] == dm.image_size

    judged = model.predict_proba(generated)
    assert torch.equal(judged, model.predict_proba(as_trained))
    assert torch.equal(model.predict_proba(generated.float() / 255), judged)  # [0, 1] floats: quantised like a PNG
    assert torch.equal(model.prepare_images(generated), as_trained)
    assert torch.equal(dm.resize_like_loader(generated), as_trained)
    model.eval()
    with torch.no_grad():  # not vacuous: the classifier at 512 px, or another filter, would judge other pixels
        raw = torch.softmax(model(generated), -1)
    assert not torch.allclose(raw, judged, atol=1e-6)
    other = "bicubic" if dm.interpolation != "bicubic" else "bilinear"
    assert not torch.equal(resize_images(generated, dm.image_size, other), as_trained)


def test_resize_images_is_load_image_pixel_for_pixel(tmp_path):
    image = _photo(100, seed=4)
    save_png(image, tmp_path / "x.png")
    for interpolation in ("bicubic", "bilinear", "lanczos", "nearest"):
        assert torch.equal(resize_images(image[None], 37, interpolation)[0], load_image(tmp_path / "x.png", 37,
                                                                                          interpolation))
    with pytest.raises(ValueError, match=r"data\.interpolation='cubic'"):
        resize_images(image[None], 37, "cubic")


# --- odd files and labels ---------------------------------------------------------------------------------------------
def test_grayscale_rgba_and_palette_images_load_as_rgb(tmp_path):
    rows = waterbirds(tmp_path / "wb", per_cell=1)
    modes = {0: Image.new("L", (10, 6), 77), 1: Image.new("RGBA", (10, 6), (10, 200, 30, 90)),
             2: Image.new("RGB", (10, 6), (1, 2, 3)).convert("P"), 3: Image.new("LA", (10, 6), (150, 255))}
    for i, im in modes.items():
        im.save(tmp_path / "wb" / rows[i]["img_filename"])
    dm = csv_dm(tmp_path / "wb", hflip=False)
    dm.setup()
    images = dm.train_images(list(range(4)))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 12, 12)
    assert (images[0] == 77).all()  # grayscale: the same value in R, G and B
    assert images[1, :, 0, 0].tolist() == [10, 200, 30] and (images[3] == 150).all()
    assert next(iter(dm.train_dataloader()))["image"].shape[1:] == (3, 12, 12)


def test_csv_labels_that_do_not_match_class_names_name_the_key(tmp_path):
    rows = waterbirds(tmp_path / "wb", per_cell=1)
    _write_csv(tmp_path / "wb" / "metadata.csv", [{**r, "y": ["duck", "gull"][int(r["y"])]} for r in rows])
    with pytest.raises(ValueError, match=r"values \['duck', 'gull'\] that do not fit "
                                         r"data\.class_names=\['landbird', 'waterbird'\] \(2 names; no class for "
                                         r"\['duck', 'gull'\]\)"):
        csv_dm(tmp_path / "wb").setup()
    _write_csv(tmp_path / "wb" / "metadata.csv", [{**r, "y": int(r["y"]) + 1} for r in rows])  # labels 1, 2
    with pytest.raises(ValueError, match=r"no class for \['2'\]"):
        csv_dm(tmp_path / "wb").setup()
    with pytest.raises(ValueError, match=r"data\.class_names=\['bird', 'bird'\] names a class twice"):
        csv_dm(tmp_path / "wb", class_names=["bird", "bird"]).setup()


def test_raw_numeric_labels_as_class_names_are_warned_about(tmp_path, caplog):
    waterbirds(tmp_path / "wb", per_cell=1)
    with caplog.at_level(logging.WARNING, logger="datamodules.metadata_csv"):
        dm = csv_dm(tmp_path / "wb", class_names=None)
        assert dm.class_names == ["0", "1"]
    assert "data.class_names is null" in caplog.text and "'a photo of a 0'" in caplog.text
    assert "data.class_names=[name_of_0, name_of_1]" in caplog.text

    caplog.clear()
    rows = waterbirds(tmp_path / "named", per_cell=1)
    _write_csv(tmp_path / "named" / "metadata.csv", [{**r, "y": ["duck", "gull"][int(r["y"])]} for r in rows])
    with caplog.at_level(logging.WARNING, logger="datamodules.metadata_csv"):
        assert csv_dm(tmp_path / "named", class_names=None).class_names == ["duck", "gull"]
    assert "data.class_names" not in caplog.text  # words are fine names


def test_image_folders_named_by_ids_are_warned_about(tmp_path, caplog):
    for c in ("0", "1"):
        for k in range(4):
            _png(tmp_path / "ids" / c / f"{k}.png", k)
    with caplog.at_level(logging.WARNING, logger="datamodules.image_folder"):
        assert folder_dm(tmp_path / "ids", val_fraction=0.25, test_fraction=0.25).class_names == ["0", "1"]
    assert "come from the folder names ['0', '1']" in caplog.text and "rename the class folders" in caplog.text


def test_the_file_fingerprint_changes_with_the_loaders_resize(tmp_path):
    waterbirds(tmp_path / "wb", per_cell=1)
    prints = set()
    for kwargs in ({"image_size": 12}, {"image_size": 16}, {"image_size": 16, "interpolation": "bilinear"}):
        dm = csv_dm(tmp_path / "wb", **kwargs)
        dm.setup()
        prints.add(dm.val_fingerprint())
    assert len(prints) == 3


# --- CLIP gets open_clip's own preprocess -----------------------------------------------------------------------------
def test_the_world_clip_registers_the_preprocessing_it_was_trained_with():
    import open_clip

    from blindspot.clip import _apply_per_pil_image, load_clip

    clip = load_clip("blindspot-world-clip", pretrained=None)
    cfg = clip.preprocess_cfg
    assert (cfg["size"], cfg["resize_mode"], cfg["interpolation"]) == (32, "squash", "bicubic")
    assert tuple(cfg["mean"]) == open_clip.OPENAI_DATASET_MEAN and tuple(cfg["std"]) == open_clip.OPENAI_DATASET_STD
    assert clip.transform.transforms[-1].mean == list(open_clip.OPENAI_DATASET_MEAN)
    renders = torch.stack([_photo(32, seed) for seed in range(4)])  # world images: no resize, as in training
    assert torch.equal(clip.preprocess(renders), _apply_per_pil_image(clip.transform, renders))
    expected = (renders.float() / 255 - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(clip.preprocess(renders), expected)  # the normalisation train_clip used


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    """A local-dir open_clip model whose open_clip_config.json brings its own preprocess config."""
    import open_clip
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("clip")
    model_cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 24, "layers": 1, "width": 32, "patch_size": 8,
                                                 "head_width": 16},
                 "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear",
                  "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**model_cfg).state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return f"local-dir:{folder}"


def test_clip_uses_the_loaded_models_own_transform_batched(tiny_clip_dir):
    from blindspot.clip import _apply_per_pil_image, load_clip

    clip = load_clip(tiny_clip_dir)
    assert clip.mean == (0.5, 0.5, 0.5) and clip.preprocess_cfg["interpolation"] == "bilinear"
    for shape in [(3, 64, 64), (3, 40, 72)]:  # squares (as loaders deliver) and others (shortest side + centre crop)
        images = torch.stack([torch.nn.functional.interpolate(_photo(72, s)[None].float(), size=shape[1:],
                                                              mode="bilinear")[0].round().byte() for s in range(3)])
        batched, per_image = clip.preprocess(images), _apply_per_pil_image(clip.transform, images)
        assert batched.shape == per_image.shape == (3, 3, 24, 24)
        assert (batched - per_image).abs().max() <= 1.01 / 255 / 0.5  # at most one grey level from PIL's resize
        torch.testing.assert_close(clip.preprocess(images.float() / 255), batched, atol=2 / 255 / 0.5, rtol=0)
    emb = clip.encode_images(torch.stack([_photo(64, s) for s in range(2)]))
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_a_transform_step_that_needs_pil_falls_back_to_per_image(tiny_clip_dir):
    from blindspot.clip import _apply_per_pil_image, load_clip

    clip = load_clip(tiny_clip_dir, preprocess_cfg={"resize_mode": "longest"})  # open_clip's ResizeKeepRatio
    images = torch.stack([_photo(40, s) for s in range(2)])
    assert torch.equal(clip.preprocess(images), _apply_per_pil_image(clip.transform, images))


def test_the_embedding_cache_key_follows_the_preprocessing(tiny_clip_dir, tmp_path):
    from blindspot.clip import load_clip
    from blindspot.embedding import embed_dataset

    first, again = load_clip(tiny_clip_dir), load_clip(tiny_clip_dir)
    squash = load_clip(tiny_clip_dir, preprocess_cfg={"resize_mode": "squash"})
    assert first.fingerprint == again.fingerprint != squash.fingerprint
    with pytest.raises(ValueError, match=r"not open_clip's"):
        load_clip(tiny_clip_dir, preprocess_cfg={"crop": 0.9})
    images = torch.stack([torch.nn.functional.interpolate(_photo(48, s)[None].float(), size=(40, 64))[0].byte()
                          for s in range(4)])
    embed = partial(embed_dataset, n=4, get_images=lambda idx: images[idx], dataset_fingerprint="d",
                    cache_dir=tmp_path, progress=False)
    a, b = embed(first), embed(squash)
    assert len(list(tmp_path.glob("clip-*.pt"))) == 2 and not torch.allclose(a, b)
    assert torch.equal(embed(again), a)


def test_without_a_loader_a_scratch_classifier_judges_images_as_they_are_and_a_checkpoint_remembers(tmp_path):
    from lightning_modules.classifier import ImageClassifier

    model = ImageClassifier("resnet18", 2, OPT, backbone_kwargs=SLIM, stem_stride=2)
    images = torch.stack([_photo(32, s) for s in range(2)])
    assert torch.equal(model.prepare_images(images), images)  # not resized to resnet18's 224 px pretrained size
    model.use_loader_size(16, "bilinear")
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    reloaded = ImageClassifier("resnet18", 2, OPT, backbone_kwargs=SLIM, stem_stride=2)
    reloaded.on_load_checkpoint(checkpoint)
    assert reloaded.loader_size == (16, "bilinear") and reloaded.prepare_images(images).shape[-1] == 16
