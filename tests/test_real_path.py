"""The real user path end to end: the README's "Your data and your models" commands, with only the paths
substituted, run as `python train.py ...` on a Waterbirds-layout folder (under DDP, 2 CPU processes, gloo) and on
class sub-folders, with a timm ResNet-50 `.safetensors`, an open_clip ViT folder and an SD-1.5-architecture diffusers
folder, all random and saved to disk as a user would have them (no download). Each run must write a report with
held-out (test split) slice accuracy for its modes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.real_fixtures import (
    CLASSES, MODES, make_open_clip_vit_folder, make_sd15_folder, make_timm_weights, readme_commands,
    substitute, with_overrides, write_image_folder, write_waterbirds)

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("BLINDSPOT_README", ROOT / "README.md"))  # another README to test (a draft)
IMAGES_PER_ROUND = 8
IMAGE_SIZE = 48  # what the classifier sees (the files and generations are 64 px)
TEST_IMAGES = 2 * 2 * 16  # real_fixtures.planted_rows: 16 test images per class x place

# what the test adds to the README's commands: CPU instead of GPUs, and a small, fast run (the classifier sees the
# 64 px files and generations at 48 px, so generated images are resized the way training resizes them)
SMALL = [
    "trainer.accelerator=cpu", "clip.device=cpu", "generator.device=cpu", "generator.dtype=float32",
    f"data.image_size={IMAGE_SIZE}", "data.batch_size=16", "data.num_workers=0",
    "trainer.max_epochs=2", "loop.start_epoch=1", "loop.max_rounds=1",
    f"remedy.images_per_round={IMAGES_PER_ROUND}", "remedy.batch_size=4",
    "generator.height=64", "generator.width=64", "generator.num_inference_steps=2", "generator.batch_size=4",
    "generator.progress=false", "loop.progress=false",
    # 64 validation images: smaller slices than real data would have, and any gap over the class's error rate
    "discovery.min_support=4", "discovery.min_error_gap=0.0",
    "logger=csv",
]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict:
    """Everything a user brings, on disk: two datasets, a words file and three model folders/files."""
    root = tmp_path_factory.mktemp("user")
    words = root / "my_words.txt"
    words.write_text("on a lake\nin a forest\nflying over the sea\n")
    waterbirds = write_waterbirds(root / "waterbirds")
    return {
        "waterbirds": waterbirds["root"],
        "image_folder": write_image_folder(root / "my_images")["root"],
        "words": words,
        "backbone": make_timm_weights(root / "weights" / "resnet50.safetensors", "resnet50",
                                      calibration=waterbirds["train_files"], size=IMAGE_SIZE),
        "clip": make_open_clip_vit_folder(root / "weights" / "vit_base_patch32_clip_224.openai"),
        "generator": make_sd15_folder(root / "weights" / "stable-diffusion-v1-5"),
    }


def command(data: str, paths: dict, run_dir: Path, extra=()) -> list[str]:
    """The README's command for `data` with the fixture's paths, then SMALL, then `extra`."""
    found = readme_commands(README.read_text())
    assert data in found, f"{README} has no `python train.py data={data} ...` command in 'Your data and your models'"
    args = substitute(found[data], {k: str(v) for k, v in paths.items()})
    assert "+augment=failure_diffusion" in args, f"{README}: the {data} command does not run the failure loop: {args}"
    unknown = [a for a in args if re.search(r"[=:]/(data|weights)/", a)]
    assert not unknown, f"{README}: {data} command paths without a fixture (real_fixtures.PLACEHOLDERS): {unknown}"
    return with_overrides(args, [*SMALL, *extra, f"hydra.run.dir={run_dir}"])


def run_train(args: list[str], cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python train.py <args>` from the repository root, one thread per process, caches in `cache`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               BLINDSPOT_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"train.py {' '.join(args)}\n{proc.stderr[-4000:]}"
    return proc


def check_report(run_dir: Path) -> dict:
    """The run's report.json, after checking its round generated, and every mode's held-out test slice."""
    path = run_dir / "report" / "report.json"
    assert path.is_file(), f"no report at {path}"
    report = json.loads(path.read_text())
    assert report["rounds"], "the failure loop ran no round"
    rnd = report["rounds"][0]
    # waves until remedy.target_kept (= images_per_round) are kept, at most max_generated (2 x); exactly that many in
    # (contrast images beyond their share of a mode's injected images are kept but not injected)
    assert IMAGES_PER_ROUND <= rnd["generated"] <= 2 * IMAGES_PER_ROUND, rnd
    usable = rnd["kept"] - rnd["details"]["contrast_over_share"]
    assert rnd["injected"] == min(usable, IMAGES_PER_ROUND), rnd
    assert rnd["modes"], "the round found no failure mode"
    for m in rnd["modes"]:
        assert "test_slice" in m, f"mode {m['mode_id']} has no held-out test_slice (carried onto the test split)"
        ts = m["test_slice"]
        assert 0 <= ts["n"] <= TEST_IMAGES
        if ts["n"]:
            assert 0.0 <= ts["acc_before"] <= 1.0 and 0.0 <= ts["acc_after"] <= 1.0, ts
    assert any(m["test_slice"]["n"] for m in rnd["modes"]), "no mode reached any test image"
    assert "Test slice" in (run_dir / "report" / "report.md").read_text(), "report.md shows no held-out slices"
    assert (run_dir / "report" / "index.html").is_file()
    return report


def check_generated(run_dir: Path, report: dict) -> None:
    """Every generated image is a PNG at the asked size."""
    from PIL import Image

    images = sorted((run_dir / "generated").rglob("*.png"))
    assert len(images) == report["rounds"][0]["generated"]
    for p in images:
        with Image.open(p) as im:
            assert im.size == (64, 64), p


def check_backbone(run_dir: Path, weights: Path) -> None:
    """The trained classifier is timm's ResNet-50 as built (7x7 stem, 2048 features, a 2-class head), started from
    the user's weights file (a few fine-tuning steps move no weight far from it)."""
    import torch
    from safetensors.torch import load_file

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state, saved = ckpt["state_dict"], load_file(str(weights))
    assert ckpt["hyper_parameters"]["pretrained_path"] == str(weights)
    assert tuple(state["net.conv1.weight"].shape) == (64, 3, 7, 7)
    assert tuple(state["net.fc.weight"].shape) == (len(CLASSES), 2048)
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.2.conv3.weight"):
        assert torch.allclose(state[f"net.{key}"], saved[key], atol=1e-2), f"{key} is not the file's"


def test_the_readme_waterbirds_command_runs_under_ddp_and_reports_held_out_slices(user_files, tmp_path):
    run_dir = tmp_path / "run"
    run_train(command("metadata_csv", user_files, run_dir, ["trainer=ddp", "trainer.devices=2"]), tmp_path / "cache")
    report = check_report(run_dir)
    groups = set(report["metrics"]["test"]["per_group"])
    assert groups == {f"{c}|place={p}" for c in CLASSES for p in ("land", "water")}, groups
    assert all(m.get("majority_group") for m in report["rounds"][0]["modes"])  # the group rows stay
    check_generated(run_dir, report)
    check_backbone(run_dir, user_files["backbone"])
    records = [json.loads(line) for p in (run_dir / "generated").glob("manifest-rank*.jsonl")
               for line in p.read_text().splitlines() if line]
    assert {r["rank"] for r in records} == {0, 1}, "generation is sharded over both ranks"
    assert len(list(run_dir.rglob("report.json"))) == 1


def test_the_readme_image_folder_command_reports_held_out_slices_without_groups(user_files, tmp_path):
    run_dir = tmp_path / "run"
    run_train(command("image_folder", user_files, run_dir, ["trainer=default", "trainer.devices=1"]),  # one process
              tmp_path / "cache")
    report = check_report(run_dir)
    assert not report["metrics"]["test"].get("per_group"), "image folders have no group labels"
    check_generated(run_dir, report)
    check_backbone(run_dir, user_files["backbone"])


def test_the_fixture_images_come_in_mixed_modes_and_the_csv_can_lack_groups(tmp_path):
    """The inputs the runs read: PNGs in RGB, L and RGBA; the group-less CSV loads with data.group_columns=[]."""
    from PIL import Image

    from datamodules.metadata_csv import MetadataCSVDataModule

    info = write_waterbirds(tmp_path / "wb", groups=False)
    assert set(info["modes"]) == set(MODES) and min(info["modes"].values()) > 0
    modes = {Image.open(tmp_path / "wb" / r["img_filename"]).mode for r in info["rows"][:6]}
    assert modes == set(MODES)
    dm = MetadataCSVDataModule(str(tmp_path / "wb"), group_columns=[], class_names=list(CLASSES), value_names={},
                               image_size=64, batch_size=8, num_workers=0, verify_cache_dir=None)
    dm.setup("fit")
    assert dm.group_names == [] and len(dm.test_set) == TEST_IMAGES
    images = dm.test_images([0, 1, 2])
    assert images.shape == (3, 3, 64, 64)


def test_the_clip_weights_file_loads_like_the_folder(tmp_path):
    """The README's other CLIP form, a registered open_clip config plus `clip.pretrained=<weights file>` (for
    OpenAI's: clip.name=ViT-B-32-quickgelu), builds the same model as `clip.name=local-dir:<folder>`."""
    import open_clip
    import torch

    from blindspot.clip import load_clip
    from tests.real_fixtures import TINY_VIT_CFG

    folder = make_open_clip_vit_folder(tmp_path / "vit_base_patch32_clip_224.openai")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "blindspot-test-tiny-vit.json").write_text(json.dumps(TINY_VIT_CFG))
    open_clip.add_model_config(configs)  # what ViT-B-32-quickgelu.json is to open_clip
    from_file = load_clip("blindspot-test-tiny-vit", str(folder / "open_clip_pytorch_model.bin"))
    from_folder = load_clip(f"local-dir:{folder}", None)
    a, b = from_file.model.state_dict(), from_folder.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert type(from_file.model.visual).__name__ == "VisionTransformer"
    text = from_file.encode_texts(["a photo of a landbird"])
    assert torch.allclose(text, from_folder.encode_texts(["a photo of a landbird"]))
