"""An evaluation-only oracle: a small CNN that reads class, background, colour and size off a world image.

It is trained on fresh renders under heavy corruption (noise, blur, colour jitter, blocky compression,
space-to-depth artefacts) so that it judges generated images by their content, not by their texture.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .corpus import corpus_batch
from .spec import WorldSpec

log = logging.getLogger(__name__)
HEADS = ("class", "background", "color", "size")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Oracle(nn.Module):
    """Four-headed CNN: logits for class, background, colour and size."""

    def __init__(self, spec: WorldSpec = WorldSpec(), width: int = 24):
        super().__init__()
        self.spec = spec
        self.features = nn.Sequential(_block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2),
                                      _block(2 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        sizes = {"class": len(spec.classes), "background": len(spec.backgrounds), "color": len(spec.colors),
                 "size": len(spec.sizes)}
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width, n) for k, n in sizes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 or [0, 1] images -> {head: logits}."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        h = self.features((x - 0.5) / 0.25)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Predicted indices per head (eval mode)."""
        self.eval()
        outs = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {k: torch.cat([o[k] for o in outs]).argmax(-1) for k in HEADS}


def corrupt(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random corruptions of [0, 1] images [n, 3, s, s], each applied to a random half of the batch."""
    n = len(x)

    def pick(p: float = 0.5) -> torch.Tensor:
        return (torch.rand(n, 1, 1, 1, generator=g) < p).float()

    sigma = 0.5 + torch.rand(1, generator=g).item()
    k = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-(k**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 5).repeat(3, 1, 1, 1), groups=3)
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="replicate"), kernel.view(1, 1, 5, 1).repeat(3, 1, 1, 1),
                       groups=3)
    x = torch.lerp(x, blurred, pick())
    s = x.shape[-1]
    blocky = F.interpolate(F.interpolate(x, size=s // 2, mode="area"), size=s, mode="bilinear", align_corners=False)
    x = torch.lerp(x, blocky, pick(0.3))
    shuffle_noise = F.pixel_shuffle(torch.randn(n, 12, s // 2, s // 2, generator=g) * 0.08, 2)
    x = x + shuffle_noise * pick(0.5)  # the space-to-depth generator's checkerboard
    x = x + torch.randn(x.shape, generator=g) * 0.06 * torch.rand(n, 1, 1, 1, generator=g)
    gain = 1 + (torch.rand(n, 3, 1, 1, generator=g) - 0.5) * 0.2
    bias = (torch.rand(n, 1, 1, 1, generator=g) - 0.5) * 0.15
    return (x * gain + bias).clamp(0, 1)


def train_oracle(spec: WorldSpec = WorldSpec(), steps: int = 1500, batch_size: int = 128, lr: float = 3e-3,
                 seed: int = 0, progress: bool = True) -> Oracle:
    """Train an oracle on corrupted fresh renders (seeds disjoint from the task data and the corpus runs)."""
    torch.manual_seed(seed)
    model = Oracle(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in tqdm(range(steps), desc="oracle", disable=not progress):
        b = corpus_batch(spec, batch_size, 700_000_000 + seed * 1_000_000 + step)
        x = corrupt(b.images.float() / 255.0, g)
        out = model(x)
        loss = sum(F.cross_entropy(out[k], t) for k, t in zip(HEADS, (b.classes, b.backgrounds, b.colors, b.sizes)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


SHIPPED = Path(__file__).resolve().parents[2] / "weights" / "world_oracle" / "oracle.safetensors"


def load_oracle(path: str | Path = SHIPPED, spec: WorldSpec = WorldSpec()) -> Oracle:
    """The shipped oracle (train it with `python -m blindspot.world.oracle`)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no oracle weights at {path}: train them with `python -m blindspot.world.oracle`")
    model = Oracle(spec)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def load_or_train_oracle(cache_dir: str | Path, spec: WorldSpec = WorldSpec(), steps: int = 1500, seed: int = 0,
                         progress: bool = True) -> Oracle:
    """The shipped oracle when it exists, else one trained (and cached) on first use."""
    if SHIPPED.is_file() and spec == WorldSpec():
        return load_oracle(SHIPPED, spec)
    key = hashlib.sha256(repr((spec, steps, seed)).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"oracle-{key}.pt"
    model = Oracle(spec)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    model = train_oracle(spec, steps=steps, seed=seed, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def oracle_accuracy(model: Oracle, spec: WorldSpec, n: int = 2000, seed: int = 123_456_789) -> dict[str, float]:
    """Per-head accuracy on clean held-out renders."""
    b = corpus_batch(spec, n, seed)
    pred = model.predict(b.images)
    truth = dict(zip(HEADS, (b.classes, b.backgrounds, b.colors, b.sizes)))
    return {k: float((pred[k] == truth[k]).float().mean()) for k in HEADS}



def main() -> None:
    """Train the oracle and ship it to weights/world_oracle/ (with how it was made)."""
    import argparse
    import time

    from safetensors.torch import save_file

    from .training import write_provenance

    p = argparse.ArgumentParser(description="train the world oracle (evaluation only)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start, cpu = time.time(), time.process_time()
    model = train_oracle(WorldSpec(), steps=args.steps)
    SHIPPED.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(SHIPPED))
    write_provenance(SHIPPED.parent, steps=args.steps, wall_minutes=round((time.time() - start) / 60, 2),
                     cpu_minutes=round((time.process_time() - cpu) / 60, 2),
                     clean_accuracy=oracle_accuracy(model, WorldSpec(), n=3000))


if __name__ == "__main__":
    main()
