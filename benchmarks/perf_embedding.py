"""CLIP image embedding: Blindspot's wrapper vs raw open_clip (same model, batch and loader), and the cache.

    python -m benchmarks.perf_embedding            # world CLIP on 4,000 rendered images
    python -m benchmarks.perf_embedding --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from blindspot.clip import load_clip
from blindspot.embedding import embed_dataset
from blindspot.world.corpus import corpus_batch
from blindspot.world.spec import WorldSpec

from .common import interleaved, machine, write

ROOT = Path(__file__).resolve().parents[1]


def raw_open_clip(model, loader: DataLoader, size: int, mean, std) -> torch.Tensor:
    """What a user writes with open_clip directly: resize, normalise, encode_image, L2-normalise."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    out = []
    with torch.no_grad():
        for (x,) in loader:
            x = x.float() / 255.0
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
            out.append(F.normalize(model.encode_image((x - m) / s).float(), dim=-1))
    return torch.cat(out)


def main() -> None:
    """Measure and write results/perf_embedding.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip(pretrained=str(ROOT / "weights" / "world_clip" / "open_clip_model.safetensors"), device=args.device)
    n, batch = (512, 256) if args.quick else (4000, 256)
    images = corpus_batch(WorldSpec(), n, seed=31337).images
    loader = DataLoader(TensorDataset(images), batch_size=batch)
    t = interleaved({
        "raw": lambda: raw_open_clip(clip.model, loader, clip.image_size, clip.mean, clip.std),
        "blindspot": lambda: torch.cat([clip.encode_images(x, batch_size=batch) for (x,) in loader]),
    }, repeats=1 if args.quick else 3)
    same = torch.allclose(raw_open_clip(clip.model, loader, clip.image_size, clip.mean, clip.std),
                          torch.cat([clip.encode_images(x, batch_size=batch) for (x,) in loader]), atol=1e-5)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        embed_dataset(clip, n, lambda idx: images[idx], "bench", cache, batch_size=batch, progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        embed_dataset(clip, n, lambda idx: images[idx], "bench", cache, batch_size=batch, progress=False)
        second = time.perf_counter() - start
    result = {"machine": machine(args.threads), "quick": args.quick, "images": n, "batch_size": batch,
              "seconds_raw": t["raw"], "seconds_blindspot": t["blindspot"], "ratio_vs_raw": t["raw"] / t["blindspot"],
              "images_per_s": n / t["blindspot"], "identical_embeddings": same, "seconds_first_round": first,
              "seconds_cached_round": second, "cached_fraction": second / first}
    write("perf_embedding", result, [
        ["measure", "value", "target"],
        ["Blindspot / raw open_clip images/s", f"{result['ratio_vs_raw']:.3f}", ">= 0.95"],
        ["images/s (world CLIP)", f"{result['images_per_s']:.0f}", "-"],
        ["cached round / first round", f"{result['cached_fraction']:.3%}", "< 5%"],
        ["embeddings identical to raw", str(same), "True"],
    ], args.quick)


if __name__ == "__main__":
    main()
