"""CLIP image embedding: Blindspot's wrapper vs raw open_clip (the same weights, batch size and images), and the cache.

The raw baseline is what a user writes with open_clip alone: `create_model_and_transforms`, its own `preprocess`
on PIL images, `encode_image`, L2-normalise. The wrapper gets the same images as uint8 tensors.

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

from blindspot.clip import WORLD_CLIP, load_clip, register_model_configs
from blindspot.embedding import embed_dataset
from blindspot.world.corpus import corpus_batch
from blindspot.world.spec import WorldSpec

from .common import interleaved, machine, write

ROOT = Path(__file__).resolve().parents[1]


def to_pil(images: torch.Tensor) -> list:
    """uint8 [n, 3, h, w] -> PIL images (what a dataset on disk hands a raw open_clip user)."""
    from PIL import Image

    return [Image.fromarray(x.permute(1, 2, 0).contiguous().numpy()) for x in images]


def load_raw_open_clip(name: str, pretrained: str | None, device: str = "cpu"):
    """open_clip's own model and eval transform, loaded without Blindspot's wrapper."""
    import open_clip

    register_model_configs()  # the world model's config name (a no-op for open_clip's own models)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    return model.eval(), preprocess


@torch.no_grad()
def raw_open_clip(model, preprocess, pil_images: list, batch_size: int) -> torch.Tensor:
    """open_clip's preprocess per PIL image, stacked into batches, encode_image, L2-normalised [n, d]."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(pil_images), batch_size):
        x = torch.stack([preprocess(im) for im in pil_images[i : i + batch_size]]).to(device)
        out.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())
    return torch.cat(out)


def compare_paths(name: str, pretrained: str | None, images: torch.Tensor, batch_size: int, repeats: int,
                  device: str = "cpu") -> dict:
    """Throughput of both paths (timed in alternation) and the cosine between their embeddings of each image."""
    clip = load_clip(name, pretrained=pretrained, device=device)
    model, preprocess = load_raw_open_clip(name, pretrained, device)
    pil = to_pil(images)
    wrapper = lambda: clip.encode_images(images, batch_size=batch_size)  # noqa: E731
    raw = lambda: raw_open_clip(model, preprocess, pil, batch_size)  # noqa: E731
    t = interleaved({"raw": raw, "blindspot": wrapper}, repeats=repeats)
    cosine = (raw() * wrapper()).sum(-1)
    return {"images": len(images), "batch_size": batch_size, "seconds_raw": t["raw"],
            "seconds_blindspot": t["blindspot"], "ratio_vs_raw": t["raw"] / t["blindspot"],
            "images_per_s": len(images) / t["blindspot"], "raw_images_per_s": len(images) / t["raw"],
            "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
            "raw_preprocess": str(preprocess).replace("\n", " ")}


def main() -> None:
    """Measure and write results/perf_embedding.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    weights = str(ROOT / "weights" / "world_clip" / "open_clip_model.safetensors")
    n, batch = (512, 256) if args.quick else (4000, 256)
    images = corpus_batch(WorldSpec(), n, seed=31337).images
    result = {"machine": machine(args.threads), "quick": args.quick}
    result.update(compare_paths(WORLD_CLIP, weights, images, batch, repeats=1 if args.quick else 3,
                                device=args.device))
    clip = load_clip(pretrained=weights, device=args.device)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        embed_dataset(clip, n, lambda idx: images[idx], "bench", cache, batch_size=batch, progress=False)
        first = time.perf_counter() - start
        start = time.perf_counter()
        embed_dataset(clip, n, lambda idx: images[idx], "bench", cache, batch_size=batch, progress=False)
        second = time.perf_counter() - start
    result.update({"seconds_first_round": first, "seconds_cached_round": second, "cached_fraction": second / first})
    write("perf_embedding", result, [
        ["measure", "value", "target"],
        ["Blindspot (uint8 tensors) / raw open_clip (its preprocess on PIL images) images/s",
         f"{result['ratio_vs_raw']:.3f}", ">= 0.95"],
        ["images/s (world CLIP): Blindspot / raw", f"{result['images_per_s']:.0f} / {result['raw_images_per_s']:.0f}",
         "-"],
        ["cosine of the two paths' embeddings of an image: min / mean",
         f"{result['cosine_min']:.6f} / {result['cosine_mean']:.6f}", ">= 0.999"],
        ["cached round / first round", f"{result['cached_fraction']:.3%}", "< 5%"],
    ], args.quick)


if __name__ == "__main__":
    main()
