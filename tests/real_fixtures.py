"""Real-use inputs written to disk as a user would have them: a Waterbirds-layout folder, class sub-folders, a timm
backbone `.safetensors`, an open_clip ViT checkpoint folder and an SD-1.5-architecture diffusers folder.

Every model is tiny (or, for the backbone, the real timm architecture) and randomly initialised: nothing is
downloaded. The images carry a planted spurious correlation (the background follows the class in train, not in
val/test), so even a briefly trained classifier makes errors that concentrate in slices.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tests.tiny_models import make_tiny_sd_pipeline

SIZE = 64                              # side of the written PNGs (pixels)
MODES = ("RGB", "L", "RGBA")           # image i is saved in MODES[i % 3]
CLASSES = ("landbird", "waterbird")
PLACES = ("land", "water")             # Waterbirds' `place` attribute: 0 = land, 1 = water
BACKGROUND = {"land": (84, 140, 52), "water": (40, 90, 200)}   # RGB of each place's background
FOREGROUND = {"landbird": (200, 120, 40), "waterbird": (240, 240, 240)}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}   # Waterbirds' split column values

# a tiny open_clip ViT in the layout of huggingface.co/timm/vit_base_patch32_clip_224.openai: open_clip_config.json
# (model + preprocess config, quick_gelu like OpenAI's weights) next to open_clip_pytorch_model.bin
TINY_VIT_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
OPENAI_PREPROCESS = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                     "interpolation": "bicubic", "resize_mode": "shortest"}


def bird_image(cls: str, place: str, rng: np.random.Generator, mode: str) -> Image.Image:
    """A SIZE x SIZE picture: a noisy `place` background and a `cls` shape (circle or triangle) at a random spot."""
    base = np.array(BACKGROUND[place], dtype=np.float32)
    pixels = np.clip(base + rng.normal(0, 18, (SIZE, SIZE, 3)), 0, 255)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx, r = rng.integers(20, SIZE - 20), rng.integers(20, SIZE - 20), rng.integers(8, 14)
    if cls == "landbird":
        shape = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    else:
        shape = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - cy + r) / 2)
    pixels[shape] = FOREGROUND[cls]
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    if mode == "L":
        return image.convert("L")
    if mode == "RGBA":
        alpha = np.full((SIZE, SIZE), 255, np.uint8)
        alpha[:4] = 0  # a transparent top strip, as cut-out photos have
        image = image.convert("RGBA")
        image.putalpha(Image.fromarray(alpha, "L"))
    return image


def planted_rows(n_train: int = 48, n_eval: int = 16, majority: float = 0.9, seed: int = 0) -> list[dict]:
    """(split, class, place) of every image: in train a share `majority` of each class is on its own place
    (landbirds on land, waterbirds on water); val and test have `n_eval` images per class x place."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLIT_IDS:
        for y, cls in enumerate(CLASSES):
            if split == "train":
                n_major = int(round(n_train * majority))
                places = [y] * n_major + [1 - y] * (n_train - n_major)
            else:
                places = [0] * n_eval + [1] * n_eval
            for place in rng.permutation(places):
                rows.append({"split": split, "y": y, "cls": cls, "place": int(place)})
    return rows


def write_waterbirds(root: Path, groups: bool = True, seed: int = 0, **sizes) -> dict:
    """A Waterbirds-layout folder: root/metadata.csv (img_id, img_filename, y, split, place, place_filename) and
    root/<NNN.Species>/<name>.png in mixed modes; `groups=False` leaves out the group column `place`."""
    rng = np.random.default_rng(seed + 1)
    rows, counts = [], {m: 0 for m in MODES}
    for i, r in enumerate(planted_rows(seed=seed, **sizes)):
        species = "001.Song_Sparrow" if r["y"] == 0 else "002.Mallard"
        name = f"{species}/{species.split('.')[1]}_{i:04d}.png"
        mode = MODES[i % len(MODES)]
        counts[mode] += 1
        (root / species).mkdir(parents=True, exist_ok=True)
        bird_image(r["cls"], PLACES[r["place"]], rng, mode).save(root / name)
        row = {"img_id": i, "img_filename": name, "y": r["y"], "split": SPLIT_IDS[r["split"]]}
        if groups:
            row.update(place=r["place"], place_filename=f"/{PLACES[r['place']]}/{i}.jpg")
        rows.append(row)
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    train = [root / r["img_filename"] for r in rows if r["split"] == SPLIT_IDS["train"]]
    return {"root": root, "rows": rows, "modes": counts, "train_files": train}


def write_image_folder(root: Path, split_dirs: bool = True, seed: int = 0, **sizes) -> dict:
    """Class sub-folders of the same planted pictures: root/<split>/<class>/*.png (or root/<class>/*.png)."""
    rng = np.random.default_rng(seed + 2)
    files = []
    for i, r in enumerate(planted_rows(seed=seed, **sizes)):
        folder = root / (r["split"] if split_dirs else "") / r["cls"]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:04d}.png"
        bird_image(r["cls"], PLACES[r["place"]], rng, MODES[i % len(MODES)]).save(path)
        files.append(path)
    return {"root": root, "files": files}


def make_timm_weights(path: Path, arch: str = "resnet50", calibration: list[Path] | None = None,
                      size: int = 64) -> Path:
    """timm's `arch` at random init with its ImageNet head, saved as .safetensors (what a hub download holds).

    With `calibration` images, the BatchNorm statistics are first measured on them (at `size` px, normalised by
    timm's pretrained config), as a pretrained backbone's fit natural images: a random net with init statistics
    predicts one class for everything in eval mode, and then no failure slice can be told apart from the rest."""
    import timm
    from safetensors.torch import save_file
    from timm.data import resolve_model_data_config

    from blindspot.images import load_image

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1234)  # not the run's seed: a fresh init in the run must not equal these weights by chance
    model = timm.create_model(arch, pretrained=False)
    if calibration:
        cfg = resolve_model_data_config(model)
        x = torch.stack([load_image(p, size, cfg["interpolation"]) for p in calibration]).float() / 255
        x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the calibration batch
        with torch.no_grad():
            model.train()(x)
        for m in norms:
            m.momentum = 0.1
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_open_clip_vit_folder(folder: Path) -> Path:
    """A random tiny open_clip ViT saved as open_clip_config.json + open_clip_pytorch_model.bin (a state dict
    written with torch.save), loadable as `clip.name=local-dir:<folder>`."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_VIT_CFG,
                                                              "preprocess_cfg": OPENAI_PREPROCESS}, indent=2))
    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_VIT_CFG)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def make_sd15_folder(folder: Path) -> Path:
    """An SD-1.5-architecture diffusers folder (UNet, AutoencoderKL, CLIP text model; random) that
    `AutoPipelineForText2Image.from_pretrained(folder)` loads."""
    return make_tiny_sd_pipeline(folder)


# --- the README's commands --------------------------------------------------------------------------------------
# placeholder paths in the README's real-data commands -> the name of the fixture path that replaces each
PLACEHOLDERS = {
    "/data/waterbirds": "waterbirds",
    "/data/my_images": "image_folder",
    "/data/my_words.txt": "words",
    "/weights/resnet50.safetensors": "backbone",
    "/weights/vit_base_patch32_clip_224.openai": "clip",
    "/weights/stable-diffusion-v1-5": "generator",
}


def readme_commands(text: str) -> dict[str, list[str]]:
    """The `python train.py data=<metadata_csv|image_folder> ...` commands of the README's "Your data and your
    models" section, as argument lists (line continuations joined, comments dropped), keyed by the data option."""
    section = re.search(r"^## Your data and your models\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    if not section:
        raise LookupError("README.md has no section '## Your data and your models'")
    commands = {}
    for block in re.findall(r"```bash\n(.*?)```", section.group(1), re.S):
        lines = [line.split(" #")[0] if not line.lstrip().startswith("#") else "" for line in block.splitlines()]
        for command in re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines():
            args = shlex.split(command)
            if args[:2] == ["python", "train.py"]:
                data = next((a.split("=", 1)[1] for a in args if a.startswith("data=")), None)
                if data in ("metadata_csv", "image_folder"):
                    commands.setdefault(data, args[2:])
    return commands


def substitute(args: list[str], paths: dict[str, str]) -> list[str]:
    """`args` with each placeholder path replaced, in one pass, by the fixture path PLACEHOLDERS names; every
    placeholder that occurs must have its path in `paths`."""
    pattern = re.compile("|".join(re.escape(p) for p in sorted(PLACEHOLDERS, key=len, reverse=True)))
    missing = sorted({m for a in args for m in pattern.findall(a) if PLACEHOLDERS[m] not in paths})
    if missing:
        raise KeyError(f"placeholder paths without a fixture path: {missing}")
    return [pattern.sub(lambda m: str(paths[PLACEHOLDERS[m.group(0)]]), a) for a in args]


def with_overrides(args: list[str], overrides: list[str]) -> list[str]:
    """`args` followed by `overrides`, dropping any earlier argument that sets a key an override sets again
    (Hydra refuses the same key twice)."""
    key = lambda a: a.lstrip("~+").split("=", 1)[0]  # noqa: E731
    later = {key(o) for o in overrides}
    return [a for a in args if key(a) not in later] + list(overrides)
